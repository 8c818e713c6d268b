"""Admission counts sequences, not requests: a request with `n` choices generates n sequences and takes n slots.

`concurrent_users` slots bound what the engine generates at once, and `max_queue_size` what waits; with
`n` up to `max_n`, counting requests would let 50 slots hold 50 x n sequences.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from api_harness import RawExchange, Served, assert_openai_error, chat_body, eventually

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HOLD = 30.0  # token_delay that keeps a request generating until the test releases it


async def hold(served: Served, request_id: str, **fields: object) -> asyncio.Task:
    return asyncio.create_task(served.chat(chat_body(temperature=0.7, **fields),
                                           headers={"X-Request-ID": request_id}))


async def test_a_request_with_n_choices_takes_n_slots(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=4, max_queue_size=0) as served:
        wide = await hold(served, "wide", n=4)
        await served.started("wide")
        orchestrator = served.ctx.orchestrator
        assert (orchestrator.running, orchestrator.waiting) == (4, 0)
        gauges = served.ctx.metrics.registry
        assert gauges.get_sample_value("openchat_requests_running", {"model": "openchat-3.5"}) == 4

        # All four slots are taken by the one request: the next is refused, not run as a fifth sequence.
        refused = await served.chat(chat_body())
        assert_openai_error(refused, 429, code="queue_full")
        await served.release("wide")
        assert (await wide).status_code == 200
        assert len((await wide).json()["choices"]) == 4
        assert (orchestrator.running, orchestrator.waiting) == (0, 0)


async def test_a_queued_request_waits_until_its_n_slots_are_free(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=4, max_queue_size=3) as served:
        first = await hold(served, "first", n=2)
        second = await hold(served, "second")
        await served.started("first")
        await served.started("second")
        wide = await hold(served, "wide", n=3)  # 3 slots needed, 1 free: it waits, counted as 3 waiting
        orchestrator = served.ctx.orchestrator
        await eventually(lambda: orchestrator.waiting == 3, "three sequences queued")
        assert orchestrator.running == 3
        # The queue holds 3 sequences: one more single request does not fit in it.
        assert_openai_error(await served.chat(chat_body()), 429, code="queue_full")

        await served.release("second")  # 2 free: still not enough for 3
        assert (await second).status_code == 200
        assert "wide" not in [r.request_id for r in served.engine.requests]
        await served.release("first")
        await served.started("wide")
        assert (orchestrator.running, orchestrator.waiting) == (3, 0)
        await served.release("wide")
        assert [(await t).status_code for t in (first, wide)] == [200, 200]


async def test_a_request_with_n_choices_needs_n_queue_places(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=2, max_queue_size=1) as served:
        running = await hold(served, "running", n=2)
        await served.started("running")
        before = served.engine.get_tokenizer().encoded_chars
        refused = await served.chat(chat_body(temperature=0.7, n=2))  # 2 sequences, 1 place: refused at once
        assert served.engine.get_tokenizer().encoded_chars == before  # before its prompt was tokenized
        assert served.ctx.orchestrator.waiting == 0
        await served.release("running")
        assert (await running).status_code == 200
    error = assert_openai_error(refused, 429, code="queue_full")
    assert "this request needs 2" in error["message"]


async def test_the_queue_is_first_come_first_served_whatever_n(serve_app) -> None:
    # A narrow request that arrives after a wide one waits behind it, even when it alone would fit:
    # otherwise a stream of single requests could keep a wide one waiting forever.
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=2, max_queue_size=4) as served:
        first = await hold(served, "first")
        await served.started("first")
        wide = await hold(served, "wide", n=2)
        await eventually(lambda: served.ctx.orchestrator.waiting == 2, "wide queued")
        narrow = await hold(served, "narrow")
        await eventually(lambda: served.ctx.orchestrator.waiting == 3, "narrow queued behind it")
        assert "narrow" not in [r.request_id for r in served.engine.requests]
        await served.release("first")
        await served.started("wide")
        await served.release("wide")
        await served.release("narrow")
        assert [(await t).status_code for t in (first, wide, narrow)] == [200, 200, 200]


async def test_more_choices_than_slots_is_a_400_naming_the_limit(serve_app) -> None:
    async with serve_app(FakeEngine(), concurrent_users=2, max_n=8) as served:
        response = await served.chat(chat_body(n=3, temperature=0.7))
    assert_openai_error(response, 400, code="too_many_choices")
    assert response.json()["error"]["param"] == "n"
    message = response.json()["error"]["message"]
    assert "concurrent_users=2" in message
    assert "at most 2" in message
    assert served.engine.requests == []


async def test_retry_after_is_the_recent_latency_times_the_backlog_in_sequences(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=2, max_queue_size=2) as served:
        orchestrator = served.ctx.orchestrator
        first = await hold(served, "first", n=2)
        await served.started("first")
        queued = await hold(served, "queued", n=2)
        await eventually(lambda: orchestrator.waiting == 2, "two sequences queued")
        refused = await served.chat(chat_body(n=2, temperature=0.7))
        for request_id in ("first", "queued"):
            await served.release(request_id)
        assert [(await t).status_code for t in (first, queued)] == [200, 200]
    assert_openai_error(refused, 429, code="queue_full")
    # No answer had finished yet, so the latency estimate was still its starting 1 s. Ahead of the
    # refused request: 2 queued sequences, then its own 2, on 2 slots: 2 rounds of ~1 s.
    assert int(refused.headers["retry-after"]) == math.ceil(1.0 * (2 + 2) / 2) == 2


async def test_a_wide_request_leaving_the_head_of_the_queue_lets_the_next_in(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), concurrent_users=2, max_queue_size=4) as served:
        first = await hold(served, "first")
        await served.started("first")
        wide = RawExchange(served.app, chat_body(n=2, temperature=0.7), request_id="wide").start()
        await eventually(lambda: served.ctx.orchestrator.waiting == 2, "wide queued")
        narrow = await hold(served, "narrow")
        await eventually(lambda: served.ctx.orchestrator.waiting == 3, "narrow queued behind it")

        wide.hang_up.set()  # the wide client leaves: the one free slot is enough for the narrow request
        await wide.finished()
        await served.started("narrow")
        assert (served.ctx.orchestrator.running, served.ctx.orchestrator.waiting) == (2, 0)
        await served.release("first")
        await served.release("narrow")
        assert [(await t).status_code for t in (first, narrow)] == [200, 200]
    assert "wide" not in [r.request_id for r in served.engine.requests]
