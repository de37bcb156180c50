"""The per-task record: merging states, change signals and giving slots back exactly once."""

from __future__ import annotations

import datetime

import pytest

import kling_async as ka
from kling_async._budget import SlotBudget
from kling_async._tracker import TaskTracker, merge

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
SUBMITTED = ka.TaskStatus.SUBMITTED
PROCESSING = ka.TaskStatus.PROCESSING
SUCCEED = ka.TaskStatus.SUCCEED
FAILED = ka.TaskStatus.FAILED


def state(
    status: ka.TaskStatus, at: int | None, *, task_id: str = "t-1", note: str = ""
) -> ka.Task:
    return ka.Task(
        task_id=task_id,
        status=status,
        updated_at=None if at is None else T0 + datetime.timedelta(seconds=at),
        request_id=note or None,
    )


# --- merge --------------------------------------------------------------------------------


def test_first_state_is_taken() -> None:
    new = state(SUBMITTED, 1)
    assert merge(None, new) is new


def test_newer_state_wins() -> None:
    current = state(SUBMITTED, 1)
    new = state(PROCESSING, 2)
    assert merge(current, new) is new


def test_older_state_is_ignored() -> None:
    current = state(PROCESSING, 5)
    assert merge(current, state(SUBMITTED, 1)) is current
    assert merge(current, state(PROCESSING, 4)) is current


@pytest.mark.parametrize("final", [SUCCEED, FAILED])
def test_terminal_is_final(final: ka.TaskStatus) -> None:
    current = state(final, 5)
    assert merge(current, state(PROCESSING, 9)) is current
    assert merge(current, state(SUBMITTED, 10)) is current
    assert merge(current, state(ka.TaskStatus("mystery"), 11)) is current


def test_terminal_is_final_even_against_another_terminal() -> None:
    current = state(SUCCEED, 5, note="first")
    assert merge(current, state(FAILED, 9)) is current
    assert merge(current, state(SUCCEED, 9, note="duplicate")) is current


def test_terminal_replaces_a_running_state_even_if_stamped_older() -> None:
    # A task that has ended cannot run again: the late-arriving end wins.
    current = state(PROCESSING, 9)
    new = state(SUCCEED, 8)
    assert merge(current, new) is new


def test_unknown_word_is_an_ordinary_running_state() -> None:
    current = state(PROCESSING, 1)
    new = state(ka.TaskStatus("moderating"), 2)
    assert merge(current, new) is new
    assert merge(new, state(PROCESSING, 1)) is new


# --- TaskTracker --------------------------------------------------------------------------


async def held(budget: SlotBudget, tracker: TaskTracker, task: ka.Task, slots: int) -> None:
    """Acquire ``slots`` like a submission does, then let the tracker hold them."""
    await budget.acquire(slots)
    tracker.hold(task, slots)


async def test_slots_released_once_when_terminal_is_observed() -> None:
    budget = SlotBudget(None)
    tracker = TaskTracker(budget)
    await budget.acquire(3)  # someone else's task
    await held(budget, tracker, state(SUBMITTED, 1), 2)
    assert budget.in_use == 5

    tracker.observe(state(PROCESSING, 2))
    assert budget.in_use == 5
    tracker.observe(state(SUCCEED, 3))
    assert budget.in_use == 3
    tracker.observe(state(SUCCEED, 3))
    tracker.observe(state(FAILED, 4))
    assert budget.in_use == 3


async def test_slots_released_once_with_a_watcher_present() -> None:
    budget = SlotBudget(None)
    tracker = TaskTracker(budget)
    await budget.acquire(4)
    await held(budget, tracker, state(SUBMITTED, 1), 2)
    tracker.watch("t-1")
    tracker.observe(state(FAILED, 2))
    assert budget.in_use == 4
    tracker.observe(state(FAILED, 2))
    tracker.unwatch("t-1")
    assert budget.in_use == 4
    assert len(tracker) == 0


async def test_terminal_release_counts_as_finished() -> None:
    budget = SlotBudget(4)
    tracker = TaskTracker(budget)
    await budget.acquire(2)
    await held(budget, tracker, state(SUBMITTED, 1), 1)
    budget.shrink(1)
    assert budget.limit == 2
    tracker.observe(state(SUCCEED, 2))
    assert budget.limit > 2


