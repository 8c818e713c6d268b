"""Per-key quotas on their own, on a clock the test holds: the exact edges of each limit and window,
what a refusal tells the client, and how a request is settled (charged, or given back).

test_tenants.py drives the same rules through HTTP; here each edge is pinned where a wrong figure
would reach a client as a wrong Retry-After or a wrong x-ratelimit-* header.
"""

from __future__ import annotations

from collections import deque

import pytest

from hxp_enterprise_llm.orchestration.key_policy import KeyPolicy, WindowState
from hxp_enterprise_llm.orchestration.quotas import (
    WINDOW_SECONDS,
    LocalQuotaStore,
    Quotas,
    _tokens_reset,
    format_duration,
    rate_limit_headers,
)
from hxp_enterprise_llm.orchestration.request_record import RequestRecord
from hxp_enterprise_llm.schemas.errors import RateLimitError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record_of(policy: KeyPolicy) -> RequestRecord:
    return RequestRecord("req", "chat", key=policy)


def test_concurrency_counts_running_requests_and_never_goes_below_zero() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", concurrent_requests=2)
    assert store.try_take(policy, 1, 0.0) is None
    assert store.try_take(policy, 1, 0.0) is None
    assert store.try_take(policy, 1, 0.0) == "concurrency"
    store.release("k")
    assert store.try_take(policy, 1, 0.0) is None
    for _ in range(5):
        store.release("k")  # more releases than requests: the count stops at 0
    store.release("unknown")  # a name never seen: nothing to do
    assert store.try_take(policy, 1, 0.0) is None
    assert store.try_take(policy, 1, 0.0) is None
    assert store.try_take(policy, 1, 0.0) == "concurrency"


def test_a_window_holds_exactly_the_limit_and_an_entry_leaves_it_sixty_seconds_later() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", requests_per_minute=2)
    assert store.try_take(policy, 0, 0.0) is None
    assert store.try_take(policy, 0, 10.0) is None
    assert store.try_take(policy, 0, WINDOW_SECONDS - 0.001) == "requests"
    assert store.try_take(policy, 0, WINDOW_SECONDS) is None  # the entry of t=0 has just left


def test_tokens_fit_up_to_the_limit_inclusive_and_a_refusal_takes_nothing() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", requests_per_minute=10, tokens_per_minute=100)
    assert store.try_take(policy, 60, 0.0) is None
    assert store.try_take(policy, 41, 1.0) == "tokens"
    assert store.try_take(policy, 40, 2.0) is None  # 60 + 40 == 100
    assert store.try_take(policy, 1, 3.0) == "tokens"
    state = store.state(policy, 3.0)
    assert state["requests"].remaining == 8  # the refused ones took no request
    assert state["tokens"].remaining == 0


def test_the_limits_are_checked_concurrency_then_requests_then_tokens() -> None:
    policy = KeyPolicy("k", requests_per_minute=1, tokens_per_minute=10, concurrent_requests=1)
    store = LocalQuotaStore()
    assert store.try_take(policy, 10, 0.0) is None
    assert store.try_take(policy, 10, 1.0) == "concurrency"  # every limit is hit: the first one named
    store.release("k")
    assert store.try_take(policy, 10, 2.0) == "requests"


def test_completion_tokens_are_added_only_when_there_are_some() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", tokens_per_minute=100)
    store.add_tokens("k", 0, 0.0)
    store.add_tokens("k", -5, 0.0)
    assert store.state(policy, 0.0)["tokens"] == WindowState(100, 100, 0.0)
    store.add_tokens("k", 30, 10.0)
    assert store.state(policy, 20.0)["tokens"] == WindowState(100, 70, 50.0)


def test_give_back_undoes_exactly_the_take_it_names() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", requests_per_minute=5, tokens_per_minute=100)
    store.give_back("never-seen", 10, 0.0)  # nothing to undo, no error
    assert store.try_take(policy, 10, 1.0) is None
    assert store.try_take(policy, 20, 2.0) is None
    store.give_back("k", 20, 1.0)  # not a take that happened: nothing changes
    assert store.state(policy, 3.0)["tokens"].remaining == 70
    store.give_back("k", 10, 1.0)
    state = store.state(policy, 3.0)
    assert state["requests"].remaining == 4
    assert state["tokens"].remaining == 80


