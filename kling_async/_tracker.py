"""One record per task this client follows: the newest state, held slots and change signals.

States come from polling and (with a callback receiver) from pushes; both go through
`merge`, so duplicates and out-of-order deliveries never move a task backwards.
"""

from __future__ import annotations

import asyncio

from kling_async._budget import SlotBudget
from kling_async._models import Task, TaskStatus


def merge(current: Task | None, new: Task) -> Task:
    """The state to keep: a terminal state is final, otherwise the newest ``updated_at`` wins.

    Between states stamped alike (timestamps in whole seconds, or none), a late ``submitted``
    does not replace ``processing``.
    """
    if current is None:
        return new
    if current.status.is_terminal:
        return current
    if new.status.is_terminal:
        return new
    if current.updated_at is not None and new.updated_at is not None:
        if new.updated_at < current.updated_at:
            return current
        if new.updated_at > current.updated_at:
            return new
    if new.status is TaskStatus.SUBMITTED and current.status is TaskStatus.PROCESSING:
        return current
    return new


class Signal:
    """A one-shot "something changed" flag that can be awaited without a task of its own."""

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._set = False

    def is_set(self) -> bool:
        """Whether the change happened."""
        return self._set

    def set(self) -> None:
        """Mark the change and wake every waiter."""
        self._set = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """The future resolved at the change (made on first use, in the running loop)."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
            if self._set:
                self._future.set_result(None)
        return self._future


class _Record:
    __slots__ = ("changed", "pushed", "slots", "task", "watchers")

    def __init__(self) -> None:
        self.task: Task | None = None
        self.slots = 0
        self.watchers = 0
        self.pushed = False
        self.changed = Signal()


class TaskTracker:
    """Follows the tasks of one client and the account slots they hold."""

    def __init__(self, budget: SlotBudget) -> None:
        self.budget = budget
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def hold(self, task: Task, slots: int, *, pushed: bool = False) -> None:
        """Start following a freshly submitted task that holds ``slots`` budget slots.

        ``pushed`` says that a callback receiver of this client will get the task's states.
        """
        record = self._records.setdefault(task.task_id, _Record())
        record.slots += slots
        record.pushed = pushed
        self.observe(task)

    def observe(self, task: Task) -> Task:
        """Feed a state seen by polling or pushed by a callback; return the state to believe."""
        record = self._records.get(task.task_id)
        if record is None:
            return task
        known = record.task
        if (
            known is not None
            and known.external_task_id is not None
            and task.external_task_id is not None
            and known.external_task_id != task.external_task_id
        ):
            return known  # a state of another submission (a misrouted or forged callback)
        merged = merge(known, task)
        if merged is not record.task:
            record.task = merged
            record.changed.set()
            record.changed = Signal()
        if merged.status.is_terminal:
            self._release(record, finished=True)
            if record.watchers == 0:
                del self._records[task.task_id]
        return merged

    def is_pushed(self, task_id: str) -> bool:
        """Whether the task's states are pushed to this client by a callback receiver."""
        record = self._records.get(task_id)
        return record is not None and record.pushed

    def current(self, task_id: str) -> Task | None:
        """The newest state known for a followed task."""
        record = self._records.get(task_id)
        return record.task if record else None

    def watch(self, task_id: str) -> Signal:
        """Register a watcher; return the event set at the next change."""
        record = self._records.setdefault(task_id, _Record())
        record.watchers += 1
        return record.changed

    def next_change(self, task_id: str) -> Signal:
        """The event set at the next change of a watched task."""
        return self._records[task_id].changed

    def unwatch(self, task_id: str) -> None:
        """Drop a watcher; the last one to leave an unfinished task gives its slots back."""
        record = self._records.get(task_id)
        if record is None:
            return
        record.watchers -= 1
        if record.watchers > 0:
            return
        finished = record.task is not None and record.task.status.is_terminal
        self._release(record, finished=finished)
        del self._records[task_id]

    def _release(self, record: _Record, *, finished: bool) -> None:
        if record.slots:
            self.budget.release(record.slots, finished=finished)
            record.slots = 0
