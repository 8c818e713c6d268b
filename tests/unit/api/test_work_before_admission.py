"""Nothing costly happens before admission: a request that cannot be admitted is refused before its prompt is
tokenized, tokenizing keeps the event loop free, and `/tokenize` has the inference routes' limits and gate."""

from __future__ import annotations

import asyncio
import threading

import pytest
from api_harness import Served, assert_openai_error, chat_body, eventually
from test_admission import HOLD, hold, one_slot_one_queue

from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HUGE = "x" * 150_000  # under max_message_chars and the body limit: only the queue can refuse it


async def full_queue(served: Served) -> list[asyncio.Task]:
    running = await hold(served, "running")
    await served.started("running")
    queued = await hold(served, "queued")
    await eventually(lambda: served.ctx.orchestrator.waiting == 1, "second request queued")
    return [running, queued]


async def drain(served: Served, tasks: list[asyncio.Task]) -> None:
    await served.release("running")
    await served.release("queued")
    assert [(await task).status_code for task in tasks] == [200, 200]


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/tokenize"])
async def test_a_full_queue_refuses_a_huge_prompt_before_tokenizing_it(serve_app, route: str) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        tasks = await full_queue(served)
        tokenizer = served.engine.get_tokenizer()
        before = tokenizer.encoded_chars
        body = chat_body(HUGE) if route != "/v1/completions" else {"prompt": HUGE, "max_tokens": 5}
        if route == "/tokenize":
            body = {"prompt": HUGE}
        refused = await served.client.post(route, json=body)
        assert tokenizer.encoded_chars == before  # refused without tokenizing a character of it
        await drain(served, tasks)
    assert_openai_error(refused, 429, code="queue_full")
    assert int(refused.headers["retry-after"]) >= 1


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/tokenize"])
async def test_tokenizing_a_prompt_leaves_the_event_loop_free(served: Served, route: str) -> None:
    tokenizer = served.engine.get_tokenizer()
    tokenizer.hold = threading.Event()
    try:
        slow = asyncio.create_task(served.client.post(route, json=chat_body(HUGE)))
        await eventually(tokenizer.entered.is_set, "the tokenizer started on the huge prompt")
        health = await served.client.get("/health/live")  # answered while the prompt is being tokenized
        assert tokenizer.inside == 1, "the health check waited for the tokenizer: it ran on the event loop"
    finally:
        tokenizer.hold.set()
    assert health.status_code == 200
    if route == "/tokenize":
        assert (await slow).json()["count"] > len(HUGE)
    else:  # tokenized, then refused: 150,000 tokens do not fit the context
        assert_openai_error(await slow, 400, code="context_length_exceeded")


async def test_tokenize_has_the_chat_limits(serve_app) -> None:
    async with serve_app(max_messages=2, max_message_chars=10, max_request_body_bytes=4096) as served:
        too_many = await served.client.post("/tokenize", json={"messages": [{"role": "user", "content": "a"}] * 3})
        too_long = await served.client.post("/tokenize", json={"messages": [{"role": "user", "content": "a" * 11}]})
        too_large = await served.client.post("/tokenize", json={"prompt": "a" * 5000})
        before = served.engine.get_tokenizer().encoded_chars
        assert before == 0
    assert_openai_error(too_many, 400, code="too_many_messages", param="messages")
    assert_openai_error(too_long, 400, code="message_too_long", param="messages.0.content")
    assert_openai_error(too_large, 413, code="request_too_large")


async def test_tokenize_is_refused_while_draining(served: Served) -> None:
    task = asyncio.create_task(served.ctx.orchestrator.drain(timeout=5))
    await eventually(lambda: served.ctx.health.state.value == "draining", "draining")
    assert_openai_error(await served.client.post("/tokenize", json={"prompt": "hi"}), 503, code="draining")
    await task


