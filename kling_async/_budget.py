"""The account slot budget: how many task slots this client lets be in use at once.

An image task occupies ``n`` of the account's parallel slots from submission until it ends.
The budget starts at ``max_in_flight`` (or unbounded), shrinks to what is in use when the API
answers 1303 (over the parallel-task limit), and grows back slowly as tasks end without one.
"""

from __future__ import annotations

import asyncio
import collections
import math

from kling_async._errors import RateLimitError

#: Finished tasks (in multiples of the limit) per slot of growth after a 1303.
_GROWTH_WINDOW = 2


class SlotBudget:
    """An adaptive counting semaphore over the account's parallel-task slots."""

    def __init__(self, max_in_flight: int | None) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1 (or None)")
        self.cap: float = math.inf if max_in_flight is None else float(max_in_flight)
        self.limit: float = self.cap
        self.in_use = 0
        self.limit_hits = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def __repr__(self) -> str:
        return f"<SlotBudget in_use={self.in_use} limit={self.limit:g} cap={self.cap:g}>"

    def _fits(self, slots: int) -> bool:
        # A request larger than the whole budget still runs, alone.
        return self.in_use == 0 or self.in_use + slots <= self.limit

    async def acquire(self, slots: int) -> None:
        """Wait until ``slots`` fit in the budget, then take them (first come, first served)."""
        if not self._waiters and self._fits(slots):
            self.in_use += slots
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (slots, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                # Granted just as we were cancelled: hand the slots back.
                self.in_use -= slots
            elif entry in self._waiters:  # another cleanup may have dropped it already
                self._waiters.remove(entry)
            self._wake()
            raise

    def release(self, slots: int, *, finished: bool = False) -> None:
        """Give back ``slots``; ``finished`` means the task ended normally (the budget may grow)."""
        self.in_use = max(0, self.in_use - slots)
        if finished and self.limit < self.cap:
            # Additive increase: one slot per _GROWTH_WINDOW × limit finished tasks, so that
            # probing a server limit we sit at costs about one 1303 per such window.
            self.limit = min(self.cap, self.limit + 1 / (_GROWTH_WINDOW * max(self.limit, 1)))
        self._wake()

    def shrink(self, rejected_slots: int) -> None:
        """Record a 1303 for a submission holding ``rejected_slots``.

        The new limit is what else is in use (at least 1).
        """
        self.limit_hits += 1
        # Replies to a burst arrive together: keep the lowest level any of them saw.
        self.limit = min(self.limit, max(1.0, float(self.in_use - rejected_slots)))

    def _wake(self) -> None:
        while self._waiters:
            slots, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(slots):
                return
            self._waiters.popleft()
            self.in_use += slots
            future.set_result(None)


class Slots:
    """The budget slots one submission holds while it is being sent."""

    def __init__(self, budget: SlotBudget, count: int) -> None:
        self.budget = budget
        self.count = count
        self.held = False

    async def acquire(self) -> None:
        await self.budget.acquire(self.count)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.budget.release(self.count)

    async def wait_after_limit(self, _: RateLimitError) -> bool:
        """After a 1303: shrink the budget, then queue again behind our own tasks."""
        others = self.budget.in_use - self.count
        self.budget.shrink(self.count)
        self.release()
        await self.acquire()
        return others > 0
