"""The spec's Python snippets on the real engine: model info, and a stream from a config alone."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_enterprise_llm.services.streaming.response_streamer import ResponseStreamer
from support.server_process import DEMO_MODEL, REPO, require_model


@pytest.fixture
def demo_config(monkeypatch: pytest.MonkeyPatch) -> OpenChat35Config:
    require_model(DEMO_MODEL)
    monkeypatch.chdir(REPO)  # the demo config names the model relative to the checkout
    for name in [n for n in os.environ if n.startswith("OPENCHAT_3_5_")]:
        monkeypatch.delenv(name)
    config = OpenChat35Config.load(REPO / "config/demo-cpu.yaml", {"kv_cache_space_gb": 1}).config
    assert isinstance(config, OpenChat35Config)
    return config


def test_model_info_from_the_specs_snippet(demo_config: OpenChat35Config) -> None:
    info = OpenChat35Service(demo_config).get_model_info()
    assert info["streaming"] is True
    assert info["engine"] == "vllm"
    assert info["engine_version"].startswith("vllm")


def test_stream_response_from_a_config_loads_streams_and_releases_the_model(demo_config: OpenChat35Config) -> None:
    streamer = ResponseStreamer()

    async def run() -> list[str]:
        response = streamer.stream_response("What is the capital of Japan?", demo_config, max_tokens=20,
                                            temperature=0)
        return [frame async for frame in response]

    frames = asyncio.run(run())
    assert frames[-1] == "data: [DONE]\n\n"
    chunks = [json.loads(frame[6:]) for frame in frames[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "Tokyo" in text
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
