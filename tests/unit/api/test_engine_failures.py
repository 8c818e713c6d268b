"""How an engine that fails mid-answer reaches the client: the service's own error, never a raw exception.

An unexpected exception is a 500 naming the request id to look up in the log (where the traceback is);
an answer that ends without a finish reason is a 500, not a short answer passed off as whole; a dead
engine is a 503 saying when to retry, and its reason reaches /health. Streams end with the same error
as an SSE event, also when the engine fails while the streamer was waiting for it with text pending.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from api_harness import RawExchange, assert_openai_error, chat_body, eventually, sse_events

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER, JsonFormatter
from hxp_enterprise_llm.schemas.errors import InvalidRequestError
from hxp_enterprise_llm.services.core.engine import GenerationRequest, TokenDelta
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

GENERATION_LOGGER = "hxp_enterprise_llm.orchestration.generation"


class MisbehavingEngine(FakeEngine):
    """Answers `tokens` tokens, then raises `failure`, or with no failure simply stops (no finish reason)."""

    def __init__(self, failure: BaseException | None, tokens: int = 2) -> None:
        super().__init__()
        self.failure = failure
        self.tokens = tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self.requests.append(request)
        prompt_tokens = len(request.prompt_token_ids)
        for index in range(self.tokens):
            yield TokenDelta("ab"[index % 2], (100 + index,), prompt_tokens, index + 1)
        if self.failure is not None:
            raise self.failure


class UnabortableEngine(FakeEngine):
    """An engine whose abort fails (it may already be gone when a request ends early)."""

    async def abort(self, request_id: str) -> None:
        await super().abort(request_id)
        raise RuntimeError("engine gone")


def stream_error(text: str) -> dict[str, object]:
    events = sse_events(text)
    assert events[-1] == "[DONE]", events
    return json.loads(events[-2])["error"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_unexpected_engine_exception_is_a_500_naming_the_request_to_look_up(
        serve_app, caplog: pytest.LogCaptureFixture, stream: bool) -> None:
    caplog.set_level(logging.ERROR, logger=GENERATION_LOGGER)
    async with serve_app(MisbehavingEngine(RuntimeError("kernel exploded"))) as served:
        response = await served.chat(chat_body(stream=stream), headers={"X-Request-ID": "boom-1"})
        health = (await served.client.get("/health")).json()
    expected = "generation failed (RuntimeError); see the service log for request boom-1"
    if stream:
        assert response.status_code == 200
        error = stream_error(response.text)
        assert (error["code"], error["message"]) == ("internal_error", expected)
    else:
        assert assert_openai_error(response, 500, code="internal_error")["message"] == expected
    assert "kernel exploded" not in response.text  # the details are for the log, not the client
    [logged] = [r for r in caplog.records if r.name == GENERATION_LOGGER]
    assert logged.getMessage() == "generation of request boom-1 failed"
    assert logged.exc_info is not None
    assert str(logged.exc_info[1]) == "kernel exploded"
    assert health["status"] == "healthy"  # one request's failure is not the engine's death
    assert not served.fatal_calls


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_ends_without_a_finish_reason_is_a_500_not_a_short_answer(
        serve_app, stream: bool) -> None:
    async with serve_app(MisbehavingEngine(None)) as served:
        response = await served.chat(chat_body(stream=stream))
    expected = "the engine ended the answer without a finish reason"
    if stream:
        error = stream_error(response.text)
        assert (error["code"], error["message"]) == ("internal_error", expected)
    else:
        assert assert_openai_error(response, 500, code="internal_error")["message"] == expected


async def test_an_engine_death_mid_answer_says_when_to_retry_and_why_in_health(serve_app) -> None:
    async with serve_app(health_check_interval=3600) as served:
        served.engine.enqueue(*("x" * 50), hold_after=1)
        plain = RawExchange(served.app, chat_body(max_tokens=4000), request_id="plain").start()
        await served.started("plain")
        served.engine.kill(report=False)  # the request finds out first, not vLLM's watch
        await plain.finished()
        health = (await served.client.get("/health")).json()
        after = await served.chat()
    assert plain.status == 503
    assert json.loads(plain.text)["error"]["code"] == "engine_failed"
    assert plain.response_headers["retry-after"] == "10"
    assert json.loads(plain.text)["error"]["message"] == ("the inference engine failed; the service is restarting, "
                                                          "retry shortly")
    assert health["status"] == "failed"
    assert health["detail"] == "fake engine died mid-request"
    error = assert_openai_error(after, 503, code="engine_failed")
    assert error["message"] == "the inference engine failed (fake engine died mid-request); the service is restarting"
    assert after.headers["retry-after"] == "10"


async def test_a_stalled_stream_flushes_its_pending_text_then_reports_the_engine_death(serve_app) -> None:
    # Low-latency mode: the first token goes alone, the next ones wait for the flush budget (50 ms) at
    # most; the streamer reads the held engine through a task, so the death arrives through that read.
    async with serve_app(response_chunk_size=10, low_latency_mode=True, stream_flush_interval_ms=50,
                         health_check_interval=3600) as served:
        served.engine.enqueue(*"abcdefgh", hold_after=3)
        stream = RawExchange(served.app, chat_body(stream=True, max_tokens=100), request_id="stream").start()
        await eventually(lambda: b'"content":"bc"' in stream.body, "the pending text flushed while the engine stalls")
        served.engine.kill(report=False)
        await stream.finished()
    assert stream.status == 200
    assert stream_error(stream.text)["code"] == "engine_failed"
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in sse_events(stream.text)[:-2]
                if json.loads(e).get("choices")]
    assert "".join(c or "" for c in contents) == "abc"


async def test_an_engine_refusal_on_the_first_read_reaches_the_client_as_it_is(
        serve_app, caplog: pytest.LogCaptureFixture) -> None:
    # vLLM validates some things only when generation starts (its ValueErrors become InvalidRequestError).
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    refusal = InvalidRequestError("seed with temperature > 0 is unavailable here", param="seed")
    async with serve_app(MisbehavingEngine(refusal, tokens=0)) as served:
        response = await served.chat(chat_body(seed=1, temperature=0.5), headers={"X-Request-ID": "refused-1"})
    error = assert_openai_error(response, 400, code="invalid_value", param="seed")
    assert error["message"] == "seed with temperature > 0 is unavailable here"
    [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == REQUEST_LOGGER]
    assert (line["request_id"], line["status"], line["error_code"]) == ("refused-1", 400, "invalid_value")


async def test_a_client_leaving_a_stalled_stream_aborts_the_engine_request_and_frees_its_slot(serve_app) -> None:
    # The streamer is waiting for the held engine through a pending read when the client goes.
    async with serve_app(response_chunk_size=10, low_latency_mode=True, stream_flush_interval_ms=50) as served:
        served.engine.enqueue(*"abcdefgh", hold_after=3)
        stream = RawExchange(served.app, chat_body(stream=True, max_tokens=100), request_id="leaver").start()
        await eventually(lambda: b'"content":"bc"' in stream.body, "the pending text flushed while the engine stalls")
        stream.hang_up.set()
        await stream.finished()
        await eventually(lambda: served.ctx.orchestrator.running == 0, "the slot freed")
        assert served.engine.aborted == [served.engine_id("leaver")]


async def test_an_abort_that_fails_is_logged_and_the_request_still_ends(
        serve_app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=GENERATION_LOGGER)
    async with serve_app(UnabortableEngine(token_delay=30), connection_timeout_seconds=0.05) as served:
        response = await served.chat(chat_body(), headers={"X-Request-ID": "slow-1"})
        running = served.ctx.orchestrator.running
    assert_openai_error(response, 504, code="request_timeout")
    assert running == 0
    [logged] = [r for r in caplog.records if r.name == GENERATION_LOGGER]
    assert (logged.levelno, logged.getMessage()) == (logging.DEBUG, "abort of slow-1 failed")
    assert logged.exc_info is not None
    assert str(logged.exc_info[1]) == "engine gone"
