"""The spec's Python snippets: `OpenChat35Service(config).get_model_info()` and
`ResponseStreamer().stream_response('Test streaming', config)`, here on the scripted engine
(tests/engine/test_spec_python.py runs them on the real one)."""

from __future__ import annotations

import asyncio
import json

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer
from support.fake_engine import FakeEngine


def test_get_model_info_without_loading_anything() -> None:
    info = OpenChat35Service(OpenChat35Config()).get_model_info()
    assert info["name"] == "openchat-3.5"
    assert info["streaming"] is True
    assert info["context_length"] == 4096
    assert info["loaded"] is False


def test_stream_response_follows_the_services_chunking_and_leaves_the_streamer_alone() -> None:
    config = OpenChat35Config(prompt_format="chat_template", response_chunk_size=3, low_latency_mode=False)
    engine = FakeEngine()
    engine.enqueue(*"Streaming works")
    service = OpenChat35Service(config, engine=engine)
    streamer = ResponseStreamer()

    async def run() -> list[str]:
        return [frame async for frame in streamer.stream_response("Test streaming", service, max_tokens=50)]

    frames = asyncio.run(run())
    assert frames[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert "".join(t or "" for t in texts) == "Streaming works"
    assert texts[1:4] == ["S", "tre", "ami"]  # first token at once, then 3 tokens per chunk
    assert streamer.chunk_size == 10  # the streamer's own settings were not changed
    assert engine.started
    assert service.ready  # a service the caller passed in stays the caller's


def test_stream_response_passes_the_sampling_and_the_streamers_usage_setting() -> None:
    engine = FakeEngine()
    engine.enqueue(*"Streaming works")
    config = OpenChat35Config(prompt_format="chat_template", served_model_name="house-model")
    service = OpenChat35Service(config, engine=engine)

    async def run() -> list[str]:
        streamer = ResponseStreamer(include_usage=True)
        return [frame async for frame in streamer.stream_response("Test streaming", service, max_tokens=4)]

    chunks = [json.loads(f[6:]) for f in asyncio.run(run())[:-1]]
    assert engine.requests[-1].sampling.max_tokens == 4
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Stre"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert {c["model"] for c in chunks} == {"house-model"}  # the service's name, not the streamer's default


def test_stream_response_read_partly_ends_its_engine_request_when_the_caller_stops() -> None:
    engine = FakeEngine()
    engine.enqueue(*"Streaming works", hold_after=3)  # the engine holds the rest until finished or aborted
    config = OpenChat35Config(prompt_format="chat_template", response_chunk_size=10, low_latency_mode=True,
                              stream_flush_interval_ms=10)
    service = OpenChat35Service(config, engine=engine)

    async def run() -> tuple[list[str], int, int]:
        frames = ResponseStreamer().stream_response("Test streaming", service, max_tokens=50)
        # The role, the first token, then what the flush budget sends while the next read waits on the engine.
        texts = [json.loads((await anext(frames))[6:])["choices"][0]["delta"].get("content") for _ in range(3)]
        running_while_read = engine.running_requests
        await frames.aclose()  # the caller stops reading here
        return texts, running_while_read, engine.running_requests

    assert asyncio.run(run()) == (["", "S", "tr"], 1, 0)


def test_stream_response_without_a_service_says_what_it_needs() -> None:
    async def run() -> list[str]:
        return [frame async for frame in ResponseStreamer().stream_response("Test streaming")]

    with pytest.raises(TypeError) as raised:
        asyncio.run(run())
    assert str(raised.value) == "stream_response needs a service or a service config, e.g. OpenChat35Config()"
