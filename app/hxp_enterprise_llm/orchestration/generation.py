"""`Generation`: the deltas of one admitted request, read one at a time under the request's deadline.

Nothing sits between the engine and the socket while a reader simply waits for the next delta: it
awaits the engine's iterator itself, and one timer per generation (armed at the first read, not one
per token) cancels that read at the request's deadline. A reader that waits with a short timeout
(the streamer's flush budget, while text is pending) reads through a task instead, which may outlive
the wait: the read stays pending meanwhile, and the next call picks it up. Whatever ends the generation
early (deadline, client gone, drain deadline, an error) aborts the engine request at once, so its
slot and KV cache are freed; engine failures become the service's errors, recorded on the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.errors import (
    EngineUnavailableError,
    GenerationAbortedError,
    InternalError,
    RequestTimeoutError,
    ServiceError,
)
from hxp_enterprise_llm.schemas.outcomes import FinishReason
from hxp_enterprise_llm.services.core.engine import EngineDeadError, TokenDelta

logger = logging.getLogger(__name__)


class Generation:
    def __init__(self, deltas: AsyncIterator[TokenDelta], record: RequestRecord, *, deadline: float,
                 timeout_seconds: float, abort: Callable[[], Awaitable[object]],
                 on_engine_dead: Callable[[str], object], live: set[Generation]) -> None:
        self._deltas = deltas
        self._record = record
        self._deadline = deadline  # event-loop time
        self._timeout_seconds = timeout_seconds
        self._abort = abort
        self._on_engine_dead = on_engine_dead
        # The orchestrator's running generations, which a drain deadline stops: from the start, not the first
        # read, which the route makes a loop pass or two later (a drain expiring between would miss it).
        self._live = live
        self._pending: asyncio.Task[TokenDelta] | None = None
        self._reader: asyncio.Task[object] | None = None  # the task awaiting the iterator directly, if one is
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._finished = False
        self._stopped_by_service = False
        live.add(self)

    @property
    def record(self) -> RequestRecord:
        return self._record

    async def next(self, wait: float | None = None) -> TokenDelta | None:
        """The next delta; None if `wait` seconds pass first (the read stays pending).

        Raises StopAsyncIteration after the last delta, or a ServiceError (also recorded on the
        request) on the deadline, an engine failure, or a generation the service had to abort.
        """
        if self._stopped_by_service:
            raise self._aborted()
        if self._finished:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        if self._deadline_timer is None:
            self._deadline_timer = loop.call_at(self._deadline, self._on_deadline)
        if self._expired:
            raise self._timed_out()
        if self._pending is None and wait is None:
            delta = await self._read_directly()
        else:
            if self._pending is None:
                self._pending = asyncio.ensure_future(anext(self._deltas))
            remaining = self._deadline - loop.time()
            timeout = remaining if wait is None else min(wait, remaining)
            done, _ = await asyncio.wait({self._pending}, timeout=max(timeout, 0.0))
            if not done:
                if loop.time() < self._deadline:
                    return None
                raise self._timed_out()
            task, self._pending = self._pending, None
            delta = self._delta_of(task)
        self._record.observe(delta)
        if delta.finish_reason is FinishReason.ABORT:
            raise self._aborted()
        if self._record.finish_reason is not None:  # every choice has ended
            self._finished = True
        return delta

    async def _read_directly(self) -> TokenDelta:
        """The next delta read in the reader's own task: no task, no timer per token."""
        self._reader = asyncio.current_task()
        try:
            return await anext(self._deltas)
        except asyncio.CancelledError:
            reader = self._reader
            if not (self._expired or self._stopped_by_service) or reader is None:
                raise  # the reader itself was cancelled (e.g. the client left): not ours to absorb
            reader.uncancel()  # our own cancel (deadline, shutdown) ends here as the service's error
            if self._stopped_by_service:
                raise self._aborted() from None
            raise self._timed_out() from None
        except BaseException as exc:
            raise self._translated(exc) from None
        finally:
            self._reader = None

    def _on_deadline(self) -> None:
        """The request's deadline: a direct read is cancelled now; a read through a task times out by itself."""
        self._expired = True
        if self._reader is not None:
            self._reader.cancel()

    def _timed_out(self) -> ServiceError:
        return self._failed(RequestTimeoutError.after(self._timeout_seconds))

    def _delta_of(self, task: asyncio.Task[TokenDelta]) -> TokenDelta:
        """The finished read's delta; how it failed, as the service's error (recorded on the request)."""
        try:
            return task.result()
        except asyncio.CancelledError:
            if not self._stopped_by_service:
                raise
            raise self._aborted() from None
        except BaseException as exc:
            raise self._translated(exc) from None

    def _translated(self, exc: BaseException) -> BaseException:
        """How a read failed, as what the reader raises: the end, or the service's error (recorded)."""
        if isinstance(exc, StopAsyncIteration):
            self._finished = True
            if self._record.finish_reason is None:  # every engine ends with a finish reason; say so if not
                return self._failed(InternalError("the engine ended the answer without a finish reason"))
            return exc
        if isinstance(exc, EngineDeadError):
            self._on_engine_dead(str(exc))
            return self._failed(EngineUnavailableError(
                "the inference engine failed; the service is restarting, retry shortly",
                headers={"Retry-After": "10"}))
        if isinstance(exc, ServiceError):
            return self._failed(exc)
        if not isinstance(exc, Exception):
            return exc  # KeyboardInterrupt, SystemExit, a cancellation: not the request's failure
        logger.exception("generation of request %s failed", self._record.request_id, exc_info=exc)
        return self._failed(InternalError(
            f"generation failed ({type(exc).__name__}); see the service log for request "
            f"{self._record.request_id}"))

    def stop_for_shutdown(self) -> None:
        """The drain deadline passed: stop now; the reader's next step raises GenerationAbortedError."""
        self._stopped_by_service = True
        if self._pending is not None:
            self._pending.cancel()  # wakes a reader waiting for it; cancelling also aborts in vLLM
        if self._reader is not None:
            self._reader.cancel()  # a direct read: the same, in the reader's task (it absorbs this cancel)

    def _aborted(self) -> ServiceError:
        self._record.mark_aborted()
        return self._failed(GenerationAbortedError(
            "the service stopped this generation before it finished (shutting down); the answer is "
            "incomplete: retry on another replica", headers={"Retry-After": "5"}))

    def _failed(self, error: ServiceError) -> ServiceError:
        self._finished = True
        self._record.fail(error)
        return error

    async def aclose(self) -> None:
        """End the generation; aborts the engine request unless the model finished it."""
        self._live.discard(self)
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        pending, self._pending = self._pending, None
        if pending is not None and pending.done() and not pending.cancelled() and pending.exception() is None:
            # A read that finished while the reader was away (sending a flush frame, say): its tokens
            # were generated, and it may be the model's last; count them before deciding to abort.
            self._record.observe(pending.result())
        elif pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        model_finished = self._record.finish_reason is not None and self._record.finish_reason.complete
        if not model_finished:
            await asyncio.shield(self._abort_quietly())
        with contextlib.suppress(BaseException):
            await self._deltas.aclose()  # type: ignore[attr-defined]

    async def _abort_quietly(self) -> None:
        try:
            await self._abort()
        except Exception:  # the engine may already be gone; the request is over either way
            logger.debug("abort of %s failed", self._record.request_id, exc_info=True)
