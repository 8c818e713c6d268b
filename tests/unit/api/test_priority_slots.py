"""`PrioritySlots` on its own: who gets freed slots, in what order, and what a waiter that leaves passes on.

The admission tests drive it through HTTP; these pin the rules the HTTP tests can only reach by timing:
the exact capacity boundary, strict (rank, arrival) order behind a wide head, which waiter a better rank
displaces, and slots handed to a waiter in the instant it gives up.
"""

from __future__ import annotations

import asyncio

import pytest

from hxp_enterprise_llm.orchestration.admission import Displaced, PrioritySlots

pytestmark = pytest.mark.anyio


async def settle() -> None:
    """Let every task that can run, run (futures resolved by release/_grant wake their waiters)."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiting(slots: PrioritySlots, rank: int, n: int) -> asyncio.Task[None]:
    return asyncio.ensure_future(slots.acquire(rank, n))


async def test_slots_are_taken_up_to_exactly_the_capacity_and_no_further() -> None:
    slots = PrioritySlots(4)
    assert slots.fits_now(4)
    assert not slots.fits_now(5)
    await slots.acquire(0, 3)
    assert slots.held == 3
    assert slots.fits_now(1)
    assert not slots.fits_now(2)
    await slots.acquire(0, 1)  # exactly full is allowed
    assert slots.held == 4
    assert not slots.fits_now(1)
    blocked = waiting(slots, 0, 1)
    await settle()
    assert not blocked.done()
    assert slots.held == 4
    slots.release(1)
    await settle()
    assert blocked.done()
    assert slots.held == 4


async def test_a_freed_slot_goes_to_the_head_waiter_when_it_fits_exactly() -> None:
    slots = PrioritySlots(3)
    await slots.acquire(0, 3)
    wide = waiting(slots, 0, 2)
    await settle()
    slots.release(1)
    await settle()
    assert not wide.done()
    assert slots.held == 2
    slots.release(1)
    await settle()
    assert wide.done()
    assert slots.held == 3


async def test_nobody_jumps_a_queue_even_when_their_request_would_fit() -> None:
    slots = PrioritySlots(2)
    await slots.acquire(0, 1)
    wide = waiting(slots, 0, 2)
    await settle()
    assert slots.held == 1
    assert not slots.fits_now(1)
    narrow = waiting(slots, 0, 1)
    await settle()
    assert not wide.done()
    assert not narrow.done()
    slots.release(1)
    await settle()
    assert wide.done()
    assert not narrow.done()
    assert slots.held == 2
    slots.release(2)
    await settle()
    assert narrow.done()
    assert slots.held == 1


async def test_waiters_are_served_by_rank_then_arrival() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    order: list[str] = []

    async def take(name: str, rank: int) -> None:
        await slots.acquire(rank, 1)
        order.append(name)

    tasks = [asyncio.ensure_future(take(name, rank)) for name, rank in
             (("batch-1", 1), ("interactive-1", 0), ("batch-2", 1), ("interactive-2", 0))]
    await settle()
    for _ in tasks:
        slots.release(1)
        await settle()
    assert order == ["interactive-1", "interactive-2", "batch-1", "batch-2"]


def displace(slots: PrioritySlots, rank: int, places: int = 1) -> bool:
    claimed = slots.claim(rank, places)
    if claimed is None:
        return False
    slots.displace(claimed)
    return True


async def test_displace_refuses_the_newest_of_the_worst_ranked_and_only_below_the_rank() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    old_batch, worse, interactive, new_batch = (waiting(slots, rank, 1) for rank in (1, 2, 0, 1))
    await settle()
    assert not displace(slots, 2)  # nobody ranks below 2
    assert displace(slots, 0)
    await settle()
    assert isinstance(worse.exception(), Displaced)  # the worst rank goes first, though not the newest
    assert displace(slots, 0)
    await settle()
    assert isinstance(new_batch.exception(), Displaced)
    assert not old_batch.done()
    assert not displace(slots, 1)  # an equal rank is never displaced
    assert not interactive.done()
    slots.release(1)
    await settle()
    assert interactive.done()
    assert not old_batch.done()
    assert slots.held == 1


async def test_a_claim_takes_as_many_waiters_as_the_places_it_needs_or_none() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    older, newer, wide = (waiting(slots, 1, size) for size in (1, 1, 2))
    await settle()
    assert slots.claim(0, 5) is None  # 4 places below rank 0: nobody is claimed for a need of 5
    assert slots.claimed_places() == 0
    claimed = slots.claim(0, 3)
    assert claimed is not None
    assert [w.size for w in claimed] == [2, 1]  # the newest first, until 3 places
    assert slots.claimed_places() == 3
    assert slots.claim(0, 2) is None  # claimed waiters are not claimed twice: 1 place is left
    slots.unclaim(claimed)  # the claimant was refused itself: they keep their places
    assert slots.claimed_places() == 0
    await settle()
    assert not any(task.done() for task in (older, newer, wide))
    again = slots.claim(0, 1)
    assert again is not None
    slots.displace(again)
    await settle()
    assert isinstance(wide.exception(), Displaced)
    assert not older.done()
    assert not newer.done()


async def test_refuse_waiting_ends_every_waiter_at_once_with_its_own_error() -> None:
    # At a drain's deadline: they must not wait for the slots the stopped generations are about to free.
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    first, second = waiting(slots, 0, 1), waiting(slots, 1, 1)
    await settle()
    slots.refuse_waiting(lambda: RuntimeError("stopping"))
    await settle()
    errors = [task.exception() for task in (first, second)]
    assert all(isinstance(error, RuntimeError) for error in errors)
    assert errors[0] is not errors[1]  # one exception each: a shared one would collect both tracebacks
    assert slots.held == 1
    slots.release(1)
    assert slots.held == 0  # nobody was left to take the freed slot


async def test_a_displaced_waiter_leaves_the_queue_and_lets_the_next_in() -> None:
    slots = PrioritySlots(2)
    await slots.acquire(0, 1)
    wide = waiting(slots, 1, 2)  # cannot fit while 1 is held
    await settle()
    narrow = waiting(slots, 0, 1)
    await settle()
    assert not narrow.done()  # queued behind a pending waiter, although one slot is free
    assert displace(slots, 0)
    await settle()
    assert isinstance(wide.exception(), Displaced)
    assert narrow.done()
    assert slots.held == 2


async def test_a_waiter_that_gives_up_leaves_and_the_one_behind_moves_up() -> None:
    slots = PrioritySlots(2)
    await slots.acquire(0, 1)
    wide = waiting(slots, 0, 2)
    await settle()
    narrow = waiting(slots, 0, 1)
    await settle()
    wide.cancel()
    await settle()
    assert wide.cancelled()
    assert narrow.done()
    assert slots.held == 2


async def test_slots_handed_to_a_waiter_as_it_gives_up_go_on_to_the_next() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    first = waiting(slots, 0, 1)
    second = waiting(slots, 0, 1)
    await settle()
    slots.release(1)  # grants `first` (its future is done) ...
    first.cancel()  # ... but it is cancelled before it runs again
    await settle()
    assert first.cancelled()
    assert second.done()
    assert slots.held == 1


async def test_a_cancelled_waiter_with_nothing_granted_frees_nothing() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    gone = waiting(slots, 0, 1)
    await settle()
    gone.cancel()
    await settle()
    assert gone.cancelled()
    assert slots.held == 1
    slots.release(1)
    await settle()
    assert slots.held == 0
    assert slots.fits_now(1)


async def test_slots_freed_in_the_instant_a_waiter_gives_up_skip_it_and_it_leaves_cleanly() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0, 1)
    gone = waiting(slots, 0, 1)
    behind = waiting(slots, 0, 1)
    await settle()
    gone.cancel()  # its future is cancelled now; its own clean-up runs only when the task next runs ...
    slots.release(1)  # ... so the grant meets a head that is already done: it skips it for the one behind
    assert slots.held == 1
    await settle()
    assert behind.done()
    assert behind.exception() is None
    with pytest.raises(asyncio.CancelledError):
        await gone  # its clean-up finds itself already out of the queue: no error of its own
    slots.release(1)
    assert slots.held == 0
    assert slots.fits_now(1)
