"""The conversation workload: N users, each holding a multi-turn chat over one shared long system prompt.

Every turn resends the whole history (as chat clients do), so a server that reuses the KV cache of a
prompt's prefix answers turn k without computing turns 1..k-1 again, and a balancer that keeps a
conversation on one replica keeps that reuse. Each user sends its turns one after another with a think
time between them; the users run at once. Reported per turn index: TTFT and the share of prompt tokens the
server says it served from its cache (`usage.prompt_tokens_details.cached_tokens`), over the whole prompt
and over the conversation's own tokens.

Own tokens: a prompt's tokens after the shared prefix S, the longest token prefix common to every user's
prompt (the chat template's opening, the system prompt, the user turn's opening; measured with the
server's /tokenize). A cache serves a prompt's leading tokens, so a request with `cached` tokens from the
cache had max(0, cached - S) of its prompt - S own tokens served from it. Only this conversation's earlier
turns can supply those (the first token after S already differs between users), which is where a
balancer's session affinity shows: any replica that served anyone holds the shared prefix. The cached
count is whole blocks (vLLM: 128 tokens on CPU), so the shared prompt's last, partial block counts as own
tokens only from the point S onward, in both the numerator and the denominator.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from hxp_enterprise_llm.bench.client import RequestResult, RequestSpec, send_chat_request
from hxp_enterprise_llm.bench.runner import LoadOptions, discover_model, make_client
from hxp_enterprise_llm.bench.stats import Distribution, Slo, Summary, summarize

# Plain sentences of a made-up support manual: ordinary prose, so the tokenizer sees realistic text.
_MANUAL = (
    "Section {n}. Parcels registered before noon leave the depot the same day, and the driver scans "
    "each parcel at the door so that the customer can follow it on the tracking page. "
    "When a customer is not at home, the parcel goes to the nearest pick-up point and stays there for "
    "ten working days before it returns to the sender. "
)
QUESTIONS = (
    "Where does a parcel go when nobody is at home?",
    "How long does the pick-up point keep it?",
    "Can I ask for a second delivery attempt instead?",
    "What happens after the ten days?",
    "Which parcels leave the depot the same day?",
    "How do I follow my parcel?",
    "Summarise our conversation in one sentence.",
    "Thank you. Anything else I should know?",
)


def shared_system_prompt(sections: int, edition: int = 0) -> str:
    """The system prompt every user shares: `sections` numbered paragraphs of the manual. A different
    `edition` changes its first tokens, so a run never finds an earlier run's prompt in a server's cache."""
    return f"Manual edition {edition}. You answer questions about our delivery service from it.\n" + "".join(
        _MANUAL.format(n=n) for n in range(1, sections + 1))


@dataclass(frozen=True)
class ConversationOptions:
    users: int = 8
    turns: int = 6
    system_prompt_tokens: int = 2000  # sized with the server's /tokenize; approximate elsewhere
    think_time_s: float = 1.0  # mean pause between a user's turns (exponential, seeded)
    session_header: str | None = "X-Session-ID"  # None: send no session key (balancer falls back)
    seed: int = 0


@dataclass(frozen=True)
class Turn:
    user: int
    index: int  # 1-based turn number within the user's conversation
    result: RequestResult


@dataclass(frozen=True)
class ConversationRun:
    options: ConversationOptions
    model: str
    system_prompt_tokens: int
    shared_prefix_tokens: int | None  # S in the module docstring; None: the server has no /tokenize
    turns: list[Turn]
    duration_s: float


@dataclass(frozen=True)
class TurnFigures:
    index: int
    requests: int
    failed: int
    ttft: Distribution
    prompt_tokens: int
    cached_tokens: int
    usage_with_cached: int  # answers whose usage carried prompt_tokens_details.cached_tokens
    own_prompt_tokens: int  # prompt tokens after the shared prefix (module docstring); 0 when unknown
    own_cached_tokens: int  # of those, served from the cache
    # Behind a balancer that names the replica (X-Served-By): answers from the replica that answered
    # the same user's previous turn, out of those where both answers named one.
    same_replica: int = 0
    replica_known: int = 0

    @property
    def cached_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else float("nan")

    @property
    def own_cached_ratio(self) -> float:
        return self.own_cached_tokens / self.own_prompt_tokens if self.own_prompt_tokens else float("nan")


@dataclass(frozen=True)
class ConversationSummary:
    per_turn: list[TurnFigures]
    overall: Summary
    later_turns: TurnFigures  # turns 2..N pooled


async def _sized_system_prompt(client: httpx.AsyncClient, model: str, tokens: int,
                               edition: int) -> tuple[str, int]:
    """The shared prompt with about `tokens` tokens, measured by the server's /tokenize when it has one."""
    sections = max(1, tokens // 60)
    for _ in range(4):
        text = shared_system_prompt(sections, edition)
        response = await client.post("/tokenize", json={"model": model, "prompt": text})
        if response.status_code != 200:
            return text, 0  # not this service: the size stays an estimate (about 60 tokens a section)
        count = int(response.json()["count"])
        if abs(count - tokens) < 60:
            return text, count
        sections = max(1, round(sections * tokens / count))
    return text, count


def _user_message(user: int, index: int) -> dict[str, str]:
    """User `user`'s question at turn `index` (1-based)."""
    return {"role": "user", "content": f"(customer {user}) {QUESTIONS[(user + index - 1) % len(QUESTIONS)]}"}


async def _shared_prefix_tokens(client: httpx.AsyncClient, model: str, system: str, users: int) -> int | None:
    """S: the longest token prefix of every user's first prompt (later turns extend the first), by the
    server's /tokenize of the same messages; at least two users are compared, or S would be the whole prompt."""
    prompts = []
    for user in range(1, max(users, 2) + 1):
        messages = [{"role": "system", "content": system}, _user_message(user, 1)]
        response = await client.post("/tokenize", json={"model": model, "messages": messages})
        if response.status_code != 200:
            return None
        prompts.append(response.json()["tokens"])
    shared = min(len(p) for p in prompts)
    for position in range(shared):
        if len({p[position] for p in prompts}) > 1:
            return position
    return shared


async def _converse(client: httpx.AsyncClient, base: RequestSpec, options: ConversationOptions, user: int,
                    system: str, started: float) -> list[Turn]:
    draw = random.Random(f"{options.seed}:{user}")
    headers = {options.session_header: f"bench-user-{user}"} if options.session_header else {}
    history: list[dict[str, str]] = [{"role": "system", "content": system}]
    turns = []
    # Users start spread over one think time, as people do not all press enter at once.
    await asyncio.sleep(draw.uniform(0, options.think_time_s))
    for index in range(1, options.turns + 1):
        history.append(_user_message(user, index))
        result = await send_chat_request(client, replace(base, messages=tuple(history), headers=headers), started)
        turns.append(Turn(user, index, result))
        if not result.ok:
            break  # the history would be wrong from here on
        history.append({"role": "assistant", "content": result.text})
        if index < options.turns:
            await asyncio.sleep(draw.expovariate(1 / options.think_time_s) if options.think_time_s > 0 else 0)
    return turns


async def run_conversations(load: LoadOptions, options: ConversationOptions) -> ConversationRun:
    """Every user's conversation at once; `load` gives the target, answer length and timeout."""
    async with make_client(replace(load, concurrency=options.users)) as client:
        model = load.model or await discover_model(client)
        system, measured = await _sized_system_prompt(client, model, options.system_prompt_tokens, options.seed)
        shared = await _shared_prefix_tokens(client, model, system, options.users) if measured else None
        base = RequestSpec(model=model, prompt="", max_tokens=load.max_tokens, stream=load.stream,
                           temperature=load.temperature, extra_body=load.request_extra())
        started = time.perf_counter()
        per_user = await asyncio.gather(*(_converse(client, base, options, user, system, started)
                                          for user in range(1, options.users + 1)))
        duration = time.perf_counter() - started
    return ConversationRun(options, model, measured, shared, [t for turns in per_user for t in turns], duration)


def _figures(index: int, turns: Sequence[Turn], shared: int | None,
             previous: dict[tuple[int, int], Turn]) -> TurnFigures:
    ok = [t.result for t in turns if t.result.ok]
    own = [] if shared is None else ok
    pairs = [(t.result.served_by, before.result.served_by) for t in turns
             if (before := previous.get((t.user, t.index - 1))) and t.result.served_by and before.result.served_by]
    return TurnFigures(
        index=index, requests=len(turns), failed=len(turns) - len(ok),
        ttft=Distribution.of_seconds([r.ttft for r in ok if r.ttft is not None]),
        prompt_tokens=sum(r.prompt_tokens for r in ok), cached_tokens=sum(r.cached_tokens or 0 for r in ok),
        usage_with_cached=sum(1 for r in ok if r.cached_tokens is not None),
        own_prompt_tokens=sum(r.prompt_tokens - (shared or 0) for r in own),
        own_cached_tokens=sum(max(0, (r.cached_tokens or 0) - (shared or 0)) for r in own),
        same_replica=sum(1 for now, before in pairs if now == before), replica_known=len(pairs))


def summarize_conversations(run: ConversationRun, slos: Sequence[Slo] = ()) -> ConversationSummary:
    indexes = sorted({t.index for t in run.turns})
    shared = run.shared_prefix_tokens
    by_key = {(t.user, t.index): t for t in run.turns}
    per_turn = [_figures(i, [t for t in run.turns if t.index == i], shared, by_key) for i in indexes]
    later = _figures(0, [t for t in run.turns if t.index >= 2], shared, by_key)
    overall = summarize([t.result for t in run.turns], run.duration_s, slos)
    return ConversationSummary(per_turn, overall, later)


def render_conversation_table(run: ConversationRun, summary: ConversationSummary) -> str:
    options = run.options
    key = f"session header {options.session_header}" if options.session_header else "no session key"
    lines = [f"conversations: {options.users} users x {options.turns} turns, shared system prompt "
             f"{run.system_prompt_tokens or '~' + str(options.system_prompt_tokens)} tokens, think time "
             f"{options.think_time_s:g} s, {key}, model {run.model}; shared prefix "
             f"{run.shared_prefix_tokens if run.shared_prefix_tokens is not None else 'unknown'} tokens",
             f"{'turn':>6}{'requests':>10}{'failed':>8}{'TTFT p50 ms':>13}{'TTFT p95 ms':>13}"
             f"{'prompt tok':>12}{'cached':>9}{'own cached':>12}{'usage has cached':>18}{'same replica':>14}"]
    for figures in [*summary.per_turn, summary.later_turns]:
        label = str(figures.index) if figures.index else "2..N"
        lines.append(f"{label:>6}{figures.requests:>10}{figures.failed:>8}{figures.ttft.median:>13.1f}"
                     f"{figures.ttft.p95:>13.1f}{figures.prompt_tokens:>12}{figures.cached_ratio:>9.1%}"
                     f"{figures.own_cached_ratio:>12.1%}"
                     f"{figures.usage_with_cached:>14}/{figures.requests - figures.failed}"
                     f"{f'{figures.same_replica}/{figures.replica_known}' if figures.replica_known else '-':>14}")
    overall = summary.overall
    slo = f"goodput {overall.goodput:.2f} req/s ({', '.join(map(str, overall.slos))})" if overall.slos else \
        f"{overall.request_throughput:.2f} req/s (no SLO given: goodput = throughput)"
    lines.append(f"run: {overall.duration_s:.1f} s, {overall.succeeded}/{overall.requests} succeeded, {slo}")
    return "\n".join(lines)


def conversation_figures(run: ConversationRun, summary: ConversationSummary) -> dict[str, Any]:
    """The run's figures as plain data (JSON, the comparison script)."""
    def turn(figures: TurnFigures) -> dict[str, Any]:
        return {"turn": figures.index or "2..N", "requests": figures.requests, "failed": figures.failed,
                "ttft_p50_ms": _finite(figures.ttft.median), "ttft_p95_ms": _finite(figures.ttft.p95),
                "prompt_tokens": figures.prompt_tokens, "cached_tokens": figures.cached_tokens,
                "cached_ratio": _finite(figures.cached_ratio), "usage_with_cached": figures.usage_with_cached,
                "own_prompt_tokens": figures.own_prompt_tokens, "own_cached_tokens": figures.own_cached_tokens,
                "own_cached_ratio": _finite(figures.own_cached_ratio),
                "same_replica": figures.same_replica, "replica_known": figures.replica_known}

    overall = summary.overall
    return {"options": asdict(run.options), "model": run.model, "system_prompt_tokens": run.system_prompt_tokens,
            "shared_prefix_tokens": run.shared_prefix_tokens,
            "duration_s": run.duration_s, "requests": overall.requests, "failed": overall.failed,
            "goodput_rps": overall.goodput, "slos": [str(s) for s in overall.slos],
            "per_turn": [turn(f) for f in summary.per_turn], "later_turns": turn(summary.later_turns)}


def write_conversation_json(path: Path, run: ConversationRun, summary: ConversationSummary) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conversation_figures(run, summary), indent=2) + "\n", encoding="utf-8")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
