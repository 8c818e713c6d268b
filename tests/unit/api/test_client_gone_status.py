"""A client that leaves is recorded as what it is: status 499 (nginx's "client closed request") when it left
before any response, 200 for a stream that had started, outcome `disconnected` either way; counted once
in openchat_requests_total and written so in the request log line."""

from __future__ import annotations

import logging

import pytest
from api_harness import RawExchange, chat_body, eventually
from test_request_log import request_lines

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HOLD = 30.0


def finished_requests(served, status: str, outcome: str) -> float:
    value = served.ctx.metrics.registry.get_sample_value(
        "openchat_requests_total", {"model": "openchat-3.5", "status": status, "outcome": outcome,
                                    "finish_reason": "none"})
    return value or 0.0


@pytest.mark.parametrize(("stream", "where", "status"), [
    (False, "queued", 499),
    (True, "queued", 499),
    (False, "generating", 499),  # a plain answer sends nothing until it is complete
    (True, "generating", 200),  # the stream's 200 and its first frames had gone out
])
async def test_a_client_that_leaves_is_499_unless_its_stream_had_started(
        serve_app, caplog: pytest.LogCaptureFixture, stream: bool, where: str, status: int) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    async with serve_app(FakeEngine(token_delay=0.005), concurrent_users=1, max_queue_size=1,
                         response_chunk_size=1) as served:
        if where == "queued":
            served.engine.token_delay = HOLD
            blocker = RawExchange(served.app, chat_body(), request_id="blocker").start()
            await served.started("blocker")
        served.engine.enqueue(*("x" * 5000))
        leaver = RawExchange(served.app, chat_body(stream=stream, max_tokens=4000), request_id="leaver").start()
        if where == "queued":
            await eventually(lambda: served.ctx.orchestrator.waiting == 1, "leaver queued")
        else:
            await served.started("leaver")
            if stream:
                await eventually(lambda: b'"content":"x' in leaver.body, "some content streamed")
        leaver.hang_up.set()
        await leaver.finished()
        if where == "queued":
            await served.release("blocker")
            await blocker.finished()

        line = next(line for line in request_lines(caplog) if line["request_id"] == "leaver")
        assert (line["status"], line["outcome"]) == (status, "disconnected"), line
        assert finished_requests(served, str(status), "disconnected") == 1
        assert leaver.status == status


async def test_a_client_that_leaves_while_sending_its_body_is_499_not_a_500(
        serve_app, caplog: pytest.LogCaptureFixture) -> None:
    """Starlette raises ClientDisconnect from the body read; that is the client leaving, not our fault: no
    500 in the metrics, no ERROR line with a traceback (found in the engine tier's disconnect storm)."""
    caplog.set_level(logging.INFO)
    async with serve_app(FakeEngine()) as served:
        leaver = RawExchange(served.app, chat_body(), request_id="half-body", stall_body=True).start()
        leaver.hang_up.set()
        await leaver.finished()
        line = next(line for line in request_lines(caplog) if line["request_id"] == "half-body")
        assert (line["status"], line["outcome"]) == (499, "disconnected"), line
        assert finished_requests(served, "499", "disconnected") == 1
        assert finished_requests(served, "500", "failed") == 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert leaver.app_error is None
        assert leaver.status is None  # nothing was sent to a client that is gone
