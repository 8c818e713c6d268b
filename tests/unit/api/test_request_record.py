"""`RequestRecord` on its own: the figures every metric, log line and SLO verdict is read from.

The HTTP tests see these figures summed into counters; here each rule is pinned where a wrong figure
would hide: how tokens that arrive together share a gap, which finish reason wins across choices, the
first error winning, a record closed with no status, and the SLO's boundary.
"""

from __future__ import annotations

import pytest

from hxp_enterprise_llm.orchestration import request_record as request_record_module
from hxp_enterprise_llm.orchestration.request_record import STATUS_CLIENT_GONE, RequestRecord
from hxp_enterprise_llm.schemas.errors import QueueTimeoutError, RequestTimeoutError
from hxp_enterprise_llm.schemas.outcomes import FinishReason, Outcome
from hxp_enterprise_llm.services.core.engine import TokenDelta


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(request_record_module.time, "monotonic", fake)
    return fake


def delta(completion_tokens: int, *, prompt_tokens: int = 7, cached: int = 0, index: int = 0,
          finish: FinishReason | None = None) -> TokenDelta:
    return TokenDelta("x", (1,), prompt_tokens, completion_tokens, finish, index, cached_tokens=cached)


def record(**fields: object) -> RequestRecord:
    return RequestRecord("req-1", "chat", arrived=0.0, **fields)  # type: ignore[arg-type]


class Slot:
    def __init__(self) -> None:
        self.releases = 0

    def release(self) -> None:
        self.releases += 1


def test_first_token_and_gaps_with_tokens_that_arrive_together(clock: Clock) -> None:
    rec = record()
    clock.now = 1.0
    rec.observe(delta(3))  # the first delta carries 3 tokens: TTFT, and no gap before it
    assert (rec.first_token, rec.last_token, rec.inter_token_gaps, rec.ttft) == (1.0, 1.0, [], 1.0)
    clock.now = 1.5
    rec.observe(delta(4))
    clock.now = 2.5
    rec.observe(delta(6))  # two tokens in one delta share the second's gap
    assert rec.inter_token_gaps == [0.5, 0.5, 0.5]
    clock.now = 4.0
    rec.observe(delta(6, finish=FinishReason.STOP))  # no new token: no gap, the last token's time stays
    assert rec.inter_token_gaps == [0.5, 0.5, 0.5]
    assert rec.last_token == 2.5
    assert rec.completion_tokens == 6
    assert rec.prompt_tokens == 7


def test_gaps_are_measured_within_each_choice(clock: Clock) -> None:
    # n=2: each engine step yields one token per choice, moments apart. Measured across choices the gaps
    # would be one step and one near zero, pulling the service-wide inter-token latency towards zero.
    rec = record(choices=2)
    clock.now = 1.0
    rec.observe(delta(1, index=0))
    rec.observe(delta(2, index=1))  # the second choice's first token: no gap before it
    assert rec.inter_token_gaps == []
    clock.now = 1.5
    rec.observe(delta(3, index=0))
    rec.observe(delta(4, index=1))
    clock.now = 2.5
    rec.observe(delta(6, index=1))  # two tokens of choice 1 together share its gap
    assert rec.inter_token_gaps == [0.5, 0.5, 0.5, 0.5]
    assert (rec.first_token, rec.last_token) == (1.0, 2.5)


def test_cached_tokens_keep_the_largest_report(clock: Clock) -> None:
    rec = record()
    for cached in (0, 5, 0, 3):
        rec.observe(delta(1, cached=cached))
    assert rec.cached_tokens == 5


def test_with_n_choices_cached_tokens_are_what_every_choice_found_cached(clock: Clock) -> None:
    # A choice scheduled after its sibling finds the prompt the sibling has just computed in the cache.
    fresh = record(choices=3)
    for index, cached in ((0, 0), (1, 0), (2, 384), (2, 384), (0, 0)):
        fresh.observe(delta(1 + index, index=index, cached=cached))
    assert fresh.cached_tokens == 0
    warm = record(choices=2)
    for index, cached in ((0, 384), (1, 256), (1, 384)):
        warm.observe(delta(1 + index, index=index, cached=cached))
    assert warm.cached_tokens == 384


def test_the_finish_reason_waits_for_every_choice_and_abort_beats_length_beats_stop(clock: Clock) -> None:
    cases = [((FinishReason.STOP, FinishReason.STOP), FinishReason.STOP),
             ((FinishReason.STOP, FinishReason.LENGTH), FinishReason.LENGTH),
             ((FinishReason.LENGTH, FinishReason.ABORT), FinishReason.ABORT),
             ((FinishReason.ABORT, FinishReason.STOP), FinishReason.ABORT)]
    for reasons, expected in cases:
        rec = record(choices=2)
        rec.observe(delta(1, index=0, finish=reasons[0]))
        assert rec.finish_reason is None  # one of two choices still generating
        rec.observe(delta(2, index=1, finish=reasons[1]))
        assert rec.finish_reason is expected, reasons


def test_mark_aborted_cuts_off_only_the_choices_still_running() -> None:
    rec = record(choices=3)
    rec.finish_reasons[1] = FinishReason.STOP
    rec.mark_aborted()
    assert rec.finish_reasons == {0: FinishReason.ABORT, 1: FinishReason.STOP, 2: FinishReason.ABORT}


def test_the_first_error_wins() -> None:
    rec = record()
    rec.fail(RequestTimeoutError("deadline"))
    rec.fail(QueueTimeoutError("later"))
    assert isinstance(rec.error, RequestTimeoutError)
    rec.close(504)
    assert rec.outcome is Outcome.TIMEOUT


def test_close_without_a_status_is_the_client_leaving_and_the_slot_is_released_once(clock: Clock) -> None:
    slot = Slot()
    rec = record(slot=slot)
    clock.now = 3.0
    rec.close(None)
    assert (rec.status, rec.outcome, rec.finished, rec.e2e) == (STATUS_CLIENT_GONE, Outcome.DISCONNECTED, 3.0, 3.0)
    assert slot.releases == 1
    assert rec.slot is None
    assert not rec.counts_for_slo()


@pytest.mark.parametrize(("finish", "status", "outcome"), [
    (FinishReason.STOP, 200, Outcome.OK),
    (FinishReason.LENGTH, 200, Outcome.OK),
    (FinishReason.STOP, STATUS_CLIENT_GONE, Outcome.DISCONNECTED),  # the answer ended, the response did not
    (FinishReason.ABORT, 200, Outcome.ABORTED),
    (None, 200, Outcome.DISCONNECTED),
])
def test_the_outcome_of_an_answer_without_error(finish: FinishReason | None, status: int, outcome: Outcome) -> None:
    rec = record()
    if finish is not None:
        rec.finish_reasons[0] = finish
    rec.close(status)
    assert rec.outcome is outcome


def test_timings_are_none_until_their_moment() -> None:
    rec = record()
    assert (rec.queue_wait, rec.ttft, rec.e2e) == (None, None, None)
    assert not rec.counts_for_slo()  # not closed yet
    rec.admitted = 0.25
    assert rec.queue_wait == 0.25


def test_the_slo_is_a_complete_answer_within_the_target_inclusive(clock: Clock) -> None:
    rec = record()
    rec.finish_reasons[0] = FinishReason.STOP
    clock.now = 2.0
    rec.close(200)
    assert rec.counts_for_slo()
    assert rec.met_slo(2.0)
    assert not rec.met_slo(1.999)
    failed = record()
    failed.fail(RequestTimeoutError("deadline"))
    failed.close(504)
    assert failed.counts_for_slo()
    assert not failed.met_slo(60.0)
