"""The adaptive slot budget: FIFO waiting, shrinking on 1303, growing back, cancellation."""

from __future__ import annotations

import asyncio
import math

import pytest

import kling_async as ka
from kling_async._budget import SlotBudget, Slots


async def settle() -> None:
    """Let every ready callback and task run (a few loop turns, no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


def start(budget: SlotBudget, slots: int, log: list[str], name: str) -> asyncio.Task[None]:
    async def acquire() -> None:
        await budget.acquire(slots)
        log.append(name)

    return asyncio.ensure_future(acquire())


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3])
def test_max_in_flight_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        SlotBudget(bad)


def test_unbounded_by_default() -> None:
    budget = SlotBudget(None)
    assert budget.limit == math.inf
    assert budget.cap == math.inf
    assert budget.in_use == 0


async def test_unbounded_budget_never_waits() -> None:
    budget = SlotBudget(None)
    for _ in range(1000):
        await budget.acquire(9)
    assert budget.in_use == 9000


# --- acquire / release --------------------------------------------------------------------


async def test_acquire_within_budget_is_immediate() -> None:
    budget = SlotBudget(3)
    await budget.acquire(1)
    await budget.acquire(2)
    assert budget.in_use == 3


async def test_acquire_waits_for_a_release() -> None:
    budget = SlotBudget(2)
    await budget.acquire(2)
    log: list[str] = []
    waiter = start(budget, 1, log, "w")
    await settle()
    assert log == []
    assert budget.in_use == 2
    budget.release(1)
    await settle()
    assert log == ["w"]
    assert waiter.done()
    assert budget.in_use == 2


async def test_waiters_are_served_first_come_first_served() -> None:
    budget = SlotBudget(2)
    await budget.acquire(1)
    await budget.acquire(1)
    log: list[str] = []
    big = start(budget, 2, log, "big")
    await settle()
    small = start(budget, 1, log, "small")
    await settle()
    assert log == []

    budget.release(1)  # one free slot: "small" would fit, but "big" came first
    await settle()
    assert log == []
    assert budget.in_use == 1

    budget.release(1)
    await settle()
    assert log == ["big"]
    assert budget.in_use == 2
    assert not small.done()

    budget.release(2)
    await settle()
    assert log == ["big", "small"]
    assert budget.in_use == 1
    await asyncio.gather(big, small)


async def test_newcomer_does_not_jump_the_queue() -> None:
    budget = SlotBudget(2)
    await budget.acquire(2)
    log: list[str] = []
    start(budget, 2, log, "first")
    await settle()
    budget.release(1)  # one slot free: not enough for "first"
    newcomer = start(budget, 1, log, "newcomer")
    await settle()
    assert log == []
    budget.release(1)
    await settle()
    assert log == ["first"]
    budget.release(2)
    await settle()
    assert log == ["first", "newcomer"]
    await newcomer


async def test_several_waiters_woken_by_one_release() -> None:
    budget = SlotBudget(3)
    await budget.acquire(3)
    log: list[str] = []
    for name in "abc":
        start(budget, 1, log, name)
    await settle()
    budget.release(3)
    await settle()
    assert log == ["a", "b", "c"]
    assert budget.in_use == 3


async def test_request_larger_than_budget_runs_alone() -> None:
    budget = SlotBudget(2)
    await budget.acquire(5)  # nothing in use: it runs, alone
    assert budget.in_use == 5
    log: list[str] = []
    start(budget, 1, log, "small")
    await settle()
    assert log == []
    budget.release(5)
    await settle()
    assert log == ["small"]


async def test_request_larger_than_budget_waits_until_idle() -> None:
    budget = SlotBudget(2)
    await budget.acquire(1)
    log: list[str] = []
    start(budget, 5, log, "huge")
    await settle()
    assert log == []
    budget.release(1)
    await settle()
    assert log == ["huge"]
    assert budget.in_use == 5


def test_release_never_goes_negative() -> None:
    budget = SlotBudget(2)
    budget.release(3)
    assert budget.in_use == 0


# --- shrink on 1303 -----------------------------------------------------------------------


async def test_shrink_sets_limit_to_what_others_use() -> None:
    budget = SlotBudget(None)
    for _ in range(3):
        await budget.acquire(2)  # three tasks of n=2 in flight
    await budget.acquire(1)  # the submission that got 1303
    budget.shrink(1)
    assert budget.limit == 6
    assert budget.limit_hits == 1


async def test_shrink_never_below_one() -> None:
    budget = SlotBudget(10)
    await budget.acquire(4)
    budget.shrink(4)
    assert budget.limit == 1
    assert budget.limit_hits == 1


async def test_shrunk_budget_makes_new_acquires_wait() -> None:
    budget = SlotBudget(None)
    await budget.acquire(1)
    await budget.acquire(1)
    await budget.acquire(1)
    budget.shrink(1)
    budget.release(1)  # the rejected submission lets go
    assert budget.limit == 2
    log: list[str] = []
    start(budget, 1, log, "again")
    await settle()
    assert log == []
    budget.release(1)
    await settle()
    assert log == ["again"]


async def test_wait_after_limit_queues_behind_the_shrunk_budget() -> None:
    budget = SlotBudget(None)
    for _ in range(3):
        await budget.acquire(1)
    slots = Slots(budget, 1)
    await slots.acquire()
    assert budget.in_use == 4
    error = ka.ConcurrencyLimitError("over parallel limit", http_status=429, code=1303)
    waiting = asyncio.ensure_future(slots.wait_after_limit(error))
    await settle()
    assert not waiting.done()
    assert budget.limit == 3
    assert budget.in_use == 3
    budget.release(1, finished=True)
    await settle()
    assert waiting.done()
    assert waiting.result() is True
    assert slots.held
    assert budget.in_use == 3


# --- growth -------------------------------------------------------------------------------


async def test_finished_releases_grow_back_up_to_cap() -> None:
    budget = SlotBudget(4)
    for _ in range(4):
        await budget.acquire(1)
    budget.shrink(1)
    assert budget.limit == 3
    budget.release(1, finished=True)
    first = budget.limit
    assert 3 < first <= 4
    for _ in range(3):
        budget.release(1, finished=True)
    assert budget.in_use == 0
    for _ in range(50):
        await asyncio.wait_for(budget.acquire(1), timeout=1)
        budget.release(1, finished=True)
    assert budget.limit == 4


async def test_unfinished_releases_do_not_grow() -> None:
    budget = SlotBudget(4)
    for _ in range(4):
        await budget.acquire(1)
    budget.shrink(1)
    for _ in range(4):
        budget.release(1)
    assert budget.limit == 3


async def test_growth_never_exceeds_cap_when_not_shrunk() -> None:
    budget = SlotBudget(2)
    await budget.acquire(1)
    budget.release(1, finished=True)
    assert budget.limit == 2


async def test_shrunk_limit_holds_waiters_until_slots_free() -> None:
    budget = SlotBudget(2)
    await budget.acquire(1)
    await budget.acquire(1)
    budget.shrink(1)  # limit 1 while 2 are in use
    assert budget.limit == 1
    log: list[str] = []
    start(budget, 1, log, "w")
    await settle()
    budget.release(1)  # not finished: no growth, 1 in use, limit 1
    await settle()
    assert log == []
    budget.release(1, finished=True)
    await settle()
    assert log == ["w"]
    assert budget.in_use == 1


# --- cancellation -------------------------------------------------------------------------


async def test_cancelled_waiter_leaves_counts_right() -> None:
    budget = SlotBudget(1)
    await budget.acquire(1)
    log: list[str] = []
    waiter = start(budget, 1, log, "w")
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 1
    budget.release(1)
    await settle()
    assert budget.in_use == 0
    await asyncio.wait_for(budget.acquire(1), timeout=1)
    assert budget.in_use == 1


async def test_cancelled_head_waiter_unblocks_the_next() -> None:
    budget = SlotBudget(2)
    await budget.acquire(2)
    log: list[str] = []
    head = start(budget, 2, log, "head")
    await settle()
    budget.release(1)
    nxt = start(budget, 1, log, "next")
    await settle()
    assert log == []
    head.cancel()
    await settle()
    assert log == ["next"]
    assert budget.in_use == 2
    await nxt


async def test_cancel_after_grant_gives_the_slots_back() -> None:
    budget = SlotBudget(1)
    await budget.acquire(1)
    log: list[str] = []
    waiter = start(budget, 1, log, "w")
    await settle()
    budget.release(1)  # grants the waiter's slot, but the waiter has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert log == []
    assert budget.in_use == 0


async def test_cancel_after_grant_passes_slots_to_the_next_waiter() -> None:
    budget = SlotBudget(1)
    await budget.acquire(1)
    log: list[str] = []
    first = start(budget, 1, log, "first")
    await settle()
    second = start(budget, 1, log, "second")
    await settle()
    budget.release(1)
    first.cancel()
    await settle()
    assert log == ["second"]
    assert budget.in_use == 1
    await second


async def test_cancel_then_release_before_the_waiter_runs() -> None:
    budget = SlotBudget(1)
    await budget.acquire(1)
    log: list[str] = []
    waiter = start(budget, 1, log, "w")
    await settle()
    waiter.cancel()
    budget.release(1)  # runs before the cancelled waiter gets to clean up
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert log == []
    assert budget.in_use == 0
    await asyncio.wait_for(budget.acquire(1), timeout=1)
    assert budget.in_use == 1


async def test_cancelling_several_waiters_at_once() -> None:
    budget = SlotBudget(1)
    await budget.acquire(1)
    log: list[str] = []
    waiters = [start(budget, 1, log, name) for name in "abc"]
    await settle()
    for waiter in waiters:
        waiter.cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results), results
    assert budget.in_use == 1
    budget.release(1)
    await asyncio.wait_for(budget.acquire(1), timeout=1)
    assert budget.in_use == 1
