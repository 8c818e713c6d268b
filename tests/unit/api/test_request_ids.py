"""A client's X-Request-ID is echoed and logged, never the engine's request id: two requests may share one."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from api_harness import RawExchange, chat_body, content_frames, eventually, sse_chunks

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER, JsonFormatter
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

SHARED_ID = "same-id-from-two-tabs"


def data_frames(exchange: RawExchange) -> int:
    return exchange.text.count("data: {")


async def test_two_streams_with_one_client_id_leaving_one_leaves_the_other_intact(
        serve_app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    async with serve_app(FakeEngine(), response_chunk_size=1) as served:
        for _ in range(2):  # each answer holds after 5 tokens until the test lets it finish
            served.engine.enqueue(*"one two three four five six", hold_after=5)
        leaver = RawExchange(served.app, chat_body(stream=True, max_tokens=100), request_id=SHARED_ID).start()
        stayer = RawExchange(served.app, chat_body(stream=True, max_tokens=100), request_id=SHARED_ID).start()
        await eventually(lambda: data_frames(leaver) >= 4 and data_frames(stayer) >= 4,
                         "both streams sent their role frame and three content frames")

        leaver.hang_up.set()
        await leaver.finished()
        await eventually(lambda: served.ctx.orchestrator.running == 1, "the leaver's slot is free")
        for request in served.engine.requests:  # let whatever the engine still holds finish
            if request.request_id not in served.engine.aborted:
                await served.engine.finish(request.request_id)
        await eventually(lambda: stayer.task is not None and stayer.task.done(), "the other stream completed")

    engine_ids = [request.request_id for request in served.engine.requests]
    assert len(set(engine_ids)) == 2, engine_ids
    assert SHARED_ID not in engine_ids  # the client's value never reaches the engine
    assert served.engine.aborted == [engine_ids[0]] or served.engine.aborted == [engine_ids[1]]

    chunks = sse_chunks(stayer.text)  # ends with [DONE], fails on an error frame's missing fields
    assert not any("error" in chunk for chunk in chunks), chunks
    assert content_frames(chunks)[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")) == \
        "one two three four five six"
    assert stayer.response_headers["x-request-id"] == SHARED_ID

    formatter = JsonFormatter()
    lines: list[dict[str, Any]] = [json.loads(formatter.format(r)) for r in caplog.records
                                   if r.name == REQUEST_LOGGER]
    assert sorted((line["request_id"], line["outcome"]) for line in lines) == \
        [(SHARED_ID, "disconnected"), (SHARED_ID, "ok")]
    assert sorted(line["engine_request_id"] for line in lines) == sorted(engine_ids)


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("POST", "/v1/chat/completions", {"messages": "hi"}, 400),
    ("GET", "/v1/no-such-route", None, 404),
    ("GET", "/v1/chat/completions", None, 405),
], ids=["invalid", "no-route", "wrong-method"])
async def test_an_error_answer_carries_the_request_id_once(served, method: str, path: str, body: Any,
                                                           status: int) -> None:
    sent = await served.client.request(method, path, json=body, headers={"X-Request-ID": "error-id"})
    fresh = await served.client.request(method, path, json=body)
    assert (sent.status_code, fresh.status_code) == (status, status)
    assert sent.headers.get_list("x-request-id") == ["error-id"]
    [generated] = fresh.headers.get_list("x-request-id")
    assert len(generated) == 32
    assert int(generated, 16) >= 0  # uuid4().hex


@pytest.mark.parametrize(("sent", "echoed"), [
    ("a" * 128, True),  # the longest id kept
    ("a" * 129, False),
    ("7", True),  # the shortest
    ("", False),
    ("tab\there", False),  # not printable: it would break the one-line log record
    ("ünïcode-ok", True),
], ids=["128", "129", "1", "empty", "control", "latin-1"])
async def test_a_client_id_is_kept_only_when_it_is_sane(served, sent: str, echoed: bool) -> None:
    response = await served.chat(chat_body(), headers={"X-Request-ID": sent.encode("latin-1")})
    assert response.status_code == 200
    [returned] = response.headers.get_list("x-request-id")
    if echoed:
        assert returned.encode("latin-1") == sent.encode("latin-1")
    else:
        assert len(returned) == 32
        assert int(returned, 16) >= 0  # uuid4().hex
