"""`RequestRecord`: one request from arrival to its last byte, and the only place its figures are kept.

The route opens it, the generation fills it (`observe`), errors mark it (`fail`), and the API's
lifecycle middleware closes it once, when the response has ended however it ended. Metrics, the
request log and `/metrics/streaming` read the closed record; nobody counts tokens a second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hxp_enterprise_llm.orchestration.key_policy import OPEN_ACCESS, Charge, KeyPolicy, WindowState
from hxp_enterprise_llm.schemas.errors import ServiceError
from hxp_enterprise_llm.schemas.outcomes import FinishReason, Outcome

if TYPE_CHECKING:
    from hxp_enterprise_llm.services.core.engine import TokenDelta

# nginx's "client closed request": the client left before any response was sent.
STATUS_CLIENT_GONE = 499


class Releasable(Protocol):
    def release(self) -> None: ...


@dataclass(eq=False)  # identity: two requests may carry the same client-given id
class RequestRecord:
    """Timings (monotonic seconds), counts and the outcome of one request."""

    request_id: str  # the X-Request-ID the client sent (echoed and logged) or one made up for it
    route: str  # "chat" or "completion"
    # The engine's id for the request: always the server's own, unique, so that two requests sending the
    # same X-Request-ID (two tabs, a retrying proxy) can never abort or read each other's generation.
    engine_request_id: str | None = None
    client: str = ""
    stream: bool = False
    end_user: str | None = None  # OpenAI's `user`: the client's id for its own end user, for the log
    choices: int = 1  # n: the answer is complete when every choice has finished
    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    choice_cached_tokens: dict[int, int] = field(default_factory=dict)  # per choice, as its engine request reports
    completion_tokens: int = 0
    finish_reasons: dict[int, FinishReason] = field(default_factory=dict)  # per choice, as each ends
    error: ServiceError | None = None
    status: int | None = None  # the HTTP status the client got (a stream that started is 200)
    outcome: Outcome | None = None  # decided by close()
    frames: int = 0  # SSE content frames sent
    inter_token_gaps: list[float] = field(default_factory=list)
    # Each choice's last token: with n choices one engine step yields a token for each within microseconds,
    # so a gap measured across choices would be one step and n-1 near-zero gaps.
    choice_last_token: dict[int, float] = field(default_factory=dict)
    slot: Releasable | None = None  # the admission slot while the request holds one
    # --- the key's side (orchestration/quotas.py): who is paying, what was charged, what the client is told
    key: KeyPolicy = OPEN_ACCESS
    charge: Charge | None = None
    rate_limits: dict[str, WindowState] = field(default_factory=dict)
    traceparent: str | None = None  # the client's W3C trace context, if it sent one
    trace: Any = None  # the request's open span (and its clock) while tracing is on (api/tracing.py)

    def observe(self, delta: TokenDelta) -> None:
        """Fold a delta in: the one token count, TTFT and inter-token gaps, the finish reason."""
        now = time.monotonic()
        new_tokens = delta.completion_tokens - self.completion_tokens
        if new_tokens > 0:
            if self.first_token is None:
                self.first_token = now
            previous = self.choice_last_token.get(delta.index)
            if previous is not None:  # no gap before a choice's first token, however many came with it
                # Tokens that arrive together share the gap, as vLLM's inter-token latency does.
                self.inter_token_gaps.extend([(now - previous) / new_tokens] * new_tokens)
            self.choice_last_token[delta.index] = now
            self.last_token = now
        self.prompt_tokens = delta.prompt_tokens
        self.completion_tokens = delta.completion_tokens
        # Known once a choice's prefill has run; a later delta never reports fewer.
        cached = self.choice_cached_tokens
        cached[delta.index] = max(cached.get(delta.index, 0), delta.cached_tokens)
        if delta.finish_reason is not None:
            self.finish_reasons[delta.index] = delta.finish_reason

    @property
    def finish_reason(self) -> FinishReason | None:
        """The request's: None until every choice ended; abort if any was cut off, else length if any hit it."""
        if len(self.finish_reasons) < self.choices:
            return None
        reasons = set(self.finish_reasons.values())
        for reason in (FinishReason.ABORT, FinishReason.LENGTH):
            if reason in reasons:
                return reason
        return FinishReason.STOP

    def mark_aborted(self) -> None:
        for index in range(self.choices):
            self.finish_reasons.setdefault(index, FinishReason.ABORT)

    def fail(self, error: ServiceError) -> None:
        """The first error wins: a timeout stays a timeout even if the abort that follows fails too."""
        if self.error is None:
            self.error = error

    def close(self, status: int | None) -> None:
        """Stamp the end, release the slot, and decide the outcome; called once, by the lifecycle."""
        self.finished = time.monotonic()
        self.status = status if status is not None else STATUS_CLIENT_GONE
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if self.error is not None:
            self.outcome = self.error.outcome
        elif self.finish_reason is not None and self.finish_reason.complete and self.status < 400:
            self.outcome = Outcome.OK
        elif self.finish_reason is FinishReason.ABORT:
            self.outcome = Outcome.ABORTED
        else:  # the response ended before the answer did, and nothing failed: the client left
            self.outcome = Outcome.DISCONNECTED

    @property
    def cached_tokens(self) -> int:
        """Of prompt_tokens, those served from the prefix cache: what every choice found cached. With n > 1
        each choice is an engine request of its own, and one scheduled after a sibling finds the prompt the
        sibling has just computed in the cache, which is no hit on the client's prompt."""
        return min(self.choice_cached_tokens.values(), default=0)

    @property
    def queue_wait(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.arrived

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrived

    @property
    def e2e(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrived

    def counts_for_slo(self) -> bool:
        return self.outcome is not None and self.outcome.counts_for_slo

    def met_slo(self, target_seconds: float) -> bool:
        """The SLO: answered in full within the target latency."""
        return self.outcome is Outcome.OK and self.e2e is not None and self.e2e <= target_seconds
