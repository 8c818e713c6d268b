"""`PrioritySlots`: a semaphore whose waiters are served by rank (lower first), then in arrival order.

A freed slot is handed straight to the best waiter, so a request arriving at that moment cannot jump
the queue. A waiter that gives up (queue timeout, client gone) leaves; if a slot was handed to it in
the same instant, the slot goes on to the next waiter.
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
    future: asyncio.Future[None] = field(compare=False)


class PrioritySlots:
    def __init__(self, capacity: int) -> None:
        self._free = capacity
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    def locked(self) -> bool:
        """No slot for a newcomer now (as asyncio.Semaphore.locked: none free, or others waiting)."""
        return self._free == 0 or any(not w.future.done() for w in self._waiters)

    async def acquire(self, rank: int = 0) -> None:
        if self._free > 0 and not self.locked():
            self._free -= 1
            return
        waiter = _Waiter(rank, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release()  # handed a slot as it gave up: pass it on
            else:
                self._drop(waiter)
            raise
        except Displaced:
            self._drop(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = heapq.heappop(self._waiters)
            if not waiter.future.done():
                waiter.future.set_result(None)
                return
        self._free += 1

    def displace(self, rank: int) -> bool:
        """Refuse the newest of the worst-ranked waiters if it ranks below `rank`; True if one was."""
        pending = [w for w in self._waiters if not w.future.done() and w.rank > rank]
        if not pending:
            return False
        victim = max(pending, key=lambda w: (w.rank, w.seq))
        victim.future.set_exception(Displaced())
        return True

    def _drop(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)
