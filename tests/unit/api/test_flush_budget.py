"""The low-latency flush budget runs from the choice's previous frame, not from the last token received.

Tokens arriving faster than the budget must still leave in frames no older than the budget: with a
token every 20 ms and a 50 ms budget, a frame carries a few tokens, never a full chunk of 10.
(Slower machines only make tokens arrive later, which flushes sooner: the assertion holds under load.)
A token that comes after a gap longer than the budget goes out at once, alone.
"""

from __future__ import annotations

import json

import pytest
from api_harness import chat_body, content_frames, sse_chunks

from support.fake_engine import FakeEngine

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


async def test_a_token_without_text_yet_does_not_spin_the_stream() -> None:
    """A token that decodes to nothing yet (half a multi-byte character) must not keep the flush
    budget spent: the streamer then asked for the next delta in a tight loop until it came."""
    import asyncio

    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer

    class Source:
        def __init__(self) -> None:
            self.calls = 0
            self._deltas = [TokenDelta("Hi", (1,), 3, 1), TokenDelta("", (2,), 3, 2),
                            TokenDelta("é", (3,), 3, 3, finish_reason="stop")]
            self._due: float | None = None

        async def next(self, wait: float | None = None) -> TokenDelta | None:
            self.calls += 1
            loop = asyncio.get_running_loop()
            if len(self._deltas) == 1:  # the character completes only after a pause of 6 budgets
                self._due = self._due or loop.time() + 0.3
                remaining = self._due - loop.time()
                if remaining > 0:
                    await asyncio.sleep(remaining if wait is None else min(wait, remaining))
                    if loop.time() < self._due:
                        return None
            if not self._deltas:
                raise StopAsyncIteration
            return self._deltas.pop(0)

    source = Source()
    frames = [f async for f in ResponseStreamer(flush_interval=0.05).frames(source)]
    assert frames[-1] == "data: [DONE]\n\n"
    assert "".join(frames).count('"content":"Hi"') == 1
    assert source.calls < 10, f"the streamer polled {source.calls} times while waiting for one token"


async def test_a_plain_iterator_that_pauses_still_gets_its_pending_text_flushed() -> None:
    """IteratorSource (the streamer over any async iterator) honours the budget: text waiting in a
    chunk goes out while the iterator is paused; here it stays paused until the reader has that text."""
    import asyncio
    from collections.abc import AsyncIterator

    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import IteratorSource, ResponseStreamer

    seen_b = asyncio.Event()

    async def deltas() -> AsyncIterator[TokenDelta]:
        yield TokenDelta("a", (1,), 3, 1)  # the first token goes out at once
        yield TokenDelta("b", (2,), 3, 2)  # pending: a chunk is 10 tokens
        await seen_b.wait()
        yield TokenDelta("c", (3,), 3, 3, finish_reason="stop")

    async def read() -> list[str]:
        frames = []
        async for frame in ResponseStreamer(chunk_size=10, flush_interval=0.01).frames(IteratorSource(deltas())):
            frames.append(frame)
            if '"content":"b"' in frame:
                seen_b.set()
        return frames

    # A bound for a hang (without the budget the stream would wait for "c" forever), not a measurement.
    frames = await asyncio.wait_for(read(), timeout=30)
    texts = [json.loads(f[6:])["choices"][0]["delta"].get("content") for f in frames[:-1]]
    assert texts == ["", "a", "b", "c"]


async def test_a_token_after_a_gap_longer_than_the_budget_goes_out_at_once() -> None:
    """Under load every token comes slower than the budget: none may then wait for the budget to pass
    (the reader would get each token a budget late, and the stream would need a timer per token)."""
    import asyncio

    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer

    budget = 0.05

    class SlowSource:
        def __init__(self) -> None:
            self.waits: list[float | None] = []
            self._deltas = [TokenDelta(text, (i,), 3, i + 1) for i, text in enumerate("abcd")]
            self._deltas.append(TokenDelta("e", (4,), 3, 5, finish_reason="stop"))

        async def next(self, wait: float | None = None) -> TokenDelta | None:
            self.waits.append(wait)
            await asyncio.sleep(4 * budget)  # every token comes four budgets after the one before
            return self._deltas.pop(0)

    source = SlowSource()
    frames = [f async for f in ResponseStreamer(chunk_size=10, flush_interval=budget).frames(source)]
    texts = [f for f in frames if '"content":"' in f and '"role"' not in f]
    assert len(texts) == 5, texts  # one token per frame: each went out when it came
    assert source.waits == [None] * 5, f"the streamer waited for a budget with a token pending: {source.waits}"
