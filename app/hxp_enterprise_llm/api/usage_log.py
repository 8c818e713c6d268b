"""The usage log: one JSON line per finished inference request, for billing and `hxp-llm usage`.

Its own file (`usage_log_file`), rotated at `usage_log_max_bytes` with `usage_log_backups` old files
kept (`usage.jsonl.1` is the newest of them). The figures are the closed record's: the tokens the
response's `usage` reported, or for a request that did not end normally what the engine processed
(an abandoned stream's generated tokens). `charged_tokens` is what the key's tokens-per-minute quota
was charged. Never the prompt, the answer or the key itself: the key's name.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

from hxp_enterprise_llm.orchestration.request_record import RequestRecord


def _utc(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"


def usage_entry(record: RequestRecord, model: str, now_wall: float, now_mono: float) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    charged = 0
    if record.charge is not None and record.admitted is not None:
        charged = record.charge.prompt_tokens + record.completion_tokens
    return {
        "ts": _utc(now_wall),
        "arrived": _utc(now_wall - (now_mono - record.arrived)),
        "key": record.key.name,
        "request_id": record.request_id,
        "model": model,
        "route": record.route,
        "stream": record.stream,
        "status": record.status,
        "outcome": str(record.outcome),
        "error_code": record.error.code if record.error is not None else None,
        "finish_reason": record.finish_reason,
        "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.prompt_tokens + record.completion_tokens,
        "charged_tokens": charged,
        "queue_ms": ms(record.queue_wait),
        "ttft_ms": ms(record.ttft),
        "latency_ms": ms(record.e2e),
    }


class UsageLog:
    """Observer writing the usage line when the orchestrator closes a record."""

    def __init__(self, path: Path, model: str, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._model = model
        self._handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def on_finished(self, record: RequestRecord) -> None:
        line = json.dumps(usage_entry(record, self._model, time.time(), time.monotonic()), ensure_ascii=False)
        # Through the handler: it rotates, and a full disk is reported on stderr, never raised into a request.
        self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO, "levelname": "INFO"}))

    def shutdown(self) -> None:
        self._handler.close()
