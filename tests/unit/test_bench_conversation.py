"""`hxp-llm bench --conversations` against the real app on the scripted engine, served by uvicorn.

The scripted engine's prefix cache reuses whole blocks as vLLM's does, so the figures the bench reads
from each answer's usage are the service's own: every later turn finds its earlier turns cached.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hxp_enterprise_llm.api.app import build_app
from hxp_enterprise_llm.bench.cli import main as bench_main
from hxp_enterprise_llm.bench.client import RequestResult
from hxp_enterprise_llm.bench.conversation import (
    ConversationOptions,
    ConversationRun,
    Turn,
    conversation_figures,
    shared_system_prompt,
    summarize_conversations,
)
from hxp_enterprise_llm.services.ai_models.openchat_3_5.config import OpenChat35Config
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from support.fake_engine import PREFIX_CACHE_BLOCK, FakeEngine
from support.server_process import app_served_in_thread


@pytest.fixture
def served() -> Iterator[tuple[str, FakeEngine]]:
    config = OpenChat35Config(prompt_format="chat_template", max_model_len=8192)
    engine = FakeEngine()
    with app_served_in_thread(build_app(config, OpenChat35Service(config, engine=engine), serve_metrics=False)) as url:
        yield url, engine


def test_each_turn_resends_the_history_and_reports_cached_tokens(served: tuple[str, FakeEngine],
                                                                 tmp_path: Path) -> None:
    url, engine = served
    out = tmp_path / "conversations.json"
    code = bench_main(["--base-url", url, "--conversations", "3", "--turns", "4", "--think-time", "0",
                       "--system-prompt-tokens", "600", "--max-tokens", "8", "--json", str(out)])
    assert code == 0
    figures = json.loads(out.read_text())
    assert [row["turn"] for row in figures["per_turn"]] == [1, 2, 3, 4]
    assert figures["requests"] == 12
    assert figures["failed"] == 0
    # /tokenize sized the shared prompt (one token per character with the scripted tokenizer).
    assert abs(figures["system_prompt_tokens"] - 600) < 60 + len(shared_system_prompt(1))
    for row in figures["per_turn"]:
        assert row["usage_with_cached"] == 3  # every answer's usage carried cached_tokens
    later = figures["later_turns"]
    assert later["cached_ratio"] > 0.8  # the system prompt and earlier turns, all but a block's remainder
    # The engine saw each user's turns as growing histories: turn k's prompt extends turn k-1's.
    by_user: dict[str, list[list[int]]] = {}
    for request in engine.requests:
        text = engine.get_tokenizer().decode(request.prompt_token_ids)
        by_user.setdefault(text.split("(customer ", 1)[1][0], []).append(list(request.prompt_token_ids))
    assert sorted(len(prompts) for prompts in by_user.values()) == [4, 4, 4]
    for prompts in by_user.values():
        for earlier, later_prompt in zip(prompts, prompts[1:], strict=False):
            assert len(later_prompt) > len(earlier)
            assert later_prompt[:len(earlier)] == earlier


def test_own_tokens_are_those_after_the_prefix_every_user_shares(served: tuple[str, FakeEngine],
                                                                 tmp_path: Path) -> None:
    url, engine = served
    out = tmp_path / "conversations.json"
    assert bench_main(["--base-url", url, "--conversations", "3", "--turns", "3", "--think-time", "0",
                       "--system-prompt-tokens", "600", "--max-tokens", "8", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    by_user: dict[str, list[list[int]]] = {}
    for request in engine.requests:
        text = engine.get_tokenizer().decode(request.prompt_token_ids)
        by_user.setdefault(text.split("(customer ", 1)[1][0], []).append(list(request.prompt_token_ids))
    firsts = [prompts[0] for prompts in by_user.values()]
    shared = min(_common_prefix(firsts[0], other) for other in firsts[1:])
    assert figures["shared_prefix_tokens"] == shared
    # The engine's side: each later turn finds its previous turn's prompt in whole blocks, and nothing of
    # another user's beyond the shared prefix.
    own_prompt = own_cached = 0
    for prompts in by_user.values():
        for earlier, prompt in zip(prompts, prompts[1:], strict=False):
            own_prompt += len(prompt) - shared
            own_cached += len(earlier) // PREFIX_CACHE_BLOCK * PREFIX_CACHE_BLOCK - shared
    later = figures["later_turns"]
    assert (later["own_prompt_tokens"], later["own_cached_tokens"]) == (own_prompt, own_cached)
    first = figures["per_turn"][0]
    assert first["cached_tokens"] > 0  # the users after the first found the shared prefix...
    assert first["own_cached_tokens"] == 0  # ...and none of their own tokens


def test_own_cached_tokens_count_only_the_cache_hit_beyond_the_shared_prefix() -> None:
    # (prompt, cached): a hit short of the shared prefix, one reaching 28 tokens past it, one 156 past it.
    results = [RequestResult(ok=True, ttft=0.1, prompt_tokens=prompt, cached_tokens=cached)
               for prompt, cached in ((150, 64), (300, 128), (400, 256))]
    turns = [Turn(user=1, index=index, result=result) for index, result in enumerate(results, start=1)]
    run = ConversationRun(ConversationOptions(users=1, turns=3), "m", 90, 100, turns, 1.0)
    later = summarize_conversations(run).later_turns
    assert (later.own_prompt_tokens, later.own_cached_tokens) == (200 + 300, 28 + 156)
    assert later.own_cached_ratio == pytest.approx(184 / 500)
    first = summarize_conversations(run).per_turn[0]
    assert (first.own_prompt_tokens, first.own_cached_tokens) == (50, 0)
    assert later.replica_known == 0  # no balancer named a replica
    unknown = summarize_conversations(replace(run, shared_prefix_tokens=None))
    assert math.isnan(unknown.later_turns.own_cached_ratio)  # a server without /tokenize: no S, no own ratio
    assert conversation_figures(run, unknown)["later_turns"]["own_cached_ratio"] is None


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_same_replica_counts_turns_answered_where_the_users_previous_turn_was() -> None:
    placement = {1: ("replica1", "replica1", "replica2", "replica2"), 2: ("replica2", None, "replica2", "replica2")}
    turns = [Turn(user, index, RequestResult(ok=True, ttft=0.1, prompt_tokens=10, served_by=replica))
             for user, replicas in placement.items() for index, replica in enumerate(replicas, start=1)]
    run = ConversationRun(ConversationOptions(users=2, turns=4), "m", 5, 5, turns, 1.0)
    summary = summarize_conversations(run)
    # user 1: turn 2 stays, 3 moves, 4 stays; user 2: turn 2 and 3 have an unnamed neighbour, 4 stays.
    assert [(f.same_replica, f.replica_known) for f in summary.per_turn] == [(0, 0), (1, 1), (0, 1), (2, 2)]
    assert (summary.later_turns.same_replica, summary.later_turns.replica_known) == (3, 4)


def test_ignore_eos_reaches_every_turn(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    assert bench_main(["--base-url", url, "--conversations", "2", "--turns", "2", "--think-time", "0",
                       "--system-prompt-tokens", "100", "--max-tokens", "4", "--ignore-eos", "--quiet"]) == 0
    assert len(engine.requests) == 4
    assert all(request.sampling.ignore_eos for request in engine.requests)
