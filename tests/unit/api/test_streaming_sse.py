"""SSE streams as OpenAI clients parse them: frame format and order, chunking, usage, multi-byte text."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import pytest
from api_harness import (
    MODEL,
    RawExchange,
    Served,
    chat_body,
    content_frames,
    sse_chunks,
    sse_events,
    streamed_text,
)

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio


async def test_stream_frames_are_openai_chunks_in_order(served: Served) -> None:
    reply = list("Hello there, streaming world.")
    served.engine.enqueue(*reply)
    response = await served.chat(chat_body(stream=True, max_tokens=100))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert response.text.rstrip("\n").endswith("data: [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MODEL
        assert isinstance(chunk["created"], int)
        assert chunk["created"] > 0
    finish_reasons = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finish_reasons[-1] == "stop"
    assert all(reason is None for reason in finish_reasons[:-1])
    assert all(c.get("usage") is None for c in chunks), "usage frame sent without include_usage"
    assert streamed_text(chunks) == "".join(reply)


async def test_usage_frame_only_with_include_usage(served: Served) -> None:
    served.engine.enqueue(*"abcdef")
    with_usage = sse_chunks((await served.chat(chat_body(
        stream=True, max_tokens=50, stream_options={"include_usage": True}))).text)
    served.engine.enqueue(*"abcdef")
    without = sse_chunks((await served.chat(chat_body(
        stream=True, max_tokens=50, stream_options={"include_usage": False}))).text)

    usage_chunk = with_usage[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["id"] == with_usage[0]["id"]
    usage = usage_chunk["usage"]
    prompt_tokens = len(served.engine.requests[0].prompt_token_ids)
    assert usage == {"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6,
                     "prompt_tokens_details": {"cached_tokens": 0}}
    assert with_usage[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] for c in without)
    assert all(c.get("usage") is None for c in without)


async def test_finish_reason_length_when_max_tokens_cuts_the_reply(served: Served) -> None:
    served.engine.enqueue(*"abcdefghij")
    chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=4))).text)
    assert streamed_text(chunks) == "abcd"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("tokens", [35, 31, 12])
async def test_first_token_alone_then_chunks_of_response_chunk_size(serve_app, tokens: int) -> None:
    reply = [string.ascii_letters[i % 52] for i in range(tokens)]
    async with serve_app(response_chunk_size=10, low_latency_mode=False) as served:
        served.engine.enqueue(*reply)
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=200))).text)

    sizes = [len(c["choices"][0]["delta"].get("content", "")) for c in content_frames(chunks)]
    assert chunks[0]["choices"][0]["delta"]["content"] == ""  # the role frame carries no text
    assert sizes[0] == 1, f"first token not flushed alone: {sizes}"
    assert all(size == 10 for size in sizes[1:-1]), sizes
    assert 1 <= sizes[-1] <= 10, sizes
    assert sum(sizes) == tokens
    assert streamed_text(chunks) == "".join(reply)


async def test_chunk_size_is_configurable(serve_app) -> None:
    async with serve_app(response_chunk_size=3, low_latency_mode=False) as served:
        served.engine.enqueue(*"abcdefghijk")
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=200))).text)
    assert [c["choices"][0]["delta"].get("content") for c in content_frames(chunks)] == [
        "a", "bcd", "efg", "hij", "k"]


async def test_low_latency_mode_flushes_partial_chunks_of_a_slow_engine(serve_app) -> None:
    # A token every 50 ms against a 1 ms flush budget: each token is sent without waiting for 10.
    async with serve_app(FakeEngine(token_delay=0.05), response_chunk_size=10, low_latency_mode=True,
                         stream_flush_interval_ms=1) as served:
        served.engine.enqueue(*"abcde")
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=50))).text)
    texts = [c["choices"][0]["delta"].get("content") for c in content_frames(chunks)]
    assert "".join(t or "" for t in texts) == "abcde"
    assert len(texts) >= 4, f"tokens were batched despite low_latency_mode: {texts}"


@pytest.mark.parametrize("tokens", [
    ["\ufffd", "é", "x", "y"],  # an incomplete character as the very first token
    ["a", *"bcdefghij", "\ufffd", "é", *"xyz"],  # an incomplete character at a chunk boundary
    ["a", "\ufffd", "é"],
])
async def test_no_frame_ends_inside_a_multibyte_character(serve_app, tokens: list[str]) -> None:
    async with serve_app(response_chunk_size=10, low_latency_mode=False) as served:
        served.engine.enqueue(*tokens)
        chunks = sse_chunks((await served.chat(chat_body(stream=True, max_tokens=100))).text)
    texts = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert not any(text.endswith("\ufffd") for text in texts), texts
    assert "".join(texts) == "".join(tokens)


async def test_non_streaming_answer_has_openai_shape(served: Served) -> None:
    served.engine.enqueue(*"Hi there")
    response = await served.chat(chat_body(max_tokens=50))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == MODEL
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi there"}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt_tokens = len(served.engine.requests[0].prompt_token_ids)
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 8,
                             "total_tokens": prompt_tokens + 8, "prompt_tokens_details": {"cached_tokens": 0}}


async def test_sampling_parameters_reach_the_engine(served: Served) -> None:
    response = await served.chat(chat_body(max_completion_tokens=7, temperature=0.25, top_p=0.5, top_k=20,
                                           seed=11, stop=["END", "STOP"], presence_penalty=0.5,
                                           frequency_penalty=-0.5))
    assert response.status_code == 200, response.text
    sampling = served.engine.requests[0].sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed) == (
        7, 0.25, 0.5, 20, 11)
    assert sampling.stop == ("END", "STOP")
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (0.5, -0.5)


@pytest.mark.parametrize("texts", [[], ["a", "b"]], ids=["nothing", "unfinished"])
async def test_a_source_without_a_finish_reason_ends_its_choice_with_stop(texts: list[str]) -> None:
    # A plain iterator has no finish reasons: when it ends, so does the choice, its pending text included.
    from collections.abc import AsyncIterator

    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import IteratorSource, ResponseStreamer

    async def deltas() -> AsyncIterator[TokenDelta]:
        for n, text in enumerate(texts, start=1):
            yield TokenDelta(text, (n,), 3, n)

    streamer = ResponseStreamer(include_usage=True, flush_interval=None)
    frames = [f async for f in streamer.frames(IteratorSource(deltas()))]
    assert frames[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert {c["model"] for c in chunks} == {"openchat-3.5"}  # the spec's ResponseStreamer() defaults
    assert [(c["delta"].get("content"), c["finish_reason"]) for c in choices[1:]] == (
        [("a", None), ("b", "stop")] if texts else [(None, "stop")])
    assert chunks[-1]["usage"] == {"prompt_tokens": 3 if texts else 0, "completion_tokens": len(texts),
                                   "total_tokens": 3 + len(texts) if texts else 0,
                                   "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize("top", [0, 1])
async def test_a_chunk_shows_at_most_top_logprobs_alternatives(top: int) -> None:
    # vLLM gives the chosen token's entry among the alternatives even when none are asked for.
    from collections.abc import AsyncIterator

    from hxp_enterprise_llm.services.core.engine import TokenDelta, TokenLogprob
    from hxp_enterprise_llm.services.streaming.response_streamer import IteratorSource, ResponseStreamer

    async def deltas() -> AsyncIterator[TokenDelta]:
        entry = TokenLogprob(1, "a", -0.1, (("a", -0.1), ("b", -2.0)))
        yield TokenDelta("a", (1,), 3, 1, finish_reason="stop", logprobs=(entry,))

    frames = [f async for f in ResponseStreamer(top_logprobs=top).frames(IteratorSource(deltas()))]
    [token] = json.loads(frames[1][6:])["choices"][0]["logprobs"]["content"]
    assert (token["token"], token["logprob"]) == ("a", -0.1)
    assert [t["token"] for t in token["top_logprobs"]] == ["a", "b"][:top]


async def test_text_without_token_ids_counts_a_token_each_and_empty_text_none() -> None:
    # A plain iterator's deltas may carry text alone: each non-empty one is a token for the chunking.
    from collections.abc import AsyncIterator

    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import IteratorSource, ResponseStreamer

    async def deltas() -> AsyncIterator[TokenDelta]:
        for n, text in enumerate(["a", "", "b", "c"], start=1):
            yield TokenDelta(text, (), 3, n)

    streamer = ResponseStreamer(chunk_size=2, flush_interval=None)
    frames = [f async for f in streamer.frames(IteratorSource(deltas()))]
    choices = [json.loads(f[6:])["choices"][0] for f in frames[:-1]]
    assert [(c["delta"].get("content"), c["finish_reason"]) for c in choices[1:]] == [
        ("a", None), ("bc", None), (None, "stop")]


class InOrder(RawExchange):
    """A raw exchange that keeps the order of the messages the app sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message["type"])
        await super()._send(message)