def test_request_window_reset_is_the_oldest_entry_when_full_else_the_newest() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", requests_per_minute=2)
    assert store.state(policy, 5.0)["requests"] == WindowState(2, 2, 0.0)  # empty: whole now
    assert store.try_take(policy, 0, 10.0) is None
    assert store.state(policy, 15.0)["requests"] == WindowState(2, 1, 55.0)  # whole when t=10 leaves
    assert store.try_take(policy, 0, 20.0) is None
    assert store.state(policy, 25.0)["requests"] == WindowState(2, 0, 45.0)  # refused until t=10 leaves


def test_tokens_reset_is_when_enough_of_the_oldest_tokens_have_left() -> None:
    entries = deque([(0.0, 30), (10.0, 30), (20.0, 40)])
    assert _tokens_reset(deque(), 50, 30.0) == 0.0
    assert _tokens_reset(entries, 30, 30.0) == 30.0  # the first entry alone frees 30
    assert _tokens_reset(entries, 50, 30.0) == 40.0  # needs the first two
    assert _tokens_reset(entries, 0, 30.0) == 50.0  # nothing in excess: until the window is empty
    assert _tokens_reset(entries, 1000, 30.0) == 50.0  # never enough: the last entry's time
    assert _tokens_reset(entries, 50, 100.0) == 0.0  # never negative


def test_a_refusal_says_when_to_retry_rounded_up() -> None:
    clock = Clock()
    quotas, policy = Quotas(clock=clock), KeyPolicy("team", requests_per_minute=1)
    quotas.charge_prompt(record_of(policy), 5)
    clock.now = 15.5
    with pytest.raises(RateLimitError) as refused:
        quotas.charge_prompt(record_of(policy), 5)
    assert refused.value.headers == {"Retry-After": "45"}  # 44.5 s until t=0 leaves, rounded up
    assert refused.value.error_type == "requests"
    assert "requests per minute: limit 1" in refused.value.message


def test_a_concurrency_refusal_asks_for_one_second() -> None:
    quotas, policy = Quotas(clock=Clock()), KeyPolicy("team", concurrent_requests=1)
    quotas.charge_prompt(record_of(policy), 5)
    with pytest.raises(RateLimitError) as refused:
        quotas.charge_prompt(record_of(policy), 5)
    assert refused.value.headers == {"Retry-After": "1"}
    assert "concurrent_requests=1" in refused.value.message


def test_a_token_refusal_waits_for_room_for_this_prompt() -> None:
    clock = Clock()
    quotas, policy = Quotas(clock=clock), KeyPolicy("team", tokens_per_minute=100)
    first = record_of(policy)
    quotas.charge_prompt(first, 50)  # t=0
    clock.now = 10.0
    quotas.charge_prompt(record_of(policy), 40)  # t=10
    clock.now = 20.0
    with pytest.raises(RateLimitError) as refused:
        quotas.charge_prompt(record_of(policy), 30)  # needs 20 more: the t=0 entry must leave (at 60)
    assert refused.value.headers == {"Retry-After": "40"}
    assert refused.value.error_type == "tokens"
    assert "tokens per minute (prompt + completion): limit 100" in refused.value.message


def test_a_prompt_larger_than_the_whole_budget_is_told_it_can_never_be_admitted() -> None:
    quotas, policy = Quotas(clock=Clock()), KeyPolicy("team", tokens_per_minute=100)
    record = record_of(policy)
    with pytest.raises(RateLimitError) as refused:
        quotas.charge_prompt(record, 101)
    assert "larger than key 'team''s tokens_per_minute (100)" in refused.value.message
    assert "Retry-After" not in refused.value.headers  # retrying cannot help
    assert record.rate_limits["tokens"].remaining == 100


def test_settling_charges_the_completion_once_or_gives_back_what_never_ran() -> None:
    clock = Clock()
    quotas, policy = Quotas(clock=clock), KeyPolicy("team", requests_per_minute=10, tokens_per_minute=1000,
                                                    concurrent_requests=5)
    ran, never_ran = record_of(policy), record_of(policy)
    quotas.charge_prompt(ran, 100)
    quotas.charge_prompt(never_ran, 200)
    assert ran.charge is not None
    assert ran.rate_limits["tokens"].remaining == 900
    ran.admitted, ran.completion_tokens = 1.0, 50
    clock.now = 2.0
    quotas.on_finished(ran)
    quotas.on_finished(ran)  # settled once only: no second completion charge or release
    quotas.on_finished(never_ran)  # refused in the queue: the request and its prompt come back
    state = quotas.store.state(policy, 3.0)
    assert state["requests"].remaining == 9
    assert state["tokens"].remaining == 1000 - 100 - 50
    quotas.on_finished(record_of(policy))  # never charged: nothing to settle


