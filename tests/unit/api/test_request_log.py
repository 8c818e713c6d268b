"""One JSON line per request on `hxp_enterprise_llm.requests`, tied to X-Request-ID; prompts never logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from api_harness import RawExchange, Served, chat_body

from hxp_enterprise_llm.api.request_log import REQUEST_LOGGER, JsonFormatter

pytestmark = pytest.mark.anyio

SECRET_PROMPT = "zebra-violet-prompt-7731"


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == REQUEST_LOGGER]


async def test_one_json_line_per_request_with_its_id_status_and_tokens(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    served.engine.enqueue(*"abcde")
    plain = await served.chat(chat_body(max_tokens=50))
    served.engine.enqueue(*"xyz")
    stream = await served.chat(chat_body(stream=True, max_tokens=50))
    invalid = await served.chat(chat_body(temperature=7))
    unknown = await served.chat(chat_body(model="nope"))

    lines = request_lines(caplog)
    by_id = {line["request_id"]: line for line in lines}
    assert len(lines) == 4
    ids = [r.headers["x-request-id"] for r in (plain, stream, invalid, unknown)]
    assert sorted(by_id) == sorted(ids)
    prompt_tokens = len(served.engine.requests[0].prompt_token_ids)
    expected = {"status": 200, "stream": False, "finish_reason": "stop", "prompt_tokens": prompt_tokens,
                "completion_tokens": 5, "model": "openchat-3.5", "client": "203.0.113.7:40000"}
    assert {k: by_id[ids[0]].get(k) for k in expected} == expected
    assert by_id[ids[1]]["stream"] is True
    assert (by_id[ids[1]]["status"], by_id[ids[1]]["completion_tokens"]) == (200, 3)
    for line in (by_id[ids[0]], by_id[ids[1]]):
        assert line["ttft_ms"] is not None
        assert line["latency_ms"] >= line["ttft_ms"]
    assert by_id[ids[2]]["status"] == 400
    assert by_id[ids[3]]["status"] == 404
    assert all(line["level"] == "INFO" for line in lines)


@pytest.mark.parametrize(("client", "logged"), [(("198.51.100.9", 50000), "198.51.100.9:50000"), (None, "")],
                         ids=["tcp", "unix-socket"])
async def test_the_line_names_the_client_address_when_there_is_one(
        served: Served, caplog: pytest.LogCaptureFixture, client: tuple[str, int] | None, logged: str) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    exchange = RawExchange(served.app, chat_body(), request_id="addr", client=client).start()
    await exchange.finished()
    assert exchange.status == 200
    [line] = request_lines(caplog)
    assert line["client"] == logged


async def test_client_request_id_is_kept_and_a_bad_one_replaced(
        served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    mine = await served.chat(chat_body(), headers={"X-Request-ID": "trace-42"})
    too_long = await served.chat(chat_body(), headers={"X-Request-ID": "x" * 500})
    assert mine.headers["x-request-id"] == "trace-42"
    # The client's id is echoed and logged; the engine request has the server's own id.
    assert served.engine.requests[0].request_id != "trace-42"
    replacement = too_long.headers["x-request-id"]
    assert replacement != "x" * 500
    assert 0 < len(replacement) <= 128
    lines = request_lines(caplog)
    assert [line["request_id"] for line in lines] == ["trace-42", replacement]
    assert [line["engine_request_id"] for line in lines] == [r.request_id for r in served.engine.requests]


async def test_prompt_text_never_logged(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    served.engine.enqueue(*"fine")
    await served.chat(chat_body(SECRET_PROMPT))
    await served.chat(chat_body(SECRET_PROMPT, stream=True))
    await served.chat(chat_body(SECRET_PROMPT, temperature=9))
    await served.chat(chat_body(SECRET_PROMPT, max_tokens=100_000))
    formatter = JsonFormatter()
    assert len(request_lines(caplog)) == 4
    assert SECRET_PROMPT not in caplog.text
    for record in caplog.records:
        assert SECRET_PROMPT not in formatter.format(record)


async def test_timed_out_request_is_logged_as_timeout(serve_app, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    async with serve_app(connection_timeout_seconds=0.1) as served:
        served.engine.enqueue(*"held answer", hold_after=0)
        assert (await served.chat(chat_body())).status_code == 504
        served.engine.enqueue(*"held answer", hold_after=0)
        assert (await served.chat(chat_body(stream=True))).status_code == 504  # before its first token
        served.engine.enqueue(*"held answer", hold_after=1)
        assert (await served.chat(chat_body(stream=True))).status_code == 200  # timed out mid-stream
    lines = request_lines(caplog)
    assert [line["outcome"] for line in lines] == ["timeout", "timeout", "timeout"]
    assert [line["error_code"] for line in lines] == ["request_timeout"] * 3
