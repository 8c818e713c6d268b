"""`Generation`: the deltas of one admitted request, read one at a time under the request's deadline.

At most one task sits between the engine and the socket: the pending read of the next delta. A
reader may wait for it with a short timeout (the streamer's flush budget) and come back later; the
read stays pending meanwhile. The request's deadline bounds every wait. Whatever ends the generation
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
        self._live = live  # the orchestrator's running generations, which a drain deadline stops
        self._pending: asyncio.Task[TokenDelta] | None = None
        self._finished = False
        self._stopped_by_service = False

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
        if self._pending is None:
            self._live.add(self)
            self._pending = asyncio.ensure_future(anext(self._deltas))
        remaining = self._deadline - loop.time()
        timeout = remaining if wait is None else min(wait, remaining)
        done, _ = await asyncio.wait({self._pending}, timeout=max(timeout, 0.0))
        if not done:
            if loop.time() < self._deadline:
                return None
            raise self._failed(RequestTimeoutError(
                f"request exceeded connection_timeout_seconds={self._timeout_seconds:g}"))
        task, self._pending = self._pending, None
        delta = self._delta_of(task)
        self._record.observe(delta)
        if delta.finish_reason is FinishReason.ABORT:
            raise self._aborted()
        if self._record.finish_reason is not None:  # every choice has ended
            self._finished = True
        return delta

    def _delta_of(self, task: asyncio.Task[TokenDelta]) -> TokenDelta:
        """The finished read's delta; how it failed, as the service's error (recorded on the request)."""
        try:
            return task.result()
        except asyncio.CancelledError:
            if not self._stopped_by_service:
                raise
            raise self._aborted() from None
        except StopAsyncIteration:
            self._finished = True
            if self._record.finish_reason is None:  # every engine ends with a finish reason; say so if not
                raise self._failed(InternalError("the engine ended the answer without a finish reason")) from None
            raise
        except EngineDeadError as exc:
            self._on_engine_dead(str(exc))
            raise self._failed(EngineUnavailableError(
                "the inference engine failed; the service is restarting, retry shortly",
                headers={"Retry-After": "10"})) from None
        except ServiceError as exc:
            raise self._failed(exc) from None
        except Exception as exc:
            logger.exception("generation of request %s failed", self._record.request_id)
            raise self._failed(InternalError(
                f"generation failed ({type(exc).__name__}); see the service log for request "
                f"{self._record.request_id}")) from None

    def stop_for_shutdown(self) -> None:
        """The drain deadline passed: stop now; the reader's next step raises GenerationAbortedError."""
        self._stopped_by_service = True
        if self._pending is not None:
            self._pending.cancel()  # wakes a reader waiting for it; cancelling also aborts in vLLM

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
        pending, self._pending = self._pending, None
        if pending is not None:
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
