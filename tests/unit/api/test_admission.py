"""Admission control, timeouts, cancellation on disconnect, and drain, on a FakeEngine held by the test.

A FakeEngine with a long token_delay keeps a request running until the test lets it finish
(`served.release(id)`); no test depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest
from api_harness import (
    STATE_WAIT_SECONDS,
    RawExchange,
    Served,
    assert_openai_error,
    chat_body,
    eventually,
    sse_chunks,
    sse_events,
)

from hxp_enterprise_llm.orchestration.service_state import ServiceState
from hxp_enterprise_llm.schemas.errors import DrainingError, GenerationAbortedError, RequestTimeoutError
from hxp_enterprise_llm.services.core.engine import GenerationRequest, SamplingOptions
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HOLD = 30.0  # token_delay that keeps a request generating until the test releases it


def one_slot_one_queue(**settings: object) -> dict[str, object]:
    return {"concurrent_users": 1, "max_queue_size": 1, **settings}


async def hold(served: Served, request_id: str, **fields: object) -> asyncio.Task:
    """Send a request in the background; it takes the free slot or a queue place."""
    return asyncio.create_task(served.chat(chat_body(**fields), headers={"X-Request-ID": request_id}))


@pytest.mark.parametrize("stream", [False, True])
async def test_full_queue_is_429_with_retry_after_before_any_sse(serve_app, stream: bool) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        running = await hold(served, "running")
        await served.started("running")
        queued = await hold(served, "queued")
        await eventually(lambda: served.ctx.orchestrator.waiting == 1, "second request queued")

        refused = await served.chat(chat_body(stream=stream), headers={"X-Request-ID": "refused"})

        await served.release("running")
        await served.release("queued")
        assert (await running).status_code == 200
        assert (await queued).status_code == 200

    assert_openai_error(refused, 429, code="queue_full")
    # No answer had finished: latency estimate still its starting 1 s; 1 queued + itself on 1 slot: 2 rounds.
    assert refused.headers["retry-after"] == "2"
    assert "text/event-stream" not in refused.headers["content-type"]
    assert b"data:" not in refused.content
    assert served.engine_id("refused") is None  # never admitted: no engine request


async def test_retry_after_follows_how_long_recent_answers_took(serve_app) -> None:
    # The estimate starts at 1 s a round and moves a fifth of the way to each finished answer's time.
    # A held answer released at once (~0 s) brings it to ~0.8 s; two of 3 tokens at 0.5 s each (>= 1.5 s)
    # to >= 0.8 x (0.8 x 0.8 + 0.2 x 1.5) + 0.2 x 1.5 = 1.05 s: one round to wait is then 2 s, not 1.
    async with serve_app(FakeEngine(token_delay=0.5), concurrent_users=1, max_queue_size=0) as served:
        refusals = []
        for round_, timed_answers in enumerate((2, 0)):
            served.engine.enqueue(*"held", hold_after=0)
            running = await hold(served, f"running-{round_}")
            await served.started(f"running-{round_}")
            refusals.append(await served.chat())
            await served.release(f"running-{round_}")
            assert (await running).status_code == 200
            for _ in range(timed_answers):
                served.engine.enqueue(*"abc")
                assert (await served.chat()).status_code == 200
    for refused in refusals:
        assert_openai_error(refused, 429, code="queue_full")
    assert refusals[0].headers["retry-after"] == "1"
    assert int(refusals[1].headers["retry-after"]) >= 2


async def test_a_freed_slot_admits_the_queued_request(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        first = await hold(served, "first")
        await served.started("first")
        second = await hold(served, "second")
        await eventually(lambda: served.ctx.orchestrator.waiting == 1, "second queued")
        assert served.engine_id("second") is None  # never admitted: no engine request
        await served.release("first")
        await served.started("second")  # admitted once the first finished
        assert served.ctx.orchestrator.waiting == 0
        await served.release("second")
        assert [(await t).status_code for t in (first, second)] == [200, 200]


async def test_queue_timeout_is_503_with_retry_after(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue(queue_timeout_seconds=0.05)) as served:
        running = await hold(served, "running")
        await served.started("running")
        waited = await served.chat(chat_body(stream=True))
        assert served.ctx.orchestrator.waiting == 0
        await served.release("running")
        await running
    assert_openai_error(waited, 503, code="queue_timeout")
    # No answer had finished: 1 s estimate; the only one waiting was itself, on 1 slot: 1 round.
    assert waited.headers["retry-after"] == "1"
    assert "text/event-stream" not in waited.headers["content-type"]


async def test_request_timeout_is_504_and_aborts_the_engine_request(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), connection_timeout_seconds=0.05) as served:
        response = await served.chat(chat_body(), headers={"X-Request-ID": "slow-plain"})
        assert served.ctx.orchestrator.running == 0
    assert_openai_error(response, 504, code="request_timeout")
    assert served.engine_id("slow-plain") in served.engine.aborted


@pytest.mark.parametrize("left", [0.1, -1.0], ids=["passes-while-queued", "passed-before-the-tokenizer"])
async def test_a_request_whose_deadline_passes_before_admission_is_504_and_never_reaches_the_engine(
        serve_app, left: float) -> None:
    """connection_timeout_seconds bounds the request from its arrival: the tokenizer's queue and the slot wait
    count. Before, such a request waited out queue_timeout_seconds (a 503 at 30 s here), or took a slot and
    went to the engine only to be cut there by a deadline already past."""
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=1, max_queue_size=1,
                         queue_timeout_seconds=HOLD, connection_timeout_seconds=HOLD) as served:
        orchestrator = served.ctx.orchestrator
        running = None
        if left > 0:  # the only slot is taken: the late request must queue
            running = await hold(served, "running")
            await served.started("running")
        late = orchestrator.open("late", "chat")
        late.arrived -= HOLD - left  # as if it had arrived that long ago (waiting on a loaded tokenizer)
        with pytest.raises(RequestTimeoutError, match=f"connection_timeout_seconds={HOLD:g}"):
            await orchestrator.admit(late, lambda: GenerationRequest("late", [1, 2, 3], SamplingOptions(4)))
        assert (late.slot, late.admitted, orchestrator.waiting, orchestrator.preparing) == (None, None, 0, 0)
        orchestrator.close(late, 504)
        if running is not None:
            await served.release("running")
            assert (await running).status_code == 200
    assert [r.request_id for r in served.engine.requests] == ([served.engine_id("running")] if running else [])


async def test_stream_timeout_before_the_first_token_is_a_plain_504(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), connection_timeout_seconds=0.05) as served:
        response = await served.chat(chat_body(stream=True), headers={"X-Request-ID": "slow-start"})
        assert served.ctx.orchestrator.running == 0
    # No byte had been sent: the client gets an HTTP error, not a 200 stream with an error inside.
    assert_openai_error(response, 504, code="request_timeout")
    assert served.engine_id("slow-start") in served.engine.aborted


async def test_stream_timeout_mid_answer_is_an_error_frame_then_done(serve_app) -> None:
    async with serve_app(connection_timeout_seconds=0.2) as served:
        served.engine.enqueue(*"first then held", hold_after=1)
        response = await served.chat(chat_body(stream=True), headers={"X-Request-ID": "slow-stream"})
        assert served.ctx.orchestrator.running == 0
    assert response.status_code == 200  # the stream had started: the error travels inside it
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "request_timeout"
    assert set(error) == {"message", "type", "param", "code"}
    assert "f" in "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert served.engine_id("slow-stream") in served.engine.aborted


@pytest.mark.parametrize("stream", [True, False])
async def test_client_gone_mid_answer_aborts_and_frees_the_slot(serve_app, stream: bool) -> None:
    async with serve_app(FakeEngine(token_delay=0.005), response_chunk_size=1) as served:
        served.engine.enqueue(*("x" * 5000))
        exchange = RawExchange(served.app, chat_body(stream=stream, max_tokens=4000), request_id="leaver").start()
        await served.started("leaver")
        if stream:
            await eventually(lambda: b'"content":"x' in exchange.body, "some content streamed")
        await eventually(lambda: served.ctx.orchestrator.running == 1, "request running")

        exchange.hang_up.set()

        await eventually(lambda: served.engine_id("leaver") in served.engine.aborted, "engine request aborted")
        await eventually(lambda: served.ctx.orchestrator.running == 0, "slot released")
        await exchange.finished()
        assert served.engine.running_requests == 0
        assert (await served.chat(chat_body())).status_code == 200  # the service still serves


@pytest.mark.parametrize("stream", [True, False])
async def test_queued_client_gone_frees_its_queue_place(serve_app, stream: bool) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        running = await hold(served, "running")
        await served.started("running")
        leaver = RawExchange(served.app, chat_body(stream=stream), request_id="queued-leaver").start()
        await eventually(lambda: served.ctx.orchestrator.waiting == 1, "request queued")

        leaver.hang_up.set()
        await eventually(lambda: served.ctx.orchestrator.waiting == 0, "queue place freed")
        await leaver.finished()

        # The place is free again: another request queues instead of getting 429.
        next_in_line = await hold(served, "next")
        await eventually(lambda: served.ctx.orchestrator.waiting == 1, "next request queued")
        await served.release("running")
        await served.release("next")
        assert [(await t).status_code for t in (running, next_in_line)] == [200, 200]
    assert served.engine_id("queued-leaver") is None  # never admitted: no engine request
    assert leaver.status != 200


async def test_drain_refuses_new_requests_and_lets_running_ones_finish(serve_app) -> None:
    async with serve_app() as served:
        served.engine.enqueue(*"finishing")
        # A client that is not reading yet keeps its stream (and its slot) open until the gate opens.
        running = RawExchange(served.app, chat_body(stream=True, max_tokens=50), request_id="running")
        running.gate.clear()
        running.start()
        await eventually(lambda: served.ctx.orchestrator.running == 1, "stream holding its slot")

        drain = asyncio.create_task(served.ctx.orchestrator.drain(timeout=30))
        await eventually(lambda: served.ctx.health.state is ServiceState.DRAINING, "draining")
        refused = await served.chat(chat_body())
        refused_stream = await served.chat(chat_body(stream=True))
        assert not drain.done()

        running.gate.set()
        await running.finished()
        assert await asyncio.wait_for(drain, 10) is True

    assert_openai_error(refused, 503, code="draining")
    assert refused.headers["retry-after"] == "5"  # a drain: try another replica soon
    assert_openai_error(refused_stream, 503, code="draining")
    assert running.status == 200
    chunks = sse_chunks(running.text)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "finishing"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_drain_waits_for_queued_requests_too(serve_app) -> None:
    async with serve_app(concurrent_users=1, max_queue_size=5) as served:
        exchanges = [RawExchange(served.app, chat_body(stream=True), request_id=name) for name in ("first", "queued")]
        # One at a time: sent together, either may take the slot first (on a busy machine the second did, and
        # the test waited on the wrong one).
        for exchange, (running, waiting) in zip(exchanges, ((1, 0), (1, 1)), strict=True):
            exchange.gate.clear()
            exchange.start()
            await eventually(lambda r=running, w=waiting: (served.ctx.orchestrator.running,
                                                           served.ctx.orchestrator.waiting) == (r, w),
                             f"{exchange.request_id} running or queued")
        drain = asyncio.create_task(served.ctx.orchestrator.drain(timeout=30))
        await eventually(lambda: served.ctx.health.state is ServiceState.DRAINING, "draining")
        exchanges[0].gate.set()
        await exchanges[0].finished()
        await eventually(lambda: served.ctx.orchestrator.running == 1, "queued request admitted")
        for _ in range(20):  # let the drain task observe the state
            await asyncio.sleep(0)
        reported_done_while_running = drain.done()
        exchanges[1].gate.set()
        await exchanges[1].finished()
        assert await asyncio.wait_for(drain, 10) is True
    assert exchanges[1].status == 200
    assert not reported_done_while_running, "drain() returned while a request was running"


@pytest.mark.parametrize("stream", [False, True])
async def test_drain_deadline_stops_running_requests_with_an_honest_error(serve_app, stream: bool) -> None:
    # The request's own deadline is far away: only the drain may end it (a reader the drain did not
    # wake would wait for the engine until that deadline, and fail the bound below).
    async with serve_app(connection_timeout_seconds=600) as served:
        served.engine.enqueue(*"started, then held", hold_after=1)
        running = await hold(served, "running", stream=stream)
        await served.started("running")
        assert await served.ctx.orchestrator.drain(timeout=0.01) is False
        response = await asyncio.wait_for(running, STATE_WAIT_SECONDS)
        assert served.ctx.orchestrator.running == 0
    assert served.engine_id("running") in served.engine.aborted
    if stream:  # started: the cut-off answer ends with an error frame, never a "stop" that looks complete
        events = sse_events(response.text)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "generation_aborted"
        assert all(c["choices"][0]["finish_reason"] is None for c in sse_chunks(response.text) if c.get("choices"))
    else:
        error = assert_openai_error(response, 503, code="generation_aborted")
        assert error["message"] == ("the service stopped this generation before it finished (shutting down); "
                                    "the answer is incomplete: retry on another replica")
        assert response.headers["retry-after"] == "5"  # another replica can take it at once


@pytest.mark.parametrize("where", ["queued", "in the tokenizer"])
async def test_drain_deadline_refuses_requests_not_yet_started(serve_app, where: str) -> None:
    # Stopping the running request frees its slot: a queued request must not start generating after the
    # deadline (the process is about to exit and would cut it off without a word), nor one whose prompt was
    # still being tokenized. Each gets a 503 `draining` before any byte, which a balancer can retry.
    async with serve_app(FakeEngine(token_delay=HOLD), connection_timeout_seconds=600,
                         **one_slot_one_queue()) as served:
        orchestrator = served.ctx.orchestrator
        running = await hold(served, "running")
        await served.started("running")
        tokenizer = served.engine.get_tokenizer()
        tokenizer.hold = threading.Event()
        tokenizer.entered.clear()
        try:
            late = await hold(served, "late", stream=True)
            if where == "queued":
                tokenizer.hold.set()
                await eventually(lambda: orchestrator.waiting == 1, "the second request queued")
            else:
                await eventually(tokenizer.entered.is_set, "the second prompt in the tokenizer")
            assert await orchestrator.drain(timeout=0.01) is False
        finally:
            tokenizer.hold.set()
        responses = await asyncio.wait_for(asyncio.gather(running, late), STATE_WAIT_SECONDS)
        assert (orchestrator.running, orchestrator.waiting, orchestrator.preparing) == (0, 0, 0)
    assert_openai_error(responses[0], 503, code="generation_aborted")
    error = assert_openai_error(responses[1], 503, code="draining")
    assert error["message"] == ("the service is shutting down and drain_timeout_seconds passed before this request "
                                "started; retry on another replica")
    assert responses[1].headers["retry-after"] == "5"
    assert len(served.engine.requests) == 1, "the late request reached the engine"


class HeldPrompt:
    """A prepare step for `orchestrator.admit` that runs on the tokenizer's thread until the test lets it go."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.entered, self.go, self.returned = threading.Event(), threading.Event(), threading.Event()

    def __call__(self) -> GenerationRequest:
        self.entered.set()
        try:
            assert self.go.wait(STATE_WAIT_SECONDS)
            return GenerationRequest(self.request_id, [1, 2, 3], SamplingOptions(4))
        finally:
            self.returned.set()


