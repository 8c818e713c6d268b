"""Many teams on one service: keys with names and limits, 429 before any work, priority in the queue.

The keys file is real, the app is the real one on the scripted engine; held requests (a long
token_delay) stand for a busy service. Nothing depends on how long anything takes: the windows are
a minute long, and every test ends well within it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest
from api_harness import RawExchange, Served, assert_openai_error, chat_body, eventually

from hxp_enterprise_llm.api.auth import ApiKeyFileError, ApiKeys
from hxp_enterprise_llm.api.keys_file import KeysFileError, parse_keys
from hxp_enterprise_llm.api.metrics import render_metrics
from hxp_enterprise_llm.orchestration.key_policy import KeyPolicy, Priority
from hxp_enterprise_llm.orchestration.quotas import LocalQuotaStore, format_duration
from support.fake_engine import FakeEngine

pytestmark = pytest.mark.anyio

HOLD = 30.0
KEYS = """\
# two teams; the web team has two keys (a rotation) sharing its limits
sk-web-1   name=web requests_per_minute=10 priority=interactive
sk-web-2   name=web requests_per_minute=10 priority=interactive   # the new key
sk-etl     name=etl priority=batch
sk-tokens  name=metered tokens_per_minute=1000
sk-single  name=single concurrent_requests=1
sk-old
"""
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")
TOKEN_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def bearer(key: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}"}  # lower case: RawExchange sends them as ASGI names
    if request_id is not None:
        headers["x-request-id"] = request_id
    return headers


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(KEYS)
    return path


# --- the file


def test_keys_carry_names_and_limits_and_bare_keys_still_work() -> None:
    keys = parse_keys(KEYS, "keys")
    assert keys[b"sk-web-1"] == keys[b"sk-web-2"] == KeyPolicy("web", requests_per_minute=10)
    assert keys[b"sk-etl"] == KeyPolicy("etl", priority=Priority.BATCH)
    assert keys[b"sk-tokens"].tokens_per_minute == 1000
    assert keys[b"sk-single"].concurrent_requests == 1
    assert keys[b"sk-old"] == KeyPolicy("unnamed")  # the one-key-per-line format of earlier releases
    assert parse_keys("with#hash\n", "k") == {b"with#hash": KeyPolicy("unnamed")}


@pytest.mark.parametrize(("text", "message"), [
    ("sk-a name=a\nsk-b name=b rpm=5\n", "keys:2: unknown attribute 'rpm=5'"),
    ("sk-a requests_per_minute=0\n", "keys:1: requests_per_minute must be a whole number >= 1, got '0'"),
    ("sk-a priority=urgent\n", "keys:1: priority 'urgent' is not one of interactive, batch"),
    ("sk-a name=a\n\nsk-a name=a\n", "keys:3: this key is on an earlier line already"),
    ("sk-a name=t tokens_per_minute=5\nsk-b name=t\n", "keys:2: name 't' has other limits on line 1"),
    ("sk-a name=bad/name\n", "keys:1: name 'bad/name' must be"),
    ("sk-a name=anonymous\n", "keys:1: name 'anonymous' must be"),
    # The `api_key` setting's requests are counted under this name: a file key of that name would share
    # their windows (its limits spent by a key that has none) and their metrics.
    ("sk-a name=api_key\n", "keys:1: name 'api_key' must be"),
    ("name=a\n", "keys:1: the line must start with the key"),
    ("sk-a name=a name=b\n", "keys:1: name is given twice"),
    # digits to str.isdigit() that int() refuses: a superscript two; more digits than int() converts
    ("sk-a requests_per_minute=\u00b2\n", "keys:1: requests_per_minute must be a whole number >= 1, got '\u00b2'"),
    ("sk-a tokens_per_minute=" + "9" * 5000 + "\n", "keys:1: tokens_per_minute must be a whole number >= 1"),
])
def test_a_bad_line_is_refused_naming_it(text: str, message: str) -> None:
    with pytest.raises(KeysFileError) as caught:
        parse_keys(text, "keys")
    assert str(caught.value).startswith(message), caught.value


def test_a_byte_order_mark_does_not_become_part_of_the_first_key() -> None:
    assert parse_keys("\ufeffsk-a name=a\n", "k") == {b"sk-a": KeyPolicy("a")}


def test_a_keys_file_that_is_not_utf8_stops_the_start_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"sk-a name=a\n# \xe9quipe web\n")
    with pytest.raises(ApiKeyFileError, match=r"keys:2: not UTF-8 \(byte 0xe9\)"):
        ApiKeys(None, path)


def test_a_bad_keys_file_stops_the_start_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-a name=a\nsk-b name=b colour=blue\n")
    with pytest.raises(ApiKeyFileError, match=r"keys:2: unknown attribute 'colour=blue'"):
        ApiKeys(None, path)


@pytest.mark.parametrize(("content", "reason"), [
    (b"sk-new name=new\nsk-web-1 name=web burst=3\n", "keys:2: unknown attribute 'burst=3'"),
    # A Latin-1 comment from an editor: it was a 500 for the request that noticed the change, every second.
    (b"# \xe9quipe web\nsk-new name=new\n", "keys:1: not UTF-8 (byte 0xe9)"),
])
async def test_a_reload_that_fails_keeps_the_keys_and_says_why(serve_app, keys_file: Path, content: bytes,
                                                              reason: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serve_app(api_keys_file=keys_file) as served:
        keys_file.write_bytes(content)
        with caplog.at_level(logging.ERROR):
            served.ctx.api_keys.reload()
        assert (await served.chat(headers=bearer("sk-web-1"))).status_code == 200
        assert_openai_error(await served.chat(headers=bearer("sk-new")), 401)
    assert any(reason in r.getMessage() and "keeping the 6 keys" in r.getMessage() for r in caplog.records), \
        caplog.text


# --- limits


async def test_the_eleventh_request_in_a_minute_is_429_and_the_other_key_is_untouched(
        serve_app, keys_file: Path) -> None:
    async with serve_app(api_keys_file=keys_file) as served:
        answers = [await served.chat(headers=bearer("sk-web-1" if i % 2 else "sk-web-2")) for i in range(10)]
        refused = await served.chat(headers=bearer("sk-web-1", "eleventh"))
        others = [await served.chat(headers=bearer("sk-etl")) for _ in range(12)]
        metrics = render_metrics(served.ctx.metrics.registry).decode()

    assert [a.status_code for a in answers] == [200] * 10
    assert [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers] == list(range(9, -1, -1))
    assert all(a.headers["x-ratelimit-limit-requests"] == "10" for a in answers)
    error = assert_openai_error(refused, 429, code="rate_limit_exceeded")
    assert error["type"] == "requests"
    assert "'web'" in error["message"]
    assert {h: refused.headers[h] for h in RATE_HEADERS[:2]} == {RATE_HEADERS[0]: "10", RATE_HEADERS[1]: "0"}
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert [o.status_code for o in others] == [200] * 12  # the other key: no limit, no headers
    assert not any(h.startswith("x-ratelimit") for o in others for h in o.headers)
    assert "eleventh" not in [r.request_id for r in served.engine.requests]  # refused before any work
    assert 'openchat_key_rejections_total{key="web",model="openchat-3.5",reason="key_requests"} 1.0' in metrics
    assert 'openchat_key_requests_total{key="etl",model="openchat-3.5",outcome="ok"} 12.0' in metrics


async def test_tokens_per_minute_charge_the_prompt_then_the_completion_also_of_an_abandoned_stream(
        serve_app, keys_file: Path) -> None:
    async with serve_app(FakeEngine(token_delay=0.001), api_keys_file=keys_file, response_chunk_size=1) as served:
        served.engine.enqueue(*("x" * 200), hold_after=7)  # 7 tokens, then nothing until the client leaves
        leaver = RawExchange(served.app, chat_body("tell me", stream=True, max_tokens=300), request_id="leaver",
                             headers=bearer("sk-tokens")).start()
        await eventually(lambda: leaver.body.count(b'"content":"x') == 7, "seven tokens streamed")
        assert leaver.response_headers["x-ratelimit-limit-tokens"] == "1000"
        leaver.hang_up.set()
        await leaver.finished()
        await eventually(lambda: served.ctx.orchestrator.running == 0, "abandoned stream closed")

        served.engine.enqueue(*"ok")
        after = await served.chat(chat_body("next"), headers=bearer("sk-tokens"))
    first, second = served.engine.requests
    abandoned_charge = len(first.prompt_token_ids) + 7
    assert after.status_code == 200
    # At the next admission the window holds the abandoned stream's prompt + its 7 tokens + this prompt.
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 1000 - abandoned_charge - len(second.prompt_token_ids)
    assert set(TOKEN_HEADERS) <= set(after.headers)
    assert not any(h in after.headers for h in RATE_HEADERS)  # only the limits the key has


async def test_a_limited_keys_bad_request_carries_the_headers_too(serve_app, keys_file: Path) -> None:
    async with serve_app(api_keys_file=keys_file) as served:
        await served.chat(headers=bearer("sk-web-1"))
        bad = await served.chat({"messages": "not a list"}, headers=bearer("sk-web-2"))
    assert_openai_error(bad, 400)
    assert (bad.headers["x-ratelimit-limit-requests"], bad.headers["x-ratelimit-remaining-requests"]) == ("10", "9")


async def test_tokens_per_minute_refuse_before_the_engine_once_spent(serve_app, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-t name=t tokens_per_minute=60\n")
    async with serve_app(api_keys_file=keys) as served:
        served.engine.enqueue(*("y" * 40))
        spent = await served.chat(chat_body("a"), headers=bearer("sk-t"))  # prompt + 40 tokens
        refused = await served.chat(chat_body("b"), headers=bearer("sk-t", "over"))
        too_big = await served.chat(chat_body("z" * 100), headers=bearer("sk-t", "never"))
    assert spent.status_code == 200
    error = assert_openai_error(refused, 429, code="rate_limit_exceeded")
    assert error["type"] == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(60 - spent.json()["usage"]["total_tokens"])
    assert "can never be admitted" in assert_openai_error(too_big, 429, code="rate_limit_exceeded")["message"]
    assert [r.request_id for r in served.engine.requests] != ["over"]
    assert len(served.engine.requests) == 1


async def test_concurrent_requests_limit_refuses_the_second_running_request(serve_app, keys_file: Path) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-single", "first")))
        await served.started("first")
        second = await served.chat(headers=bearer("sk-single", "second"))
        await served.release("first")
        assert (await running).status_code == 200
        third = asyncio.create_task(served.chat(headers=bearer("sk-single", "third")))
        await served.release("third")
        third = await third
    assert "concurrent_requests=1" in assert_openai_error(second, 429, code="rate_limit_exceeded")["message"]
    assert third.status_code == 200  # the first one's end gave its place back


async def test_a_key_over_its_request_limits_is_refused_before_its_prompt_takes_the_tokenizer(
        serve_app, keys_file: Path) -> None:
    """The tokenizer's thread and the queue's places are shared by every key: a key at its concurrency limit
    flooding large prompts used to have each tokenized (holding a queue place) before its 429, refusing
    other keys `queue_full` meanwhile. A tokenizer that fails once the first request is running shows
    whether the refused ones reached it (they would be 500s)."""
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-single", "first")))
        await served.started("first")
        served.engine.get_tokenizer().failure = RuntimeError("the tokenizer was reached")
        flood = await asyncio.gather(*(served.chat(headers=bearer("sk-single", f"flood-{i}")) for i in range(8)))
        assert (served.ctx.orchestrator.preparing, served.ctx.orchestrator.waiting) == (0, 0)
        served.engine.get_tokenizer().failure = None
        await served.release("first")
        assert (await running).status_code == 200
    for refused in flood:
        assert "concurrent_requests=1" in assert_openai_error(refused, 429, code="rate_limit_exceeded")["message"]


async def test_a_request_refused_after_its_prompt_was_charged_gives_its_tokens_back(serve_app, tmp_path: Path) -> None:
    """A request whose prompt was charged and which then never ran (here: no slot within queue_timeout_seconds)
    gives back its prompt's tokens with the request, at once: the next request's window does not count them."""
    keys = tmp_path / "keys"
    keys.write_text("sk-t name=t tokens_per_minute=100000\n")
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys, concurrent_users=1,
                         queue_timeout_seconds=0.05) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-t", "running")))
        await served.started("running")
        timed_out = await served.chat(headers=bearer("sk-t", "timed-out"))
        await served.release("running")
        first = await running
        after = asyncio.create_task(served.chat(headers=bearer("sk-t", "after")))
        await served.release("after")
        after = await after
    assert_openai_error(timed_out, 503, code="queue_timeout")
    assert after.status_code == 200, after.text
    spent = first.json()["usage"]["total_tokens"] + after.json()["usage"]["prompt_tokens"]
    assert after.headers["x-ratelimit-remaining-tokens"] == str(100000 - spent)


async def test_tokenize_keeps_the_keys_limits_without_using_them_up(serve_app, tmp_path: Path) -> None:
    """/tokenize and /detokenize share the tokenizer's thread with every key's prompts: a key at its limits
    flooding them with large texts passed every key limit and delayed other keys. They are refused like its
    generations (the tokenizer is never reached), count as one of its running requests while they run, and
    use up no requests per minute (a client counting its prompt before sending it pays nothing)."""
    keys = tmp_path / "keys"
    keys.write_text("sk-one name=one concurrent_requests=1 requests_per_minute=2\n")
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys) as served:
        one = bearer("sk-one")
        counted = [await served.client.post("/tokenize", json={"prompt": "hello"}, headers=one) for _ in range(3)]
        running = asyncio.create_task(served.chat(headers=bearer("sk-one", "running")))
        await served.started("running")
        tokenizer = served.engine.get_tokenizer()
        tokenizer.failure = RuntimeError("the tokenizer was reached")
        refused = [await served.client.post("/tokenize", json={"prompt": "x" * 1000}, headers=one),
                   await served.client.post("/detokenize", json={"tokens": [1, 2]}, headers=one)]
        tokenizer.failure = None
        await served.release("running")
        assert (await running).status_code == 200
        tokenizer.hold = threading.Event()
        tokenizer.entered.clear()
        try:
            held = asyncio.create_task(served.client.post("/tokenize", json={"prompt": "hi"}, headers=one))
            await eventually(tokenizer.entered.is_set, "the /tokenize text in the tokenizer")
            beside = await served.chat(headers=bearer("sk-one", "beside"))
        finally:
            tokenizer.hold.set()
        assert (await held).status_code == 200
        second = asyncio.create_task(served.chat(headers=bearer("sk-one", "second")))
        await served.release("second")
        second = await second
    assert [r.status_code for r in counted] == [200, 200, 200]
    for response in refused:
        assert "concurrent_requests=1" in assert_openai_error(response, 429, code="rate_limit_exceeded")["message"]
    assert "concurrent_requests=1" in assert_openai_error(beside, 429, code="rate_limit_exceeded")["message"]
    assert second.status_code == 200  # three /tokenize calls and one chat: the second chat of its minute


async def test_a_request_the_queue_refused_is_given_back_to_the_key(serve_app, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-r name=r requests_per_minute=3\n")
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys, concurrent_users=1,
                         max_queue_size=0) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-r", "running")))
        await served.started("running")
        queue_full = await served.chat(headers=bearer("sk-r"))
        assert_openai_error(queue_full, 429, code="queue_full")
        assert queue_full.headers["x-ratelimit-remaining-requests"] == "2"  # the window without the refused one
        await served.release("running")
        await running
        answers = []
        for i in range(2):
            answer = asyncio.create_task(served.chat(headers=bearer("sk-r", f"after-{i}")))
            await served.release(f"after-{i}")
            answers.append(await answer)
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0"]


def test_the_sliding_window_frees_a_request_a_minute_after_it_was_taken() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", requests_per_minute=2, tokens_per_minute=100)
    assert store.try_take(policy, 10, now=0.0) is None
    assert store.try_take(policy, 10, now=30.0) is None
    assert store.try_take(policy, 10, now=59.0) == "requests"
    assert store.state(policy, 59.0)["requests"].reset_seconds == pytest.approx(1.0)
    assert store.try_take(policy, 10, now=60.0) is None  # the first one left the window
    store.add_tokens("k", 85, now=61.0)
    assert store.try_take(policy, 10, now=62.0) in ("requests", "tokens")
    assert store.state(policy, 62.0, tokens_wanted=10)["tokens"].reset_seconds == pytest.approx(58.0)  # 60 s after
    # the second entry: the window then holds 85 + 10 wanted


def test_reset_durations_read_as_openai_writes_them() -> None:
    assert [format_duration(s) for s in (0.0204, 6.0, 59.1, 90.0)] == ["21ms", "6s", "1m0s", "1m30s"]


# --- priority


async def test_interactive_requests_are_admitted_before_batch_ones_already_waiting(serve_app, keys_file: Path) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file, concurrent_users=1,
                         max_queue_size=10) as served:
        tasks = [asyncio.create_task(served.chat(headers=bearer("sk-etl", "running")))]
        await served.started("running")
        for i in range(3):
            tasks.append(asyncio.create_task(served.chat(headers=bearer("sk-etl", f"batch-{i}"))))
            await eventually(lambda i=i: served.ctx.orchestrator.waiting == i + 1, "batch request queued")
        tasks.append(asyncio.create_task(served.chat(headers=bearer("sk-web-1", "interactive"))))
        await eventually(lambda: served.ctx.orchestrator.waiting == 4, "interactive request queued")
        for request_id in ("running", "interactive", "batch-0", "batch-1", "batch-2"):
            await served.release(request_id)
        assert [(await t).status_code for t in tasks] == [200] * 5
    assert [r.request_id for r in served.engine.requests] == [
        served.engine_id(name) for name in ("running", "interactive", "batch-0", "batch-1", "batch-2")]


async def test_the_engine_gets_each_requests_rank_for_its_own_priority_scheduling(serve_app, keys_file: Path) -> None:
    # With scheduling_policy: priority, vLLM orders its own queue by it (lower first), as our admission does.
    async with serve_app(api_keys_file=keys_file) as served:
        for key in ("sk-etl", "sk-web-1"):
            assert (await served.chat(headers=bearer(key))).status_code == 200
    assert [r.priority for r in served.engine.requests] == [Priority.BATCH.rank, Priority.INTERACTIVE.rank] == [1, 0]


async def test_a_full_queue_makes_room_for_an_interactive_request(serve_app, keys_file: Path) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file, concurrent_users=1,
                         max_queue_size=2) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-etl", "running")))
        await served.started("running")
        waiting = []
        for i in range(2):  # one at a time: the newest of them is the one displaced
            waiting.append(asyncio.create_task(served.chat(headers=bearer("sk-etl", f"batch-{i}"))))
            await eventually(lambda i=i: served.ctx.orchestrator.waiting == i + 1, "batch request queued")
        refused_batch = await served.chat(headers=bearer("sk-etl", "batch-late"))
        interactive = asyncio.create_task(served.chat(headers=bearer("sk-web-1", "interactive")))
        displaced = await waiting[1]  # the newest batch request gave its place
        # Its place is taken at once; the interactive request queues once tokenized (off the loop).
        await eventually(lambda: served.ctx.orchestrator.waiting == 2, "interactive request queued")
        for request_id in ("running", "interactive", "batch-0"):
            await served.release(request_id)
        statuses = [(await t).status_code for t in (running, interactive, waiting[0])]
    assert_openai_error(refused_batch, 429, code="queue_full")
    assert "gave its place to an interactive one" in assert_openai_error(displaced, 429, code="queue_full")["message"]
    assert statuses == [200, 200, 200]


async def test_an_interactive_request_refused_for_its_own_reasons_takes_no_ones_place(serve_app,
                                                                                     tmp_path: Path) -> None:
    # It claims the batch request's place, then its own token quota refuses it: the batch request keeps it.
    keys = tmp_path / "keys"
    keys.write_text("sk-etl name=etl priority=batch\nsk-tiny name=tiny tokens_per_minute=5 priority=interactive\n")
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys, concurrent_users=1,
                         max_queue_size=1) as served:
        running = asyncio.create_task(served.chat(headers=bearer("sk-etl", "running")))
        await served.started("running")
        queued = asyncio.create_task(served.chat(headers=bearer("sk-etl", "batch-0")))
        await eventually(lambda: served.ctx.orchestrator.waiting == 1, "batch request queued")
        refused = await served.chat(chat_body("x" * 50), headers=bearer("sk-tiny", "tiny"))
        for request_id in ("running", "batch-0"):
            await served.release(request_id)
        statuses = [(await t).status_code for t in (running, queued)]
    assert_openai_error(refused, 429, code="rate_limit_exceeded")
    assert statuses == [200, 200]


async def test_a_wide_interactive_request_displaces_as_many_places_as_it_needs(serve_app, keys_file: Path) -> None:
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file, concurrent_users=2,
                         max_queue_size=2) as served:
        orchestrator = served.ctx.orchestrator
        running = [asyncio.create_task(served.chat(headers=bearer("sk-etl", f"running-{i}"))) for i in range(2)]
        for i in range(2):
            await served.started(f"running-{i}")
        queued = []
        for i in range(2):  # one at a time: a known order
            queued.append(asyncio.create_task(served.chat(headers=bearer("sk-etl", f"batch-{i}"))))
            await eventually(lambda i=i: orchestrator.waiting == i + 1, "batch request queued")
        wide = asyncio.create_task(served.chat(chat_body(n=2, temperature=0.7), headers=bearer("sk-web-1", "wide")))
        displaced = [await t for t in queued]  # 2 places needed: both batch requests give theirs
        await eventually(lambda: orchestrator.waiting == 2, "the wide request queued in their places")
        for request_id in ("running-0", "running-1", "wide"):
            await served.release(request_id)
        statuses = [(await t).status_code for t in (*running, wide)]
    for response in displaced:
        error = assert_openai_error(response, 429, code="queue_full")
        assert "gave its place to an interactive one" in error["message"]
    assert statuses == [200, 200, 200]


async def test_places_already_claimed_are_not_counted_twice(serve_app, keys_file: Path) -> None:
    # While the first interactive prompt is tokenized, its claimed batch place is leaving: a second interactive
    # request needs (and claims) only the one other batch place, instead of being refused for want of two.
    async with serve_app(FakeEngine(token_delay=HOLD), api_keys_file=keys_file, concurrent_users=1,
                         max_queue_size=2) as served:
        orchestrator = served.ctx.orchestrator
        running = asyncio.create_task(served.chat(headers=bearer("sk-etl", "running")))
        await served.started("running")
        queued = []
        for i in range(2):
            queued.append(asyncio.create_task(served.chat(headers=bearer("sk-etl", f"batch-{i}"))))
            await eventually(lambda i=i: orchestrator.waiting == i + 1, "batch request queued")
        tokenizer = served.engine.get_tokenizer()
        tokenizer.hold = threading.Event()
        tokenizer.entered.clear()
        try:
            first = asyncio.create_task(served.chat(headers=bearer("sk-web-1", "first")))
            await eventually(tokenizer.entered.is_set, "the first interactive prompt in the tokenizer")
            second = asyncio.create_task(served.chat(headers=bearer("sk-web-2", "second")))
            await eventually(lambda: orchestrator.preparing == 2, "the second interactive prompt admitted")
        finally:
            tokenizer.hold.set()
        displaced = [await t for t in queued]
        for request_id in ("running", "first", "second"):
            await served.release(request_id)
        statuses = [(await t).status_code for t in (running, first, second)]
    assert [r.status_code for r in displaced] == [429, 429]
    assert statuses == [200, 200, 200]


async def test_per_key_counters_cover_every_name_from_the_start(serve_app, keys_file: Path) -> None:
    async with serve_app(api_keys_file=keys_file) as served:
        metrics = render_metrics(served.ctx.metrics.registry).decode()
    for name in ("web", "etl", "metered", "single", "unnamed"):
        assert f'openchat_key_prompt_tokens_total{{key="{name}",model="openchat-3.5"}} 0.0' in metrics
    assert 'openchat_key_limit{key="web",limit="requests_per_minute",model="openchat-3.5"} 10.0' in metrics
    assert 'openchat_key_limit{key="single",limit="concurrent_requests",model="openchat-3.5"} 1.0' in metrics


async def test_without_keys_everyone_is_anonymous_and_unlimited(served: Served) -> None:
    answer = await served.chat()
    metrics = render_metrics(served.ctx.metrics.registry).decode()
    assert answer.status_code == 200
    assert not any(h.startswith("x-ratelimit") for h in answer.headers)
    assert 'openchat_key_requests_total{key="anonymous",model="openchat-3.5",outcome="ok"} 1.0' in metrics


async def test_the_page_reads_per_key_usage_refusals_and_what_is_left(serve_app, keys_file: Path) -> None:
    async with serve_app(api_keys_file=keys_file) as served:
        for _ in range(11):
            await served.chat(headers=bearer("sk-web-1"))
        anonymous = await served.client.get("/metrics/keys")
        rows = (await served.client.get("/metrics/keys", headers=bearer("sk-etl"))).json()["keys"]
    assert_openai_error(anonymous, 401)  # it names the teams: a key is needed, as for the API
    web = next(row for row in rows if row["key"] == "web")
    assert web["requests"] == {"ok": 10, "limited": 1}
    assert web["refusals"] == {"key_requests": 1}
    assert web["limits"] == {"requests": {"limit": 10, "remaining": 0}}
    assert web["priority"] == "interactive"
    assert web["completion_tokens"] == 10 * len("Hello from the fake engine.")
    assert {row["key"] for row in rows} == {"web", "etl", "metered", "single", "unnamed"}


async def test_the_request_log_names_the_key_never_the_key_itself(serve_app, keys_file: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hxp_enterprise_llm.requests"):
        async with serve_app(api_keys_file=keys_file) as served:
            await served.chat(headers=bearer("sk-etl", "logged"))
    [fields] = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "logged"]
    assert fields["key"] == "etl"
    assert "sk-etl" not in str(fields)
