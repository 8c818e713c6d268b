"""The low-latency flush budget runs from the oldest unsent token, not from the last one received.

Tokens arriving faster than the budget must still leave in frames no older than the budget: with a
token every 20 ms and a 50 ms budget, a frame carries a few tokens, never a full chunk of 10.
(Slower machines only make tokens arrive later, which flushes sooner: the assertion holds under load.)
"""

from __future__ import annotations

import pytest
from api_harness import chat_body, content_frames, sse_chunks

from hxp_enterprise_llm.services.core.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


async def test_steady_tokens_faster_than_the_budget_are_still_flushed(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=0.02), response_chunk_size=10, low_latency_mode=True,
                         stream_flush_interval_ms=50) as served:
        served.engine.enqueue(*"abcdefghijklmnopqrstuvwxyz0123")
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=100))).text)
    texts = [c["choices"][0]["delta"].get("content") or "" for c in content_frames(chunks)]
    assert "".join(texts) == "abcdefghijklmnopqrstuvwxyz0123"
    middle = texts[1:-1]  # the first token goes alone; the last frame carries the finish
    assert middle, texts
    assert all(len(text) < 10 for text in middle), f"frames waited for a full chunk: {texts}"


async def test_without_low_latency_mode_frames_are_full_chunks(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=0.02), response_chunk_size=10, low_latency_mode=False,
                         stream_flush_interval_ms=50) as served:
        served.engine.enqueue(*"abcdefghijklmnopqrstuvwxyz0123")
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=100))).text)
    texts = [c["choices"][0]["delta"].get("content") or "" for c in content_frames(chunks)]
    assert texts[:3] == ["a", "bcdefghijk", "lmnopqrstu"]
