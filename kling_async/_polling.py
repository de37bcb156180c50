"""Following a task: the poll schedule, the overall deadline, and the status-change stream.

Polling is not retrying: each check is one ``get_task`` (which retries inside), then the poller
sleeps on a growing, jittered schedule, under one deadline. A pushed state (from a callback
receiver) wakes the poller early.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import TypeVar

import attrs
import backoff

from kling_async._errors import KlingError, WaitTimeoutError
from kling_async._models import Task, TaskStatus
from kling_async._tracker import Signal, TaskTracker

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class PollPolicy:
    """How a task is polled while waiting for it.

    The first check comes ``initial_delay`` seconds after submission; each following interval
    is ``backoff`` times the last, up to ``max_interval``, each jittered by ``±jitter``.
    With the defaults a 30 s task is seen finished within about 10 s, in 7–8 status requests.
    """

    initial_delay: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    """Seconds before the first status check."""
    max_interval: float = attrs.field(default=10.0, validator=attrs.validators.ge(0))
    """The longest pause between two checks, in seconds."""
    backoff: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    """How much each pause grows over the previous one."""
    timeout: float | None = attrs.field(default=900.0)
    """The overall deadline for one wait, in seconds (``None``: wait for ever)."""
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    """Relative random spread of every pause, so that many tasks do not poll in lockstep."""

    def intervals(self) -> Iterator[float]:
        """The pauses between checks, without end (all zero when ``initial_delay`` is 0)."""
        if self.initial_delay == 0:
            # Nothing to grow from: a zero-wait policy, as tests use.
            while True:
                yield 0.0
        steps = backoff.expo(
            base=self.backoff, factor=self.initial_delay, max_value=self.max_interval
        )
        next(steps)  # backoff's generators are primed with one next()
        for step in steps:
            # Jitter spreads the pauses, but never past max_interval: that bound is what
            # limits how late a finished task is seen.
            yield min(
                step * random.uniform(1 - self.jitter, 1 + self.jitter),
                self.max_interval * random.uniform(1 - self.jitter, 1),
            )


async def _within(awaitable: Awaitable[_T], timeout: float) -> asyncio.Task[_T] | None:
    """Run ``awaitable`` for at most ``timeout`` seconds; the finished task, or ``None``.

    Unlike ``asyncio.wait_for`` before Python 3.12, a cancellation that races the timeout is
    never turned into a timeout (which would leave a cancelled wait polling on).
    """
    job = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({job}, timeout=max(timeout, 0))
    except BaseException:
        job.cancel()
        raise
    if done:
        return job
    job.cancel()
    return None


async def _wait_event(signal: Signal, timeout: float) -> bool:
    if signal.is_set() or timeout <= 0:
        return signal.is_set()
    # asyncio.wait on the shared future: no task per pause, and it is never cancelled by us.
    done, _ = await asyncio.wait({signal.future()}, timeout=timeout)
    return bool(done)


async def follow(
    task: Task | str,
    *,
    fetch: Callable[[str], Awaitable[Task]],
    tracker: TaskTracker,
    policy: PollPolicy,
    slow_factor: float = 1.0,
) -> AsyncGenerator[Task, None]:
    """Yield the task's state now, then once per status change, ending after a terminal one.

    Args:
        task: The task, or its id (or external task id).
        fetch: One status check (``get_task``), feeding the tracker.
        tracker: Where pushed and polled states meet.
        policy: The schedule and deadline.
        slow_factor: Polling is slowed by this factor when states are pushed to the client.

    Raises:
        WaitTimeoutError: The deadline passed first.
    """
    loop = asyncio.get_running_loop()
    deadline = None if policy.timeout is None else loop.time() + policy.timeout
    task_id = task.task_id if isinstance(task, Task) else task
    last: Task | None = None

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - loop.time()

    def timed_out() -> WaitTimeoutError:
        assert policy.timeout is not None
        return WaitTimeoutError(task_id, timeout=policy.timeout, last_task=last)

    async def check() -> Task:
        if deadline is None:
            return await fetch(task_id)
        job = await _within(fetch(task_id), remaining())
        if job is None:
            raise timed_out()
        return job.result()

    async def confirmed(state: Task) -> Task:
        # A pushed success without images (a trimmed callback) is confirmed by one GET.
        if state.status is not TaskStatus.SUCCEED or state.images or state.request_id:
            return state
        try:
            fetched = await check()
        except KlingError:
            return state
        return fetched if fetched.status is TaskStatus.SUCCEED else state

    changed = tracker.watch(task_id)
    try:
        if isinstance(task, Task):
            current = tracker.observe(task)
        else:
            current = await check()
            # An id may be an external task id: follow the record under the real id too.
            if current.task_id != task_id:
                tracker.unwatch(task_id)
                task_id = current.task_id
                changed = tracker.watch(task_id)
                current = tracker.observe(current)
        current = await confirmed(current)
        last = current
        changed = tracker.next_change(task_id)  # what was observed so far is in `current`
        yield current
        intervals = policy.intervals()
        while not current.status.is_terminal:
            if remaining() <= 0:
                raise timed_out()
            pause = min(next(intervals) * slow_factor, remaining())
            if not await _wait_event(changed, pause):
                await check()
            changed = tracker.next_change(task_id)
            current = await confirmed(tracker.current(task_id) or current)
            if current.status != last.status:
                last = current
                yield current
            else:
                last = current
    finally:
        tracker.unwatch(task_id)
