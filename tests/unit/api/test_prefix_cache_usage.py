"""Cached prompt tokens as OpenAI reports them: usage.prompt_tokens_details.cached_tokens, in plain and
streamed answers, the openchat_prompt_tokens_cached counter and the /metrics/streaming hit rate.

The scripted engine's prefix cache reuses whole 16-token blocks a prompt shares with an earlier one,
as vLLM's does, so a conversation's second turn finds its first turn's blocks.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_harness import MODEL, Served, sse_chunks
from test_metrics_exposition import scrape, total

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.services.core.vllm_engine import engine_args_from_config
from support.fake_engine import PREFIX_CACHE_BLOCK

pytestmark = pytest.mark.anyio

SYSTEM = "You are a terse assistant for a shipping company. " * 3


def turn(history: list[dict[str, str]], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, *history], "max_tokens": 20,
            **fields}


async def ask(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    """The answer's usage, streamed or not."""
    response = await served.chat(body)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        return sse_chunks(response.text)[-1]["usage"]
    return response.json()["usage"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_second_turn_reports_its_first_turns_tokens_as_cached(served: Served, stream: bool) -> None:
    options = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    history = [{"role": "user", "content": "Where is parcel 42?"}]
    served.engine.enqueue(*"In Rotterdam.")
    first = await ask(served, turn(history, **options))
    history += [{"role": "assistant", "content": "In Rotterdam."}, {"role": "user", "content": "And 43?"}]
    second = await ask(served, turn(history, **options))

    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    cached = second["prompt_tokens_details"]["cached_tokens"]
    # The whole first prompt but its final, partly filled block is shared with the second.
    assert first["prompt_tokens"] // PREFIX_CACHE_BLOCK * PREFIX_CACHE_BLOCK - PREFIX_CACHE_BLOCK <= cached
    assert 0 < cached < second["prompt_tokens"]
    assert cached % PREFIX_CACHE_BLOCK == 0
    families = scrape(served)
    assert total(families["openchat_prompt_tokens_cached"], "openchat_prompt_tokens_cached_total",
                 model=MODEL) == cached
    assert total(families["openchat_prompt_tokens"], "openchat_prompt_tokens_total", model=MODEL) == \
        first["prompt_tokens"] + second["prompt_tokens"]


async def test_with_the_cache_off_nothing_is_reported_cached(served: Served) -> None:
    served.engine.prefix_caching = False
    body = turn([{"role": "user", "content": "Where is parcel 42?"}])
    await ask(served, body)
    assert (await ask(served, body))["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_the_dashboard_window_reports_the_hit_rate_of_streams(served: Served) -> None:
    body = turn([{"role": "user", "content": "Where is parcel 42?"}], stream=True,
                stream_options={"include_usage": True})
    usages = [await ask(served, body) for _ in range(2)]
    cache = (await served.client.get("/metrics/streaming")).json()["prompt_cache"]
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    prompt = sum(u["prompt_tokens"] for u in usages)
    assert cached > 0
    assert cache == {"prompt_tokens": prompt, "cached_tokens": cached, "hit_rate": round(cached / prompt, 4)}


def test_prefix_caching_is_passed_to_vllm_explicitly() -> None:
    assert engine_args_from_config(ModelConfigSchema())["enable_prefix_caching"] is True
    assert engine_args_from_config(ModelConfigSchema(enable_prefix_caching=False))["enable_prefix_caching"] is False


async def test_a_conversation_that_outgrows_the_context_is_refused_naming_both_lengths(serve_app) -> None:
    """Never truncated silently: the turn that no longer fits is a 400 with the limit and the prompt's
    length, and the client's remedy (docs/api.md) works: drop the oldest turns, keep the system prompt."""
    async with serve_app(max_model_len=512) as served:
        history: list[dict[str, str]] = []
        for number in range(1, 50):
            history.append({"role": "user", "content": f"Question {number}: " + "tell me more " * 4})
            body = turn(history, max_tokens=20)
            response = await served.chat(body)
            if response.status_code != 200:
                break
            history.append({"role": "assistant", "content": response.json()["choices"][0]["message"]["content"]})
        error = response.json()["error"]
        assert response.status_code == 400
        assert error["code"] == "context_length_exceeded"
        assert number > 2  # earlier turns were answered
        prompt_tokens = len(served.engine.get_tokenizer().apply_chat_template(
            [{"role": "system", "content": SYSTEM}, *history]))
        assert "maximum context length is 512 tokens" in error["message"]
        assert f"{prompt_tokens} in the messages" in error["message"]
        trimmed = turn(history[4:], max_tokens=20)  # the two oldest exchanges dropped
        assert (await served.chat(trimmed)).status_code == 200
