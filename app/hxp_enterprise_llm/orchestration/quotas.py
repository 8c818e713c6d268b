"""Per-key limits: requests and tokens per minute, concurrent requests, checked before any work is done.

A key's limits belong to its *name* (two keys of one team, as during a rotation, share them). The
windows are sliding: at most `requests_per_minute` requests in any 60 seconds, and at most
`tokens_per_minute` prompt + completion tokens. The request itself (concurrency, requests per
minute) is taken as it arrives, before its prompt is tokenized, so a key over those limits cannot fill
the shared tokenizer and queue with prompts that would be refused anyway. The prompt is charged once
tokenized, the completion when it ends (what was generated, also for a stream the client abandoned).
A request the service itself refused or never ran (queue full, queue timeout, client gone while
queued) is refunded: a key pays for work the engine did.

The counts live in a `QuotaStore`. `LocalQuotaStore` keeps them in this process, so the limits hold
per replica (docs/operations.md says why that is acceptable and how a shared store plugs in).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hxp_enterprise_llm.orchestration.key_policy import Charge, KeyPolicy, WindowState
from hxp_enterprise_llm.schemas.errors import RateLimitError

if TYPE_CHECKING:
    from hxp_enterprise_llm.orchestration.request_record import RequestRecord

WINDOW_SECONDS = 60.0
class QuotaStore(Protocol):
    """Where the counts live. One process: `LocalQuotaStore`. Shared limits across replicas: an
    implementation of these six calls over a shared store (Redis, e.g. with a sorted set per name and
    a Lua script for `try_take`), chosen at build time; the rest of the service does not change."""

    def try_take(self, policy: KeyPolicy, tokens: int, now: float) -> str | None:
        """Take a request and `tokens` if they fit, else say which limit is hit (nothing is taken)."""

    def try_add_prompt(self, policy: KeyPolicy, tokens: int, taken_at: float, now: float) -> float | None:
        """Add the prompt's `tokens` to the request taken at `taken_at` if they fit: the time they are
        charged at (to give them back by); None, taking nothing, if they do not fit."""

    def add_tokens(self, name: str, tokens: int, now: float) -> None:
        """Charge tokens after the fact (the completion): may exceed the limit; later requests wait."""

    def give_back(self, name: str, tokens: int, taken_at: float, tokens_at: float | None = None) -> None:
        """Undo a `try_take` (the request and its tokens) made at `taken_at`; the tokens were charged at
        `tokens_at` if not then."""

    def release(self, name: str) -> None:
        """A request of this name ended: one fewer running."""

    def state(self, policy: KeyPolicy, now: float, *, tokens_wanted: int = 1) -> dict[str, WindowState]:
        """{"requests": ..., "tokens": ...} for the limits the key has; reset of a refused limit is
        the time until `tokens_wanted` (1 request) would fit."""


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    running: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_SECONDS:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_SECONDS:
            self.tokens.popleft()

    def token_sum(self) -> int:
        return sum(amount for _, amount in self.tokens)


class LocalQuotaStore:
    """Sliding-window logs per key name, in this process (entries are kept one window long)."""

    def __init__(self) -> None:
        self._usage: dict[str, _Usage] = {}

    def _of(self, name: str, now: float) -> _Usage:
        usage = self._usage.setdefault(name, _Usage())
        usage.expire(now)
        return usage

    def try_take(self, policy: KeyPolicy, tokens: int, now: float) -> str | None:
        usage = self._of(policy.name, now)
        if policy.concurrent_requests is not None and usage.running >= policy.concurrent_requests:
            return "concurrency"
        if policy.requests_per_minute is not None and len(usage.requests) >= policy.requests_per_minute:
            return "requests"
        if policy.tokens_per_minute is not None and usage.token_sum() + tokens > policy.tokens_per_minute:
            return "tokens"
        usage.requests.append(now)
        usage.tokens.append((now, tokens))
        usage.running += 1
        return None

    def try_add_prompt(self, policy: KeyPolicy, tokens: int, taken_at: float, now: float) -> float | None:
        usage = self._of(policy.name, now)
        if policy.tokens_per_minute is not None and usage.token_sum() + tokens > policy.tokens_per_minute:
            return None
        try:  # in the request's own place, so that the window keeps its time order
            usage.tokens[usage.tokens.index((taken_at, 0))] = (taken_at, tokens)
            return taken_at
        except ValueError:  # the request's entry already left the window (a minute in the tokenizer)
            usage.tokens.append((now, tokens))
            return now

    def add_tokens(self, name: str, tokens: int, now: float) -> None:
        if tokens > 0:
            self._of(name, now).tokens.append((now, tokens))

    def give_back(self, name: str, tokens: int, taken_at: float, tokens_at: float | None = None) -> None:
        usage = self._usage.get(name)
        if usage is None:
            return
        if taken_at in usage.requests:
            usage.requests.remove(taken_at)
        entry = (taken_at if tokens_at is None else tokens_at, tokens)
        if entry in usage.tokens:
            usage.tokens.remove(entry)

    def release(self, name: str) -> None:
        usage = self._usage.get(name)
        if usage is not None and usage.running > 0:
            usage.running -= 1

    def state(self, policy: KeyPolicy, now: float, *, tokens_wanted: int = 1) -> dict[str, WindowState]:
        usage = self._of(policy.name, now)
        states = {}
        if policy.requests_per_minute is not None:
            limit = policy.requests_per_minute
            full = len(usage.requests) >= limit
            # Refused: until the oldest request leaves the window; else until the newest does.
            edge = usage.requests[0] if full else (usage.requests[-1] if usage.requests else now - WINDOW_SECONDS)
            states["requests"] = WindowState(limit, max(0, limit - len(usage.requests)),
                                             max(0.0, edge + WINDOW_SECONDS - now))
        if policy.tokens_per_minute is not None:
            limit = policy.tokens_per_minute
            used = usage.token_sum()
            states["tokens"] = WindowState(limit, max(0, limit - used),
                                           _tokens_reset(usage.tokens, used + tokens_wanted - limit, now))
        return states


def _tokens_reset(entries: deque[tuple[float, int]], excess: int, now: float) -> float:
    """Seconds until `excess` tokens have left the window (until it is empty when nothing is in excess)."""
    if not entries:
        return 0.0
    if excess <= 0:
        return max(0.0, entries[-1][0] + WINDOW_SECONDS - now)
    freed = 0
    for taken_at, amount in entries:
        freed += amount
        if freed >= excess:
            return max(0.0, taken_at + WINDOW_SECONDS - now)
    return max(0.0, entries[-1][0] + WINDOW_SECONDS - now)


class Quotas:
    """Checks and charges keys' limits; an orchestrator observer that settles each request at its end."""

    def __init__(self, store: QuotaStore | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.store: QuotaStore = store or LocalQuotaStore()
        self._clock = clock

    def reserve(self, record: RequestRecord) -> None:
        """Take the request from the key's quota (concurrency, requests per minute; a token window already
        over its limit), before any work is done on it; or raise 429 rate_limit_exceeded."""
        if record.charge is not None:
            return
        # No rate-limit figures yet: a refusal before the prompt is charged (queue full, a 400 from the
        # prompt) gives the request back first (`cancel`) and reports the window without it.
        record.charge = self._take(record.key, record.rate_limits)

    def charge_prompt(self, record: RequestRecord, prompt_tokens: int) -> None:
        """Add the tokenized prompt to the reserved request (reserving it first if it is not); if it does not
        fit the key's tokens per minute, the request is given back and 429 raised."""
        self.reserve(record)
        charge = record.charge
        assert charge is not None
        now = self._clock()
        charged_at = self.store.try_add_prompt(charge.policy, prompt_tokens, charge.taken_at, now)
        if charged_at is None:
            self.cancel(record)
            error, record.rate_limits = self._refusal(charge.policy, "tokens", prompt_tokens, now)
            raise error
        charge.prompt_tokens, charge.prompt_at = prompt_tokens, charged_at
        record.rate_limits = self.store.state(charge.policy, now)

    def cancel(self, record: RequestRecord) -> None:
        """Give back a request refused before admission, at once (before its answer reports the window)."""
        charge, record.charge = record.charge, None
        if charge is not None:
            self._give_back(charge)

    @contextlib.contextmanager
    def holding(self, policy: KeyPolicy) -> Iterator[None]:
        """Tokenizer work outside a generation (/tokenize, /detokenize): refused (429) while the key is at
        any of its limits, and one of its concurrent requests while it runs. It uses up neither requests nor
        tokens per minute (the engine does no work), so counting a prompt before sending it costs nothing."""
        charge = self._take(policy, {})
        try:
            yield
        finally:
            self._give_back(charge)

    def _take(self, policy: KeyPolicy, report: dict[str, WindowState]) -> Charge:
        """One of the key's requests, taken before any work; or its 429, the key's window figures put in
        `report` (what the refused client is told)."""
        now = self._clock()
        refused = self.store.try_take(policy, 0, now)
        if refused is not None:
            error, states = self._refusal(policy, refused, 1, now)
            report.update(states)
            raise error
        return Charge(policy, 0, now)

    def _give_back(self, charge: Charge) -> None:
        """A request (and its prompt, if charged) that the engine never saw: as if it had not been taken."""
        if not charge.settled:
            charge.settled = True
            self.store.release(charge.policy.name)
            self.store.give_back(charge.policy.name, charge.prompt_tokens, charge.taken_at, charge.prompt_at)

    def _refusal(self, policy: KeyPolicy, refused: str, tokens_wanted: int,
                 now: float) -> tuple[RateLimitError, dict[str, WindowState]]:
        """The 429 for the limit `refused`, and the key's window figures to report with it."""
        if refused == "tokens" and policy.tokens_per_minute is not None and tokens_wanted > policy.tokens_per_minute:
            return RateLimitError(f"this request's prompt ({tokens_wanted} tokens) is larger than key "
                                  f"'{policy.name}''s tokens_per_minute ({policy.tokens_per_minute}); it can never "
                                  "be admitted: shorten the prompt", reason="tokens"), self.store.state(policy, now)
        states = self.store.state(policy, now, tokens_wanted=tokens_wanted)
        wait = states[refused].reset_seconds if refused in states else 1.0
        return RateLimitError(_refusal_message(policy, refused), reason=refused,
                              headers={"Retry-After": str(max(1, math.ceil(wait)))}), states

    def limits_of(self, record: RequestRecord) -> dict[str, WindowState]:
        """What to tell the client: the figures of its admission or refusal, else (a request refused before
        the check, e.g. a bad body) the key's window now."""
        if not record.rate_limits and record.key.limited:
            record.rate_limits = self.store.state(record.key, self._clock())
        return record.rate_limits

    def on_finished(self, record: RequestRecord) -> None:
        """Settle: the completion is charged; a request that never reached the engine is given back."""
        charge = record.charge
        if charge is None or charge.settled:
            return
        if record.admitted is None:
            self._give_back(charge)
            return
        charge.settled = True
        self.store.release(charge.policy.name)
        self.store.add_tokens(charge.policy.name, record.completion_tokens, self._clock())


def _refusal_message(policy: KeyPolicy, refused: str) -> str:
    if refused == "concurrency":
        return (f"Rate limit reached for key '{policy.name}': concurrent_requests={policy.concurrent_requests} "
                "requests are running; retry when one ends")
    if refused == "requests":
        return (f"Rate limit reached for key '{policy.name}' on requests per minute: limit "
                f"{policy.requests_per_minute}; retry after the Retry-After delay")
    return (f"Rate limit reached for key '{policy.name}' on tokens per minute (prompt + completion): limit "
            f"{policy.tokens_per_minute}; retry after the Retry-After delay")


def format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* form: 20ms, 6s, 1m30s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def rate_limit_headers(states: dict[str, WindowState]) -> dict[str, str]:
    headers = {}
    for kind, state in states.items():
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(state.reset_seconds)
    return headers
