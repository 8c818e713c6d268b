"""`PrioritySlots`: `capacity` generation slots, taken n at a time, waiters served by rank then arrival.

A slot is one sequence the engine generates: a request with `n` choices takes n. Waiters are served
strictly in (rank, arrival) order: lower rank first (interactive keys before batch keys), and within
a rank first come first served, so a wide request at the head is not starved by narrow ones behind it
that would fit sooner. Freed slots go straight to the head waiter, so a request arriving at that
moment cannot jump the queue. A waiter that gives up (queue timeout, client gone) leaves; if slots were
handed to it in the same instant, they go on to the next waiter.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field


class Displaced(Exception):
    """A better-ranked request took this waiter's place in a full queue."""


@dataclass(order=True)
class _Waiter:
    rank: int
    seq: int
    size: int = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)


class PrioritySlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    def fits_now(self, n: int) -> bool:
        """Would `acquire(rank, n)` take its slots at once (nobody queued ahead, enough free)?"""
        return not any(not w.future.done() for w in self._waiters) and self.held + n <= self.capacity

    async def acquire(self, rank: int, n: int) -> None:
        if self.fits_now(n):
            self.held += n
            return
        waiter = _Waiter(rank, next(self._seq), n, asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(n)  # handed the slots as it gave up: pass them on
            else:
                self._drop(waiter)
            raise
        except Displaced:
            self._drop(waiter)
            raise

    def release(self, n: int) -> None:
        self.held -= n
        self._grant()

    def displace(self, rank: int) -> bool:
        """Refuse the newest of the worst-ranked waiters if it ranks below `rank`; True if one was."""
        pending = [w for w in self._waiters if not w.future.done() and w.rank > rank]
        if not pending:
            return False
        victim = max(pending, key=lambda w: (w.rank, w.seq))
        victim.future.set_exception(Displaced())
        return True

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

    def _drop(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)
        self._grant()  # a wide waiter leaving the head may let the ones behind it in