def a_prompt(request_id: str) -> Callable[[], GenerationRequest]:
    prompt = HeldPrompt(request_id)
    prompt.go.set()
    return prompt


# Which loop pass a cancel or a grant lands in depends on how many hops the code takes: each test tries
# every offset of a few passes, so that one of them lands where the race is.
PASSES = range(6)


@pytest.mark.parametrize("where", ["prompt ready", "slot granted"])
async def test_a_client_that_leaves_as_its_admission_completes_is_not_admitted(serve_app, where: str) -> None:
    """A client's cancel (it hung up) in the loop pass its prompt came back from the tokenizer, or its slot
    was granted, ends its admission. Before, Python 3.11's wait_for returned the result and dropped the
    cancel: a client already gone took a slot, and its key was charged a prompt the engine never saw."""
    async with serve_app(FakeEngine(), concurrent_users=1, max_queue_size=1) as served:
        orchestrator = served.ctx.orchestrator
        swallowed = []
        for passes in PASSES:
            first = None
            if where == "slot granted":
                first = orchestrator.open(f"first-{passes}", "chat")
                await orchestrator.admit(first, a_prompt(f"first-{passes}"))
            prompt = HeldPrompt(f"gone-{passes}")
            if first is not None:
                prompt.go.set()
            gone = orchestrator.open(f"gone-{passes}", "chat")
            admission = asyncio.create_task(orchestrator.admit(gone, prompt))
            if first is not None:
                await eventually(lambda: orchestrator.waiting == 1, "the request queued for the slot")
                first.slot.release()
            else:
                await eventually(prompt.entered.is_set, "the prompt on the tokenizer's thread")
                prompt.go.set()
                assert prompt.returned.wait(STATE_WAIT_SECONDS)
                time.sleep(0.05)  # the loop held: the thread's result is queued for it when the passes begin
            for _ in range(passes):
                await asyncio.sleep(0)
            cancelled = admission.cancel()
            try:
                await admission
            except asyncio.CancelledError:
                pass
            else:
                if cancelled:
                    swallowed.append(passes)
                gone.slot.release()
            for record in (first, gone):
                if record is not None:
                    orchestrator.close(record, 499)
            assert (orchestrator.running, orchestrator.waiting, orchestrator.preparing) == (0, 0, 0)
        assert swallowed == [], f"admitted after the cancel, at these pass offsets: {swallowed}"


