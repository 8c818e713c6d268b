"""`PrioritySlots`: `capacity` generation slots, taken n at a time, waiters served by rank then arrival.

A slot is one sequence the engine generates: a request with `n` choices takes n. Waiters are served
strictly in (rank, arrival) order: lower rank first (interactive keys before batch keys), and within
a rank first come first served, so a wide request at the head is not starved by narrow ones behind it
that would fit sooner. Freed slots go straight to the head waiter, so a request arriving at that
moment cannot jump the queue. A waiter that gives up (queue timeout, client gone) leaves; if slots were
handed to it in the same instant, they go on to the next waiter.

A better-ranked newcomer to a full queue first *claims* the places of worse-ranked waiters (the newest of
the worst first), and displaces them only once its own checks have passed: a request then refused for
its own reasons (its quota, its prompt, its client gone) costs nobody their place.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


class Displaced(Exception):
    """A better-ranked request took this waiter's place in a full queue."""


@dataclass(order=True)
class Waiter:
    rank: int
    seq: int
    size: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)
    claimed: bool = field(default=False, compare=False)  # a better-ranked newcomer will displace it


class PrioritySlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def free_now(self) -> int:
        """Slots a newcomer could take at once: none while anyone waits (they are served first)."""
        return 0 if any(not w.future.done() for w in self._waiters) else self.capacity - self.held

    def fits_now(self, n: int) -> bool:
        """Would `acquire(rank, n)` take its slots at once (nobody queued ahead, enough free)?"""
        return n <= self.free_now()

    def claimed_places(self) -> int:
        """Queue places of waiters already claimed by a newcomer: they are leaving."""
        return sum(w.size for w in self._waiters if w.claimed and not w.future.done())

    async def acquire(self, rank: int, n: int) -> None:
        if self.fits_now(n):
            self.held += n
            return
        waiter = Waiter(rank, next(self._seq), n, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(n)  # handed the slots as it gave up: pass them on
            else:
                self._drop(waiter)
            raise
        except Exception:  # displaced, or refused by refuse_waiting
            self._drop(waiter)
            raise

    def release(self, n: int) -> None:
        self.held -= n
        self._grant()

    def claim(self, rank: int, places: int) -> list[Waiter] | None:
        """Claim waiters ranked below `rank`, the newest of the worst-ranked first, until they hold
        `places` queue places; None (and nothing claimed) if all of them together hold fewer."""
        pending = sorted((w for w in self._waiters if not w.future.done() and not w.claimed and w.rank > rank),
                         key=lambda w: (w.rank, w.seq), reverse=True)
        claimed: list[Waiter] = []
        freed = 0
        for waiter in pending:
            if freed >= places:
                break
            claimed.append(waiter)
            freed += waiter.size
        if freed < places:
            return None
        for waiter in claimed:
            waiter.claimed = True
        return claimed

    def displace(self, claimed: list[Waiter]) -> None:
        """Refuse the claimed waiters that still wait (one granted its slots meanwhile has left anyway)."""
        for waiter in claimed:
            if not waiter.future.done():
                waiter.future.set_exception(Displaced())

    @staticmethod
    def unclaim(claimed: list[Waiter]) -> None:
        """The newcomer was refused itself: the claimed keep their places."""
        for waiter in claimed:
            waiter.claimed = False

    def refuse_waiting(self, error: Callable[[], Exception]) -> None:
        """Every waiter leaves with its own `error()` (the service stops before they could start)."""
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error())

    def _grant(self) -> None:
        while self._waiters:
            head = self._waiters[0]
            if head.future.done():  # cancelled or displaced: its waiter cleans up after itself
                heapq.heappop(self._waiters)
                continue
            if self.held + head.size > self.capacity:
                return
            heapq.heappop(self._waiters)
            self.held += head.size
            head.future.set_result(None)

    def _drop(self, waiter: Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)
        self._grant()  # a wide waiter leaving the head may let the ones behind it in
