"""Admission, queueing, timeouts, cancellation and drain for interactive requests.

- At most `concurrent_users` requests run; up to `max_queue_size` more wait in FIFO order.
- A full queue is refused at once with 429 + Retry-After (the caller has not sent a byte yet, so
  a streaming client gets a plain HTTP error, never an error inside a 200 stream).
- A request that waits `queue_timeout_seconds` without a slot gets 503 (the server, not the client,
  is behind), also with Retry-After.
- `connection_timeout_seconds` bounds a request from arrival to its last token.
- Whoever stops consuming a run (client disconnect, timeout, drain deadline) aborts its engine
  request at once, so the slot and the KV cache are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import (
    QueueFullError,
    QueueTimeoutError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from hxp_enterprise_llm.services.core.engine import GenerationRequest, TokenDelta


@dataclass
class RequestRecord:
    """Timings and counts of one request, filled in as it runs (monotonic seconds)."""

    request_id: str
    stream: bool
    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    outcome: str = "running"  # ok | error | timeout | disconnected
    status: int = 200  # the HTTP status the client got (a stream that started is 200)
    frames: int = 0  # SSE content frames sent
    client: str = ""
    inter_token_gaps: list[float] = field(default_factory=list)

    @property
    def queue_wait(self) -> float | None:
        return None if self.admitted is None else self.admitted - self.arrived

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrived

    @property
    def e2e(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrived


class RequestObserver(Protocol):
    def on_finished(self, record: RequestRecord) -> None: ...


class StreamSource(Protocol):
    def stream(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]: ...


_END = object()


class Slot:
    """A held admission slot; `release` is idempotent so every exit path may call it."""

    def __init__(self, orchestrator: InteractiveOrchestrator) -> None:
        self._orchestrator: InteractiveOrchestrator | None = orchestrator

    def release(self) -> None:
        orchestrator, self._orchestrator = self._orchestrator, None
        if orchestrator is not None:
            orchestrator._release()


class InteractiveOrchestrator:
    def __init__(self, config: ModelConfigSchema, abort: Callable[[str], object],
                 observers: list[RequestObserver] | None = None) -> None:
        self._config = config
        self._abort = abort
        self._observers = list(observers or [])
        self._slots = asyncio.Semaphore(config.concurrent_users)
        self.running = 0
        self.waiting = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._recent_e2e = 1.0  # seconds, exponentially averaged, for Retry-After

    def add_observer(self, observer: RequestObserver) -> None:
        self._observers.append(observer)

    def retry_after_seconds(self) -> int:
        backlog = (self.waiting + 1) / max(self._config.concurrent_users, 1)
        return max(1, math.ceil(self._recent_e2e * backlog))

    async def acquire(self, record: RequestRecord) -> Slot:
        """Wait for a slot; raises (before the caller has sent anything) when refused."""
        if self.draining:
            raise ServiceUnavailableError("the service is shutting down; retry on another replica",
                                          code="draining", headers={"Retry-After": "5"})
        if self._slots.locked() and self.waiting >= self._config.max_queue_size:
            raise QueueFullError(
                f"all {self._config.concurrent_users} slots are busy and {self.waiting} requests are waiting "
                f"(max_queue_size={self._config.max_queue_size}); retry after the Retry-After delay",
                headers={"Retry-After": str(self.retry_after_seconds())})
        self.waiting += 1
        self._idle.clear()
        try:
            await asyncio.wait_for(self._slots.acquire(), self._config.queue_timeout_seconds)
            self.running += 1
        except TimeoutError:
            raise QueueTimeoutError(
                f"no slot became free within queue_timeout_seconds={self._config.queue_timeout_seconds:g}",
                headers={"Retry-After": str(self.retry_after_seconds())}) from None
        finally:
            self.waiting -= 1
            self._set_idle_if_empty()
        record.admitted = time.monotonic()
        return Slot(self)

    def _release(self) -> None:
        self.running -= 1
        self._slots.release()
        self._set_idle_if_empty()

    def _set_idle_if_empty(self) -> None:
        # Idle means nothing running *and* nothing queued: a queued request takes a freed slot.
        if self.running == 0 and self.waiting == 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def run(self, source: StreamSource, request: GenerationRequest,
                  record: RequestRecord) -> AsyncIterator[TokenDelta]:
        """The request's deltas under its deadline; leaving early (any reason) aborts the engine request."""
        deadline = record.arrived + self._config.connection_timeout_seconds
        queue: asyncio.Queue[object] = asyncio.Queue()
        pump = asyncio.create_task(self._pump(source, request, queue))
        finished_normally = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(queue.get(), max(remaining, 0))
                except TimeoutError:
                    record.outcome = "timeout"
                    raise RequestTimeoutError(
                        f"request exceeded connection_timeout_seconds={self._config.connection_timeout_seconds:g}"
                    ) from None
                if item is _END:
                    finished_normally = True
                    return
                if isinstance(item, BaseException):
                    record.outcome = "error"
                    raise item
                assert isinstance(item, TokenDelta)
                self._account(record, item)
                yield item
                if item.finish_reason is not None:
                    finished_normally = True
                    return
        finally:
            pump.cancel()
            if not finished_normally:
                if record.outcome == "running":
                    record.outcome = "disconnected"
                await asyncio.shield(self._abort_quietly(request.request_id))

    @staticmethod
    async def _pump(source: StreamSource, request: GenerationRequest, queue: asyncio.Queue[object]) -> None:
        try:
            async for delta in source.stream(request):
                queue.put_nowait(delta)
            queue.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait(exc)

    async def _abort_quietly(self, request_id: str) -> None:
        with contextlib.suppress(Exception):
            result = self._abort(request_id)
            if asyncio.iscoroutine(result):
                await result

    @staticmethod
    def _account(record: RequestRecord, delta: TokenDelta) -> None:
        now = time.monotonic()
        new_tokens = delta.completion_tokens - record.completion_tokens
        if new_tokens > 0:
            if record.first_token is None:
                record.first_token = now
                new_tokens -= 1
            elif record.last_token is not None:
                # Tokens that arrive together share the gap, as vLLM's inter-token latency does.
                record.inter_token_gaps.extend([(now - record.last_token) / new_tokens] * new_tokens)
                new_tokens = 0
            record.last_token = now
        record.prompt_tokens = delta.prompt_tokens
        record.completion_tokens = delta.completion_tokens
        if delta.finish_reason is not None:
            record.finish_reason = delta.finish_reason

    def finish(self, record: RequestRecord, outcome: str | None = None, status: int | None = None) -> None:
        """Close the record (once) and tell the observers."""
        if record.finished is not None:
            return
        record.finished = time.monotonic()
        if status is not None:
            record.status = status
        if outcome is not None:
            record.outcome = outcome
        elif record.outcome == "running":
            record.outcome = "ok"
        if record.outcome == "ok" and record.e2e is not None and record.admitted is not None:
            self._recent_e2e = 0.8 * self._recent_e2e + 0.2 * record.e2e
        for observer in self._observers:
            observer.on_finished(record)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for the running ones; True if all finished in time."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
