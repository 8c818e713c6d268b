"""An unexpected exception (a bug, here a tokenizer that raises) is a 500: to the client, the metrics and the log."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from api_harness import RawExchange, Served, chat_body, eventually
from test_metrics_exposition import scrape, total

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER, JsonFormatter

pytestmark = pytest.mark.anyio


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == REQUEST_LOGGER]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_bug_before_the_answer_is_a_500_everywhere(
        served: Served, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    caplog.set_level(logging.INFO)
    served.engine.get_tokenizer().failure = RuntimeError("tokenizer bug")
    exchange = RawExchange(served.app, chat_body(stream=stream), request_id="bug-1").start()
    await exchange.finished()

    assert exchange.status == 500
    error = json.loads(exchange.text)["error"]
    assert error["code"] == "internal_error"
    assert error["message"] == "internal error; see the service log for request bug-1"
    assert exchange.response_headers["x-request-id"] == "bug-1"
    assert exchange.response_headers["content-type"].startswith("application/json")

    samples = scrape(served)["openchat_requests"]
    assert total(samples, "openchat_requests_total", status="500", outcome="failed") == 1
    assert total(samples, "openchat_requests_total", status="499") == 0
    assert total(scrape(served)["openchat_client_disconnects"], "openchat_client_disconnects_total") == 0

    await eventually(lambda: request_lines(caplog), "the request line")
    (line,) = request_lines(caplog)
    assert (line["request_id"], line["status"], line["outcome"], line["error_code"]) == \
        ("bug-1", 500, "failed", "internal_error")
    tracebacks = [r for r in caplog.records if r.exc_info and "bug-1" in r.getMessage()]
    assert tracebacks, "the traceback is logged with the request id"
    assert served.ctx.orchestrator.running == 0