@pytest.mark.parametrize("passes", PASSES)
async def test_a_request_granted_its_slot_as_the_drain_expires_leaves_the_service_idle(
        serve_app, passes: int) -> None:
    """A queued request granted the last slot in the pass the drain's deadline expires is refused (503
    `draining`) and gives the slot back; that must leave the service idle, or the drain waits out its grace
    for nothing (before, the slot went back without the idle check)."""
    async with serve_app(FakeEngine(), concurrent_users=1, max_queue_size=1, queue_timeout_seconds=HOLD,
                         connection_timeout_seconds=HOLD) as served:
        orchestrator = served.ctx.orchestrator
        first = orchestrator.open("first", "chat")
        await orchestrator.admit(first, a_prompt("first"))
        late = orchestrator.open("late", "chat")
        admission = asyncio.create_task(orchestrator.admit(late, a_prompt("late")))
        await eventually(lambda: orchestrator.waiting == 1, "the second request queued")
        drain = asyncio.create_task(orchestrator.drain(timeout=0))
        for _ in range(passes):
            await asyncio.sleep(0)
        first.slot.release()
        try:
            await admission
        except DrainingError:
            pass
        else:  # it started before the drain expired: it ends as the drain's stopped generations do
            late.slot.release()
        await drain
        assert (orchestrator.running, orchestrator.waiting, orchestrator.preparing) == (0, 0, 0)
        # Nothing holds the service: a drain now finds it idle at once.
        assert await orchestrator.drain(timeout=STATE_WAIT_SECONDS) is True
        for record in (first, late):
            orchestrator.close(record, 503)


