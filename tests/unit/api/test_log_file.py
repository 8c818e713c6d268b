"""`log_dir` sends the service's own JSON lines to a rotating file too (vLLM's stay on stderr); without it,
stderr only."""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER, RequestLog, configure_logging
from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.outcomes import FinishReason


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_request_lines_reach_the_rotating_file(tmp_path: Path, restore_root_logger: None) -> None:
    log_dir = tmp_path / "var" / "log" / "citadel-llm" / "openchat-3.5"
    configure_logging("INFO", log_dir)
    assert any(isinstance(h, logging.handlers.RotatingFileHandler) for h in logging.getLogger().handlers)
    record = RequestRecord(request_id="req-42", route="chat", stream=True, client="127.0.0.1:5000")
    record.completion_tokens, record.finish_reasons[0] = 7, FinishReason.STOP
    record.close(200)
    record.finished = record.arrived + 0.5
    RequestLog("openchat-3.5").on_finished(record)
    for handler in logging.getLogger().handlers:
        handler.flush()
    lines = [json.loads(line) for line in (log_dir / "service.log").read_text().splitlines()]
    entry = next(line for line in lines if line.get("request_id") == "req-42")
    assert entry["logger"] == REQUEST_LOGGER
    assert entry["completion_tokens"] == 7
    assert entry["latency_ms"] == 500.0
    assert entry["outcome"] == "ok"


def test_level_from_config_filters(tmp_path: Path, restore_root_logger: None) -> None:
    configure_logging("WARNING", tmp_path)
    logging.getLogger("hxp_enterprise_llm.test").info("not written")
    logging.getLogger("hxp_enterprise_llm.test").warning("written")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = (tmp_path / "service.log").read_text()
    assert "written" in text
    assert "not written" not in text
