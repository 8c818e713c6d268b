"""Admission, queueing, deadlines, cancellation, drain and the model's life, for interactive requests.

- One gate for every request: loading, draining or failed refuse with 503 before any work.
- Cheap refusals come first: a full queue is refused before the prompt is tokenized, and tokenizing
  runs on the tokenizer's own thread (one at a time), so a huge prompt never stalls the event loop
  and every stream on it. A request holds its queue places while its prompt is tokenized (`preparing`).
- A key's own limits (orchestration/quotas.py): its concurrency and requests per minute before the
  prompt is tokenized, its tokens per minute once it is; 429 `rate_limit_exceeded` before the request
  waits or reaches the engine.
- Capacity is counted in sequences, not requests: a request with `n` choices takes n slots. At most
  `concurrent_users` sequences generate; up to `max_queue_size` more wait, interactive keys' requests
  before batch keys' and each class in arrival order. A request with more choices than there are slots
  could never run: 400 at once. A full queue makes room for an interactive request by refusing the
  newest waiting batch request.
- A full queue is refused at once with 429 + Retry-After (the caller has not sent a byte yet, so
  a streaming client gets a plain HTTP error, never an error inside a 200 stream).
- A request that waits `queue_timeout_seconds` without a slot gets 503 (the server, not the client,
  is behind), also with Retry-After.
- `connection_timeout_seconds` bounds a request from arrival to its last token (see Generation).
- Records are opened by the routes and closed here, once, by the API's lifecycle middleware; the
  observers (metrics, request log, streaming window) hear about each closed record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from hxp_enterprise_llm.orchestration.admission import Displaced, PrioritySlots, Waiter
from hxp_enterprise_llm.orchestration.generation import Generation
from hxp_enterprise_llm.orchestration.key_policy import KeyPolicy
from hxp_enterprise_llm.orchestration.quotas import Quotas
from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.orchestration.service_state import Health, ServiceState
from hxp_enterprise_llm.schemas.configuration.model_schemas import ModelConfigSchema
from hxp_enterprise_llm.schemas.errors import (
    DrainingError,
    EngineUnavailableError,
    InvalidRequestError,
    QueueFullError,
    QueueTimeoutError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from hxp_enterprise_llm.schemas.outcomes import Outcome
from hxp_enterprise_llm.services.ai_models.openchat_3_5.service import OpenChat35Service
from hxp_enterprise_llm.services.core.engine import GenerationRequest

logger = logging.getLogger(__name__)
T = TypeVar("T")

# After the drain deadline, how long stopped requests get to send their last frames before the exit.
STOPPED_REQUESTS_GRACE_SECONDS = 5.0


class RequestObserver(Protocol):
    def on_finished(self, record: RequestRecord) -> None: ...


class RequestTracer(Protocol):
    def start(self, record: RequestRecord) -> Mapping[str, str]:
        """Open the request's trace; the W3C headers the engine's own spans join."""


class Slot:
    """A request's held admission slots (one per sequence); `release` is idempotent so every exit path may call it."""

    def __init__(self, orchestrator: InteractiveOrchestrator, sequences: int) -> None:
        self._orchestrator: InteractiveOrchestrator | None = orchestrator
        self._sequences = sequences

    def release(self) -> None:
        orchestrator, self._orchestrator = self._orchestrator, None
        if orchestrator is not None:
            orchestrator._release(self._sequences)