async def test_a_generation_the_drain_expires_on_before_its_first_read_is_stopped(serve_app, caplog) -> None:
    """The route makes a generation's first read a loop pass or two after admission. A drain deadline in between
    stops it too: it never reaches the engine and its client gets 503 before any byte. Before, it was not among
    the generations the drain stops, and started generating after the deadline, to be cut off by the exit."""
    async with serve_app(FakeEngine(), concurrent_users=1) as served:
        orchestrator = served.ctx.orchestrator
        record = orchestrator.open("late-start", "chat")
        generation = orchestrator.generate(record, await orchestrator.admit(record, a_prompt("late-start")))
        drain = asyncio.create_task(orchestrator.drain(timeout=0))
        await eventually(lambda: "drain_timeout_seconds=0 passed" in caplog.text, "the drain deadline passed")
        with pytest.raises(GenerationAbortedError):
            await generation.next()
        await generation.aclose()
        orchestrator.close(record, 503)
        assert await drain is False
    assert served.engine.requests == []


async def test_engine_dying_mid_answer_is_503_engine_failed_and_fatal(serve_app) -> None:
    async with serve_app() as served:
        served.engine.enqueue(*("x" * 50), hold_after=1)
        served.engine.enqueue(*("y" * 50), hold_after=1)
        # One after the other: the engine hands its scripts out in arrival order ("x" then "y").
        plain = RawExchange(served.app, chat_body(max_tokens=4000), request_id="plain").start()
        await served.started("plain")
        stream = RawExchange(served.app, chat_body(stream=True, max_tokens=4000), request_id="stream").start()
        await served.started("stream")
        await eventually(lambda: b'"content":"y"' in stream.body, "the stream started")
        served.engine.kill()
        await plain.finished()
        await stream.finished()
        assert served.ctx.orchestrator.running == 0

        after = await served.chat(chat_body())
        assert served.fatal_calls, "the process was not told to exit"

    assert plain.status == 503
    error = json.loads(plain.text)["error"]
    assert error["code"] == "engine_failed"
    assert stream.status == 200
    events = sse_events(stream.text)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_failed"
    assert_openai_error(after, 503, code="engine_failed")


