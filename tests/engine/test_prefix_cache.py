"""vLLM's prefix cache on the CPU build, through the service: a conversation's second turn hits it
(vLLM's own counters and the service's usage and metrics agree), and caching changes no answer (float32;
in bf16 it can: see fp32_servers).

vLLM 0.32 counts in tokens: `vllm:prefix_cache_queries` (prompt tokens looked up) and
`vllm:prefix_cache_hits` (of those, found cached), both counters (`_total` in the exposition).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_metrics_scrape import scrape, total

from support.server_process import DEMO_MODEL, ServerProcess, require_model

SYSTEM = ("You are the help desk of a small library. Opening hours are nine to five on weekdays and ten to two "
          "on Saturdays. Books are lent for three weeks and can be renewed twice, online or at the desk. ") * 6
QUESTIONS = ("When are you open on Saturday?", "How long can I keep a book?", "Can I renew it online?")


@pytest.fixture(scope="module")
def fp32_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """The demo config in float32, with prefix caching on and off, started side by side.

    float32, not the demo's bf16: in bf16, a prompt whose first blocks come from the cache is computed
    in a different order than one prefilled whole, and the rounding differences are large enough to
    change greedy answers (seen here: the same turn answered differently cold and cached). In float32
    they are not; the answers then show that caching reuses, and changes nothing.
    """
    require_model(DEMO_MODEL)
    common = ("--dtype", "float32", "--connection-timeout-seconds", "600", "--queue-timeout-seconds", "300")
    servers = [ServerProcess(tmp_path_factory.mktemp(name) / "serve.log", flag, *common)
               for name, flag in (("cached", "--enable-prefix-caching"), ("uncached", "--no-enable-prefix-caching"))]
    try:
        for server in servers:
            server.wait_ready(timeout=900)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def ask(server: ServerProcess, messages: list[dict[str, str]], stream: bool = False) -> tuple[str, dict[str, Any]]:
    """The answer's text and usage, greedy."""
    body = {"model": "openchat-3.5", "messages": messages, "max_tokens": 24, "temperature": 0}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        text, usage = "", {}
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=600) as response:
            assert response.status_code == 200
            for chunk in _chunks(response):
                for choice in chunk.get("choices") or []:
                    text += choice["delta"].get("content") or ""
                usage = chunk.get("usage") or usage
        return text, usage
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=600)
    assert response.status_code == 200, response.text
    answer = response.json()
    return answer["choices"][0]["message"]["content"], answer["usage"]


def _chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: "):])


def converse(server: ServerProcess, salt: str, stream: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """Three turns, each resending the history; `salt` makes the system prompt new to the server's cache."""
    history = [{"role": "system", "content": f"[{salt}] {SYSTEM}"}]
    turns = []
    for question in QUESTIONS:
        history.append({"role": "user", "content": question})
        text, usage = ask(server, history, stream)
        turns.append((text, usage))
        history.append({"role": "assistant", "content": text})
    return turns


@pytest.mark.parametrize("stream", [False, True])
def test_a_second_turn_hits_the_prefix_cache(demo_server: ServerProcess, stream: bool) -> None:
    before = scrape(demo_server)
    turns = converse(demo_server, f"hits-{stream}", stream)
    after = scrape(demo_server)

    def moved(name: str) -> float:
        return total(after, name) - total(before, name)

    first, *later = [usage for _, usage in turns]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0  # a new system prompt: nothing to reuse
    for usage in later:
        # The system prompt and every earlier turn: at least the first turn's whole blocks.
        assert usage["prompt_tokens_details"]["cached_tokens"] >= first["prompt_tokens"] // 2
        assert usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    cached = sum(usage["prompt_tokens_details"]["cached_tokens"] for usage in later)
    assert moved("vllm:prefix_cache_hits_total") == cached
    assert moved("vllm:prefix_cache_queries_total") >= sum(usage["prompt_tokens"] for _, usage in turns) - 3
    assert moved("openchat_prompt_tokens_cached_total") == cached


def test_answers_are_the_same_with_and_without_the_cache(fp32_servers: tuple[ServerProcess, ServerProcess]) -> None:
    cached_server, uncached_server = fp32_servers
    # The cached server hears the conversation twice: the second time every turn reuses the first's blocks.
    cold, warm = (converse(cached_server, "same") for _ in range(2))
    uncached = converse(uncached_server, "same")
    assert all(usage["prompt_tokens_details"]["cached_tokens"] > 0 for _, usage in warm)
    assert all(usage["prompt_tokens_details"]["cached_tokens"] == 0 for _, usage in uncached)
    assert [text for text, _ in warm] == [text for text, _ in cold] == [text for text, _ in uncached]
    assert total(scrape(uncached_server), "vllm:prefix_cache_hits_total") == 0  # the setting reached vLLM