def test_limits_of_a_request_refused_before_the_check_are_the_keys_window_now() -> None:
    clock = Clock()
    quotas, policy = Quotas(clock=clock), KeyPolicy("team", requests_per_minute=3)
    quotas.charge_prompt(record_of(policy), 1)
    refused_early = record_of(policy)
    assert quotas.limits_of(refused_early) == {"requests": WindowState(3, 2, 60.0)}
    assert quotas.limits_of(record_of(KeyPolicy("free"))) == {}  # no limits: no headers


def test_headers_and_durations_read_as_openai_writes_them() -> None:
    assert [format_duration(s) for s in (0.0, 0.999, 1.0, 59.5, 60.0, 61.0)] == \
        ["0ms", "999ms", "1s", "1m0s", "1m0s", "1m1s"]
    assert rate_limit_headers({"tokens": WindowState(100, 40, 6.0)}) == {
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "40", "x-ratelimit-reset-tokens": "6s"}


def test_a_reserved_request_whose_prompt_does_not_fit_is_given_back_whole() -> None:
    """The request is taken before its prompt is tokenized (reserve), the prompt once known (charge_prompt):
    a prompt over the token budget leaves neither the request nor a running count behind."""
    clock = Clock()
    quotas = Quotas(clock=clock)
    policy = KeyPolicy("team", requests_per_minute=5, tokens_per_minute=100, concurrent_requests=1)
    earlier = record_of(policy)
    quotas.charge_prompt(earlier, 70)
    quotas.on_finished(earlier)  # ended before admission: given back
    assert quotas.store.state(policy, 0.0)["requests"].remaining == 5
    first = record_of(policy)
    quotas.reserve(first)
    assert quotas.store.state(policy, 0.0)["requests"].remaining == 4
    with pytest.raises(RateLimitError) as refused:
        quotas.reserve(record_of(policy))  # concurrency: refused before any prompt
    assert "concurrent_requests=1" in refused.value.message
    clock.now = 1.0
    quotas.charge_prompt(first, 60)
    assert first.charge is not None
    assert (first.charge.prompt_tokens, first.charge.taken_at) == (60, 0.0)
    quotas.store.release("team")
    second = record_of(policy)
    quotas.reserve(second)
    with pytest.raises(RateLimitError) as refused:
        quotas.charge_prompt(second, 41)  # 60 + 41 > 100
    assert refused.value.error_type == "tokens"
    assert second.charge is None
    state = quotas.store.state(policy, 2.0)
    assert (state["requests"].remaining, state["tokens"].remaining) == (4, 40)
    quotas.reserve(record_of(policy))  # the refused one's running count was released too


def test_a_prompt_is_charged_in_its_requests_place_in_the_window() -> None:
    store, policy = LocalQuotaStore(), KeyPolicy("k", tokens_per_minute=100)
    assert store.try_take(policy, 0, 0.0) is None
    store.add_tokens("k", 30, 5.0)
    assert store.try_add_prompt(policy, 50, 0.0, 10.0) == 0.0
    assert store.try_add_prompt(policy, 21, 0.0, 10.0) is None  # refused: nothing taken
    assert store.state(policy, 10.0)["tokens"] == WindowState(100, 20, 55.0)
    assert store.state(policy, WINDOW_SECONDS)["tokens"].remaining == 70  # the prompt left with its request
    # A request whose entry left the window while its prompt was tokenized: charged now, given back by that time.
    assert store.try_take(policy, 0, 100.0) is None
    assert store.try_add_prompt(policy, 40, 100.0, 170.0) == 170.0
    assert store.state(policy, 170.0)["tokens"].remaining == 60
    store.give_back("k", 40, 100.0, 170.0)
    assert store.state(policy, 170.0)["tokens"].remaining == 100