class PeakCountingEngine(FakeEngine):
    """A FakeEngine that remembers the most requests it generated for at once."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.peak = 0
        self._now = 0

    async def generate(self, request):  # type: ignore[no-untyped-def, override]
        self._now += 1
        self.peak = max(self.peak, self._now)
        try:
            async for delta in super().generate(request):
                yield delta
        finally:
            self._now -= 1


async def test_never_more_than_concurrent_users_run_and_the_queue_serves_everyone(serve_app) -> None:
    engine = PeakCountingEngine(token_delay=0.001)
    # Deadlines out of reach: on a loaded machine (seen under mutmut) the last of 24 queued requests
    # waited past the default 10 s queue timeout; this test is about the slot count, not about time.
    async with serve_app(engine, concurrent_users=3, max_queue_size=100, queue_timeout_seconds=3600,
                         connection_timeout_seconds=3600) as served:
        responses = await asyncio.gather(*(served.chat(chat_body(f"user {i}", stream=i % 2 == 0, max_tokens=20))
                                           for i in range(24)))
        assert served.ctx.orchestrator.running == 0
        assert served.ctx.orchestrator.waiting == 0
    assert [r.status_code for r in responses] == [200] * 24
    assert engine.peak == 3
    assert len(engine.requests) == 24


async def test_fifty_concurrent_streams_all_complete(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=0.001), concurrent_users=50, queue_timeout_seconds=3600,
                         connection_timeout_seconds=3600) as served:
        responses = await asyncio.gather(*(served.chat(chat_body(stream=True, max_tokens=10)) for _ in range(50)))
        assert served.ctx.orchestrator.running == 0
    for response in responses:
        assert response.status_code == 200
        assert sse_chunks(response.text)[-1]["choices"][0]["finish_reason"] == "length"
