"""The official `openai` SDK reads our answers, streams and errors as it reads OpenAI's (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from api_harness import MODEL, Served

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "user", "content": "Hello"}]


@asynccontextmanager
async def sdk(served: Served, api_key: str = "unused") -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=served.app), base_url="http://test")
    async with openai.AsyncOpenAI(base_url="http://test/v1", api_key=api_key, http_client=http,
                                  max_retries=0) as client:
        yield client


async def test_sdk_chat_and_stream_with_usage(served: Served) -> None:
    async with sdk(served) as client:
        served.engine.enqueue(*"Hi there")
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
        served.engine.enqueue(*"Hi there, streamed")
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        models = await client.models.list()

    assert completion.choices[0].message.content == "Hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there, streamed"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 18
    assert [m.id for m in models.data] == [MODEL]


async def test_sdk_reads_pings_on_an_idle_stream(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=0.05), stream_ping_seconds=0.005) as served:
        served.engine.enqueue(*"abc")
        raw = await served.chat({"model": MODEL, "messages": MESSAGES, "stream": True})
        served.engine.enqueue(*"abc")
        async with sdk(served) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert ": ping" in raw.text  # the engine was idle long enough for keep-alive comments
    assert text == "abc"


async def test_sdk_maps_our_errors_to_its_exceptions(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=30), api_key="right", concurrent_users=1, max_queue_size=0) as served:
        async with sdk(served, api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError) as unauthorized:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        async with sdk(served, api_key="right") as client:
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
            with pytest.raises(openai.BadRequestError) as too_long:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100_000)
            holder = served.client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES},
                                        headers={"Authorization": "Bearer right", "X-Request-ID": "holder"})
            held = asyncio.ensure_future(holder)
            await served.started("holder")
            with pytest.raises(openai.RateLimitError) as full:
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            await served.release("holder")
            assert (await held).status_code == 200
    assert unauthorized.value.code == "invalid_api_key"
    assert too_long.value.code == "context_length_exceeded"
    assert full.value.code == "queue_full"
    # Nothing had been answered yet (1 s estimate); nothing queued, its own 1 sequence on 1 slot: 1 round.
    assert full.value.response.headers["retry-after"] == "1"
