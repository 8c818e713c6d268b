"""What the load scripts (scripts/overload, scripts/soak) read from a refusal through `hxp-llm bench`'s client."""

from __future__ import annotations

import asyncio

import httpx

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec, send_chat_request

ERROR = b'{"error": {"message": "busy", "type": "overloaded", "param": null, "code": null}}'


def _send(status: int, headers: dict[str, str], content: bytes) -> RequestResult:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers, content=content))

    async def go() -> RequestResult:
        async with httpx.AsyncClient(base_url="http://service", transport=transport) as client:
            return await send_chat_request(client, RequestSpec("m", "hi", 4))

    return asyncio.run(go())


def test_a_refusal_before_the_stream_keeps_its_retry_after() -> None:
    result = _send(429, {"retry-after": "2", "content-type": "application/json"}, ERROR)
    assert (result.ok, result.status, result.retry_after, result.refused_as_stream) == (False, 429, "2", False)
    assert result.error_key == "status 429"


def test_a_refusal_sent_as_sse_bytes_is_flagged() -> None:
    result = _send(503, {"content-type": "text/event-stream"}, b"data: " + ERROR + b"\n\n")
    assert (result.status, result.retry_after, result.refused_as_stream) == (503, None, True)
