"""The OpenAI API of the real service (vLLM CPU, SmolLM2 demo) through the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from support.server_process import ServerProcess

JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_health_said_loading_before_ready(demo_server: ServerProcess) -> None:
    statuses = [status for _, status in demo_server.states_seen]
    assert "loading" in statuses, f"never saw 'loading' while the model loaded: {demo_server.states_seen}"
    assert (503, "loading") in demo_server.states_seen
    body = httpx.get(f"{demo_server.base_url}/health").json()
    assert body["status"] == "healthy"
    assert body["model"] == "openchat-3.5"
    assert body["context_length"] == 4096
    assert body["streaming"] is True


def test_models_lists_the_served_model(demo_server: ServerProcess) -> None:
    models = client(demo_server).models.list()
    assert [m.id for m in models.data] == ["openchat-3.5"]


def test_chat_answers_tokyo(demo_server: ServerProcess) -> None:
    completion = client(demo_server).chat.completions.create(
        model="openchat-3.5", messages=JAPAN, max_tokens=30, temperature=0)
    choice = completion.choices[0]
    assert "Tokyo" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 5
    assert completion.usage.completion_tokens >= 1
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streaming_with_usage(demo_server: ServerProcess) -> None:
    stream = client(demo_server).chat.completions.create(
        model="openchat-3.5", messages=JAPAN, max_tokens=30, temperature=0, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Tokyo" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1


def test_length_finish_and_max_completion_tokens(demo_server: ServerProcess) -> None:
    completion = client(demo_server).chat.completions.create(
        model="openchat-3.5", messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_completion_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 5


def test_context_overflow_is_a_400(demo_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(demo_server).chat.completions.create(
            model="openchat-3.5", messages=[{"role": "user", "content": "word " * 5000}], max_tokens=10)
    assert caught.value.code == "context_length_exceeded"
    assert "4096" in caught.value.message


def test_fifty_concurrent_streams_all_complete(demo_server: ServerProcess) -> None:
    async def one(index: int, api: openai.AsyncOpenAI) -> tuple[str, str | None]:
        stream = await api.chat.completions.create(
            model="openchat-3.5", messages=[{"role": "user", "content": f"Say hello to user {index}."}],
            max_tokens=20, temperature=0, stream=True)
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def all_of_them() -> list[tuple[str, str | None]]:
        api = async_client(demo_server)
        try:
            return await asyncio.gather(*(one(i, api) for i in range(50)))
        finally:
            await api.close()

    results = asyncio.run(all_of_them())
    assert len(results) == 50
    assert all(finish in ("stop", "length") for _, finish in results), results
    assert all(text for text, _ in results)


def _running_requests(server: ServerProcess) -> tuple[float, float]:
    text = httpx.get(server.metrics_url).text
    ours = vllm = -1.0
    for line in text.splitlines():
        if line.startswith("openchat_requests_running{"):
            ours = float(line.rsplit(" ", 1)[1])
        if line.startswith("vllm:num_requests_running{"):
            vllm = float(line.rsplit(" ", 1)[1])
    return ours, vllm


def test_dropped_stream_frees_its_slot(demo_server: ServerProcess) -> None:
    # logit_bias keeps SmolLM2 from ending its turn (<|im_end|> is id 2): only the disconnect can stop it.
    body = {"model": "openchat-3.5", "stream": True, "max_tokens": 2000, "temperature": 1.0,
            "logit_bias": {"2": -100},
            "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}
    with httpx.Client(timeout=60) as http, http.stream("POST", f"{demo_server.base_url}/v1/chat/completions",
                                                        json=body) as response:
        assert response.status_code == 200
        received = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                received += 1
            if received == 3:
                # Still reading: the request holds a slot. (Leaving the loop closes the connection.)
                assert _running_requests(demo_server)[0] == 1
                break
        assert received == 3
    # The connection is closed: the engine request must be aborted, not run to 2000 tokens.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running_requests(demo_server) != (0.0, 0.0):
        time.sleep(0.2)
    assert _running_requests(demo_server) == (0.0, 0.0)
    assert httpx.get(f"{demo_server.base_url}/health").json()["running"] == 0
    # The request log says it ended as a disconnect, well short of its 2000 tokens. Polled: the line is written
    # just after the slot is released, so the gauges above can be back to 0 a moment before it is there.
    def dropped_lines() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in demo_server.log_text().splitlines()
                 if line.startswith("{") and '"event": "request"' in line]
        return [entry for entry in lines if entry["outcome"] == "disconnected"]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not dropped_lines():
        time.sleep(0.2)
    dropped = dropped_lines()
    assert dropped, "no request logged as disconnected"
    assert dropped[-1]["completion_tokens"] < 2000