async def test_a_prompt_being_tokenized_holds_its_queue_place(serve_app) -> None:
    # A burst of prompts still in the tokenizer must not all be let through the queue-full check at once.
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        running = await hold(served, "running")
        await served.started("running")
        tokenizer = served.engine.get_tokenizer()
        tokenizer.hold = threading.Event()
        tokenizer.entered.clear()
        try:
            preparing = asyncio.create_task(served.chat(chat_body("being tokenized"),
                                                        headers={"X-Request-ID": "preparing"}))
            await eventually(tokenizer.entered.is_set, "the second prompt in the tokenizer")
            assert (served.ctx.orchestrator.preparing, served.ctx.orchestrator.waiting) == (1, 0)
            refused = await served.chat(chat_body("third"))
        finally:
            tokenizer.hold.set()
        await served.release("running")
        await served.release("preparing")
        assert [(await task).status_code for task in (running, preparing)] == [200, 200]
    error = assert_openai_error(refused, 429, code="queue_full")
    assert error["message"] == ("0 of 1 slots are free, this request needs 1, and 1 sequences are ahead of it "
                                "(queued, or their prompts being tokenized; max_queue_size=1 beyond the "
                                "slots; a request with n choices counts n); retry after the Retry-After delay")


async def test_a_burst_on_an_idle_service_fills_the_free_slot_and_the_queue_never_more(serve_app) -> None:
    # The slot is free, so a room check that counted only held slots let every prompt still in the tokenizer
    # through, and all of them queued past max_queue_size once the first took the slot.
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        orchestrator = served.ctx.orchestrator
        tokenizer = served.engine.get_tokenizer()
        tokenizer.hold = threading.Event()
        try:
            first = await hold(served, "first")
            await eventually(tokenizer.entered.is_set, "the first prompt in the tokenizer")
            second = await hold(served, "second")
            await eventually(lambda: orchestrator.preparing == 2, "the second prompt waiting for the tokenizer")
            refused = await served.chat(chat_body("third"))
        finally:
            tokenizer.hold.set()
        await served.started("first")
        await eventually(lambda: orchestrator.waiting == 1, "the second request queued")
        await served.release("first")
        await served.release("second")
        assert [(await task).status_code for task in (first, second)] == [200, 200]
    error = assert_openai_error(refused, 429, code="queue_full")
    assert error["message"].startswith("1 of 1 slots are free, this request needs 1, and 2 sequences are ahead")


@pytest.mark.parametrize("route", ["/tokenize", "/detokenize"])
async def test_tokenize_requests_hold_queue_places_while_tokenized(serve_app, route: str) -> None:
    # They share the one tokenizer thread with chat prompts: unbounded, a flood of them would queue ahead of
    # every chat prompt. Each holds a place (against the free slot, then the queue) while it is worked on.
    body = {"prompt": "x"} if route == "/tokenize" else {"tokens": [104, 105]}
    async with serve_app(**one_slot_one_queue()) as served:
        tokenizer = served.engine.get_tokenizer()
        tokenizer.hold = threading.Event()
        try:
            # A prompt held in the tokenizer (encoding), then three more calls behind it.
            calls = [asyncio.create_task(served.client.post("/tokenize", json={"prompt": "x"}))]
            await eventually(tokenizer.entered.is_set, "the first call in the tokenizer")
            calls += [asyncio.create_task(served.client.post(route, json=body)) for _ in range(3)]
            await eventually(lambda: sum(c.done() for c in calls) == 2, "two of them refused")
            assert served.ctx.orchestrator.preparing == 2
        finally:
            tokenizer.hold.set()
        responses = await asyncio.gather(*calls)
        assert served.ctx.orchestrator.preparing == 0
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    for refused in (r for r in responses if r.status_code == 429):
        assert_openai_error(refused, 429, code="queue_full")


async def test_the_tokenizer_runs_on_its_own_single_thread(served: Served) -> None:
    # Hugging Face tokenizers are not safe to call from several threads at once: one named worker does it all.
    for _ in range(3):
        assert (await served.chat()).status_code == 200
    assert served.engine.get_tokenizer().threads == {"hxp-tokenizer_0"}


async def test_tokenize_is_answered_while_the_slot_is_busy_and_a_queue_place_is_free(serve_app) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), **one_slot_one_queue()) as served:
        running = await hold(served, "running")
        await served.started("running")
        tokenized = await served.client.post("/tokenize", json={"prompt": "hi"})
        await served.release("running")
        assert (await running).status_code == 200
    assert tokenized.status_code == 200
    assert tokenized.json()["count"] == 3  # BOS, h, i
