"""`SlotPool`: `capacity` generation slots, taken n at a time, first come first served.

A slot is one sequence the engine generates: a request with `n` choices takes n. Waiters are served
strictly in arrival order, so a wide request at the head is not starved by narrow ones behind it
that would fit sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class SlotPool:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def fits_now(self, n: int) -> bool:
        """Would `acquire(n)` take its slots at once (nobody queued ahead, enough free)?"""
        return not self._waiters and self.held + n <= self.capacity

    async def acquire(self, n: int) -> None:
        if self.fits_now(n):
            self.held += n
            return
        entry = (n, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self.release(n)  # granted just as the waiter gave up: hand the slots on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # a wide waiter leaving the head may let the ones behind it in
            raise

    def release(self, n: int) -> None:
        self.held -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.held + self._waiters[0][0] <= self.capacity:
            n, future = self._waiters.popleft()
            if future.done():  # its waiter was cancelled; it cleans up after itself
                continue
            self.held += n
            future.set_result(None)