async def test_a_stream_waiting_for_its_first_token_sends_nothing_not_even_a_ping(serve_app) -> None:
    # The response is set up while the engine prefills; its keep-alive pings start with the headers.
    async with serve_app(stream_ping_seconds=0.001) as served:
        served.engine.enqueue(*"held", hold_after=0)
        exchange = InOrder(served.app, chat_body(stream=True), request_id="held").start()
        await served.started("held")
        await asyncio.sleep(0.2)  # two hundred ping intervals without a token
        assert exchange.sent == []
        await served.release("held")
        await exchange.finished()
    assert exchange.sent[0] == "http.response.start"
    assert (exchange.status, sse_events(exchange.text)[-1]) == (200, "[DONE]")
    assert streamed_text(sse_chunks(exchange.text)) == "held"


async def test_a_stream_cut_by_an_error_delivers_its_held_text_and_usage_before_the_error_frame() -> None:
    from hxp_enterprise_llm.schemas.errors import RequestTimeoutError
    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer

    class TimesOut:  # two tokens, then the request's deadline; the second is still held by the chunking
        def __init__(self) -> None:
            self.deltas = [TokenDelta("a", (1,), 3, 1), TokenDelta("b", (2,), 3, 2)]

        async def next(self, wait: float | None = None) -> TokenDelta:
            if self.deltas:
                return self.deltas.pop(0)
            raise RequestTimeoutError.after(5)

    streamer = ResponseStreamer(chunk_size=10, flush_interval=None, include_usage=True)
    frames = [f async for f in streamer.frames(TimesOut())]
    assert frames[-1] == "data: [DONE]\n\n"
    role, first, held, usage, error = (json.loads(f[6:]) for f in frames[:-1])
    assert [f["choices"][0]["delta"].get("content") for f in (first, held)] == ["a", "b"]
    assert all(f["choices"][0]["finish_reason"] is None for f in (role, first, held))  # never looks complete
    assert (usage["choices"], usage["usage"]["completion_tokens"]) == ([], 2)
    assert error["error"]["code"] == "request_timeout"


async def test_an_unexpected_error_mid_stream_ends_it_with_an_error_frame() -> None:
    from hxp_enterprise_llm.services.core.engine import TokenDelta
    from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer

    class Failing:
        def __init__(self) -> None:
            self.sent = False

        async def next(self, wait: float | None = None) -> TokenDelta:
            if self.sent:
                raise RuntimeError("a bug")
            self.sent = True
            return TokenDelta("a", (1,), 3, 1)

    streamer = ResponseStreamer(completion_id="chatcmpl-x")
    frames = [f async for f in streamer.frames(Failing())]
    assert frames[-1] == "data: [DONE]\n\n"
    assert json.loads(frames[-2][6:]) == {"error": {
        "message": "stream chatcmpl-x failed; see the service log", "type": "server_error", "param": None,
        "code": "internal_error"}}