async def test_unwatch_of_unfinished_task_releases_its_slots() -> None:
    budget = SlotBudget(8)
    tracker = TaskTracker(budget)
    await budget.acquire(1)
    await held(budget, tracker, state(PROCESSING, 1), 3)
    budget.shrink(1)
    limit = budget.limit
    assert limit == 3
    tracker.watch("t-1")
    tracker.unwatch("t-1")
    assert budget.in_use == 1
    assert budget.limit == limit  # gave up, not finished: no growth
    assert len(tracker) == 0
    assert tracker.current("t-1") is None
    tracker.observe(state(SUCCEED, 5))
    assert budget.in_use == 1


async def test_last_watcher_releases() -> None:
    budget = SlotBudget(None)
    tracker = TaskTracker(budget)
    await held(budget, tracker, state(PROCESSING, 1), 2)
    tracker.watch("t-1")
    tracker.watch("t-1")
    tracker.unwatch("t-1")
    assert budget.in_use == 2
    tracker.unwatch("t-1")
    assert budget.in_use == 0
    tracker.unwatch("t-1")  # one too many: harmless
    assert budget.in_use == 0


async def test_tasks_are_independent() -> None:
    budget = SlotBudget(None)
    tracker = TaskTracker(budget)
    await held(budget, tracker, state(SUBMITTED, 1, task_id="a"), 2)
    await held(budget, tracker, state(SUBMITTED, 1, task_id="b"), 3)
    tracker.observe(state(SUCCEED, 2, task_id="a"))
    assert budget.in_use == 3
    assert len(tracker) == 1
    assert tracker.current("b") == state(SUBMITTED, 1, task_id="b")


async def test_observe_returns_the_state_to_believe() -> None:
    tracker = TaskTracker(SlotBudget(None))
    tracker.hold(state(PROCESSING, 5), 1)
    tracker.watch("t-1")
    newest = tracker.current("t-1")
    assert tracker.observe(state(SUBMITTED, 1)) is newest
    assert tracker.current("t-1") is newest
    newer = state(PROCESSING, 6)
    assert tracker.observe(newer) is newer
    done = state(SUCCEED, 7)
    assert tracker.observe(done) is done
    assert tracker.observe(state(PROCESSING, 8)) is done
    assert tracker.current("t-1") is done


def test_observe_of_an_unknown_task_passes_it_through() -> None:
    tracker = TaskTracker(SlotBudget(None))
    task = state(PROCESSING, 1, task_id="stranger")
    assert tracker.observe(task) is task
    assert len(tracker) == 0


async def test_change_event_fires_on_change_only() -> None:
    tracker = TaskTracker(SlotBudget(None))
    tracker.hold(state(SUBMITTED, 1), 1)
    first = tracker.watch("t-1")
    assert not first.is_set()

    tracker.observe(state(SUBMITTED, 0))  # out of order: no change
    assert not first.is_set()

    tracker.observe(state(PROCESSING, 2))
    assert first.is_set()
    second = tracker.next_change("t-1")
    assert second is not first
    assert not second.is_set()

    tracker.observe(state(SUCCEED, 3))
    assert second.is_set()
    third = tracker.next_change("t-1")
    tracker.observe(state(SUCCEED, 4))  # terminal is final: no change
    assert not third.is_set()


async def test_watch_before_hold_sees_the_first_state() -> None:
    tracker = TaskTracker(SlotBudget(None))
    event = tracker.watch("t-1")
    tracker.hold(state(SUBMITTED, 1), 1)
    assert event.is_set()
    assert tracker.current("t-1") == state(SUBMITTED, 1)


def test_is_pushed() -> None:
    tracker = TaskTracker(SlotBudget(None))
    tracker.hold(state(SUBMITTED, 1, task_id="pushed"), 1, pushed=True)
    tracker.hold(state(SUBMITTED, 1, task_id="polled"), 1)
    assert tracker.is_pushed("pushed")
    assert not tracker.is_pushed("polled")
    assert not tracker.is_pushed("unknown")