class InteractiveOrchestrator:
    def __init__(self, config: ModelConfigSchema, service: OpenChat35Service,
                 observers: list[RequestObserver] | None = None, health: Health | None = None,
                 quotas: Quotas | None = None, tracer: RequestTracer | None = None) -> None:
        self._config = config
        self.service = service
        self.health = health or Health()
        self.quotas = quotas or Quotas()
        self.tracer = tracer
        # The quotas settle first: a key's next request must see this one's completion charged.
        self._observers = [self.quotas, *(observers or [])]
        self._slots = PrioritySlots(config.concurrent_users)
        self.waiting = 0  # sequences queued for slots (a request with n choices counts n)
        self.preparing = 0  # sequences whose prompts are being tokenized: they hold queue places (bursts)
        self._drain_expired = False  # past the drain's deadline: requests not yet generating never start
        self._open: set[RequestRecord] = set()
        self._generations: set[Generation] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._recent_e2e = 1.0  # seconds, exponentially averaged, for Retry-After
        # One thread: Hugging Face tokenizers are not safe to call from several threads at once (vLLM
        # also tokenizes on a single worker).
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hxp-tokenizer")

    @property
    def running(self) -> int:
        """Sequences holding a slot (a request with n choices counts n)."""
        return self._slots.held

    @property
    def active_streams(self) -> int:
        return sum(1 for record in self._open if record.stream and record.admitted is not None)

    # --- one request

    def open(self, request_id: str, route: str, client: str = "") -> RequestRecord:
        record = RequestRecord(request_id=request_id, route=route, client=client)
        self._open.add(record)
        return record

    async def admit(self, record: RequestRecord, prepare: Callable[[], GenerationRequest]) -> GenerationRequest:
        """Gate, the key's request limits, queue room, prepare off the event loop (tokenize, check the context:
        400s), the key's token limit, then wait for `record.choices` slots; all within the request's deadline.
        Raises when refused."""
        rank = record.key.priority.rank
        sequences = record.choices
        self._check_accepting()
        if sequences > self._config.concurrent_users:
            most = min(self._config.concurrent_users, self._config.max_n)
            raise InvalidRequestError(
                f"n: {sequences} choices need {sequences} generation slots and this service has "
                f"concurrent_users={self._config.concurrent_users}; ask for at most {most}",
                param="n", code="too_many_choices")
        self.quotas.reserve(record)  # a key over its request limits takes no tokenizer time nor queue place
        try:
            return await self._admit_reserved(record, prepare, rank, sequences)
        except BaseException:
            self.quotas.cancel(record)  # refused before admission: given back before the answer reports it
            raise

    async def _admit_reserved(self, record: RequestRecord, prepare: Callable[[], GenerationRequest], rank: int,
                              sequences: int) -> GenerationRequest:
        claimed = self.check_room(rank, sequences)
        with self._preparing(sequences):
            try:
                prepared = await self._prepare_within_deadline(record, prepare)
                generation_request = dataclasses.replace(prepared, priority=rank)
                self.quotas.charge_prompt(record, len(generation_request.prompt_token_ids))
                if self.tracer is not None:
                    generation_request = dataclasses.replace(generation_request,
                                                             trace_headers=self.tracer.start(record))
                if self._drain_expired:
                    raise self._too_late_to_start()
            except BaseException:
                self._slots.unclaim(claimed)
                raise
        self._slots.displace(claimed)  # its own checks passed: it takes their places now
        self.waiting += sequences  # no await since the prompt was ready: the queue places pass on unbroken
        self._idle.clear()
        queue_timeout = self._config.queue_timeout_seconds
        remaining = self.deadline(record) - time.monotonic()
        try:
            if remaining <= 0:  # the tokenizer took what was left: no slot, even a free one
                raise TimeoutError
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the wait in a task of its own and
            # returns its result when the client's cancel lands in the pass the slot was granted in, so a
            # client that had left was admitted (and its key charged) all the same.
            async with asyncio.timeout(min(queue_timeout, remaining)):
                await self._slots.acquire(rank, sequences)
        except TimeoutError:
            if remaining < queue_timeout:  # the request's own deadline came first: no slot for it
                raise self._timed_out() from None
            # Its own sequences are still counted in `waiting` here: add none on top.
            raise QueueTimeoutError(
                f"no slot became free within queue_timeout_seconds={self._config.queue_timeout_seconds:g}",
                headers={"Retry-After": str(self.retry_after_seconds(0))}) from None
        except Displaced:
            raise self._queue_full(sequences, " (this request gave its place to an interactive one)") from None
        finally:
            self.waiting -= sequences
            self._set_idle_if_empty()
        if self._drain_expired:  # granted a slot that the drain's stopped generations freed
            self._release(sequences)  # and idle again if it was the last: the drain waits for that
            raise self._too_late_to_start()
        record.slot = Slot(self, sequences)
        record.admitted = time.monotonic()
        record.engine_request_id = generation_request.request_id
        # The engine processes the prompt from here, whether or not a token follows (a client that leaves,
        # or a deadline, during prefill): the usage log and the token counters say so, as the quota did.
        record.prompt_tokens = len(generation_request.prompt_token_ids)
        return generation_request

    async def _prepare_within_deadline(self, record: RequestRecord,
                                       prepare: Callable[[], GenerationRequest]) -> GenerationRequest:
        """`prepare` on the tokenizer's thread, given up at the request's deadline: a prompt still waiting
        for the thread is dropped from its queue, and the request answers 504 without a slot."""
        try:
            remaining = self.deadline(record) - time.monotonic()
            if remaining <= 0:  # no tokenizer work for a request already past its deadline
                raise TimeoutError
            async with asyncio.timeout(remaining):  # not wait_for: see the slot wait
                return await self.tokenize(prepare)
        except TimeoutError:
            raise self._timed_out() from None

    def _timed_out(self) -> RequestTimeoutError:
        return RequestTimeoutError.after(self._config.connection_timeout_seconds)

    def check_room(self, rank: int | None = None, sequences: int = 1) -> list[Waiter]:
        """The cheap refusal, before any work, once the service is known to accept (`_check_accepting`): no
        slot and no queue place for `sequences` (429). A request of `rank` may instead claim the places of
        worse-ranked waiting ones: returned, to be displaced once its own checks have passed (`admit`)."""
        # Prompts still in the tokenizer count: they take the free slots first, then queue places (a burst
        # on an idle service must not all pass because a slot was free when each arrived).
        must_wait = (self.waiting - self._slots.claimed_places()
                     + max(0, self.preparing + sequences - self._slots.free_now()))
        over = must_wait - self._config.max_queue_size
        if over <= 0:
            return []
        claimed = None if rank is None else self._slots.claim(rank, over)
        if claimed is None:
            raise self._queue_full(sequences)
        return claimed

    def _queue_full(self, sequences: int, why: str = "") -> QueueFullError:
        return QueueFullError(
            f"{self._config.concurrent_users - self.running} of {self._config.concurrent_users} slots are "
            f"free, this request needs {sequences}, and {self.waiting + self.preparing} sequences are ahead "
            f"of it (queued, or their prompts being tokenized; max_queue_size={self._config.max_queue_size} "
            f"beyond the slots; a request with n choices counts n){why}; retry after the Retry-After delay",
            headers={"Retry-After": str(self.retry_after_seconds(sequences))})

    async def tokenize_for_client(self, policy: KeyPolicy, work: Callable[[], T]) -> T:
        """/tokenize and /detokenize: refused when the key is at its limits or there is no room, like a
        generation, and holding a queue place while on the tokenizer's thread (no slot), so that a flood of
        them cannot pile up without bound ahead of the chat prompts that share the thread."""
        self._check_accepting()
        with self.quotas.holding(policy):
            self.check_room()
            with self._preparing(1):
                return await self.tokenize(work)

    @contextlib.contextmanager
    def _preparing(self, sequences: int) -> Iterator[None]:
        """`sequences` queue places held while a prompt is being tokenized (counted in `preparing`)."""
        self.preparing += sequences
        self._idle.clear()
        try:
            yield
        finally:
            self.preparing -= sequences
            self._set_idle_if_empty()

    async def tokenize(self, work: Callable[[], T]) -> T:
        """Tokenizer work (building a prompt, /tokenize, /detokenize) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, work)

    def shutdown(self) -> None:
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _too_late_to_start() -> DrainingError:
        return DrainingError("the service is shutting down and drain_timeout_seconds passed before this request "
                             "started; retry on another replica", headers={"Retry-After": "5"})

    def _check_accepting(self) -> None:
        state, detail = self.health.state, self.health.detail
        if state is ServiceState.READY:
            return
        if state is ServiceState.DRAINING:
            raise DrainingError("the service is shutting down; retry on another replica",
                                headers={"Retry-After": "5"})
        if state is ServiceState.FAILED:
            raise EngineUnavailableError(f"the inference engine failed ({detail}); the service is restarting",
                                         headers={"Retry-After": "10"})
        raise ServiceUnavailableError(f"the model is not ready: {state.value} ({detail})",
                                      headers={"Retry-After": "5"})

    @property
    def timeout_seconds(self) -> float:
        return self._config.connection_timeout_seconds

    def deadline(self, record: RequestRecord) -> float:
        """When the request must be over (time.monotonic()): its last token, and every send to its client."""
        return record.arrived + self._config.connection_timeout_seconds

    def generate(self, record: RequestRecord, request: GenerationRequest) -> Generation:
        """The admitted request's deltas; the caller must `aclose()` it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline(record) - time.monotonic()
        return Generation(
            self.service.stream(request), record, deadline=deadline,
            timeout_seconds=self._config.connection_timeout_seconds,
            abort=lambda: self.service.engine.abort(request.request_id),
            on_engine_dead=self.engine_failed, live=self._generations)

    def close(self, record: RequestRecord, status: int | None) -> None:
        """The one place a request ends: stamp it, free its slot, tell the observers."""
        if record not in self._open:
            return
        self._open.discard(record)
        record.close(status)
        if record.outcome is Outcome.OK and record.e2e is not None:
            self._recent_e2e = 0.8 * self._recent_e2e + 0.2 * record.e2e
        for observer in self._observers:
            try:
                observer.on_finished(record)
            except Exception:  # an observer's bug must not turn a served request into an error
                logger.exception("request observer %r failed", observer)

    # --- capacity

    def retry_after_seconds(self, sequences: int = 1) -> int:
        """Rounds of recent latency until the slots free up for what waits and for these `sequences`."""
        backlog = (self.waiting + sequences) / max(self._config.concurrent_users, 1)
        return max(1, math.ceil(self._recent_e2e * backlog))

    def _release(self, sequences: int) -> None:
        self._slots.release(sequences)
        self._set_idle_if_empty()

    def _set_idle_if_empty(self) -> None:
        # Idle means nothing running *and* nothing queued: a queued request takes a freed slot.
        if self.running == 0 and self.waiting == 0 and self.preparing == 0:
            self._idle.set()
        else:
            self._idle.clear()

    # --- the service's life

    async def load_model(self, timeout: float) -> bool:
        """Start the engine; READY on success, FAILED (and False) if it fails or takes longer than `timeout`."""
        started = time.monotonic()
        self.health.set(ServiceState.LOADING, f"loading {self._config.model_path}")
        try:
            await asyncio.wait_for(self.service.start(on_death=self.engine_failed), timeout)
        except TimeoutError:
            self.engine_failed(f"model not loaded within model_load_timeout_seconds={timeout:g}")
            return False
        except Exception as exc:
            self.engine_failed(f"model failed to load: {exc or type(exc).__name__}")
            return False
        self.health.model_load_seconds = time.monotonic() - started
        self.health.set(ServiceState.READY, f"model loaded in {self.health.model_load_seconds:.1f} s")
        return True

    async def watch_engine(self, interval: float) -> None:
        """Ask the engine every `interval` seconds whether it can serve; a failed check is final."""
        while self.health.state is not ServiceState.FAILED:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.service.engine.check_health(), timeout=max(interval, 5.0))
            except Exception as exc:  # dead, or too slow to answer: both mean it cannot serve
                self.engine_failed(f"engine health check failed: {exc or type(exc).__name__}")

    def engine_failed(self, detail: str) -> None:
        """Every request from now on gets 503 engine_failed; the listeners end the process."""
        if self.health.state is not ServiceState.FAILED:
            logger.error("engine failed: %s", detail)
        self.health.set(ServiceState.FAILED, detail)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests, let running and queued ones finish; after `timeout`, stop the rest.

        True if everything finished in time. Stopped generations end with an honest error
        (`generation_aborted`), never as a complete answer; requests not yet generating (queued, or
        their prompts being tokenized) get 503 `draining` before any byte, which a balancer can retry.
        """
        self.health.set(ServiceState.DRAINING, "shutting down: finishing running requests")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            logger.warning("drain_timeout_seconds=%g passed with %d running and %d waiting; stopping them",
                           timeout, self.running, self.waiting)
            # Stopping the running generations frees their slots: the queue must not start on them.
            self._drain_expired = True
            self._slots.refuse_waiting(self._too_late_to_start)
            for generation in list(self._generations):
                generation.stop_for_shutdown()
            # Stopped streams still send their error frame and [DONE]; give them a moment to.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), STOPPED_REQUESTS_GRACE_SECONDS)
            return False

