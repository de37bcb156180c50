"""Fan-out: many generations at once, with bounded concurrency and nothing lost on the way out."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING

from kling_async._errors import (
    KlingError,
    SubmissionUnknownError,
    TaskFailedError,
    WaitTimeoutError,
)
from kling_async._models import GenerationOutcome, GenerationRequest, Task

if TYPE_CHECKING:
    from types import TracebackType

    from kling_async._client import KlingClient
    from kling_async._polling import PollPolicy

_log = logging.getLogger("kling_async")


class _Job:
    """One request in flight: what is known about it so far."""

    __slots__ = ("external_task_id", "request", "task")

    def __init__(self, request: GenerationRequest, external_task_id: str) -> None:
        self.request = request
        self.external_task_id = external_task_id
        self.task: Task | None = None

    def abandoned(self) -> GenerationOutcome:
        """The outcome of a job the stream stopped before it finished."""
        if self.task is None:
            error: KlingError = SubmissionUnknownError(
                self.external_task_id,
                "the stream was stopped while the request was being submitted; the task may "
                "exist: look it up by its external_task_id",
            )
            return GenerationOutcome(request=self.request, error=error)
        error = KlingError(
            "the stream was stopped before the task finished; it keeps running on the server",
            task_id=self.task.task_id,
        )
        return GenerationOutcome(
            request=self.request, task=self.task, error=error, task_id=self.task.task_id
        )


async def _run(client: KlingClient, job: _Job, poll: PollPolicy | None) -> GenerationOutcome:
    request = job.request
    try:
        job.task = await client._submit_as(request, job.external_task_id)
        done = await client.wait(job.task, poll=poll)
    except TaskFailedError as exc:
        return GenerationOutcome(request=request, task=exc.task, error=exc, task_id=exc.task_id)
    except WaitTimeoutError as exc:
        task = exc.last_task or job.task
        return GenerationOutcome(request=request, task=task, error=exc, task_id=exc.task_id)
    except KlingError as exc:
        task_id = job.task.task_id if job.task else None
        return GenerationOutcome(request=request, task=job.task, error=exc, task_id=task_id)
    return GenerationOutcome(request=request, task=done, task_id=done.task_id)


async def _requests(
    requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
) -> AsyncGenerator[GenerationRequest, None]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


class GenerationStream(AsyncIterator[GenerationOutcome]):
    """The outcomes of :meth:`KlingClient.generate_many`, in completion order.

    Iterate it with ``async for``. Leaving the loop early (``break``, an exception or
    cancellation) stops new submissions and cancels the local waits; the tasks keep running on
    the server. Use it as an async context manager (or call :meth:`aclose`) to stop it at a
    known point and read :attr:`remaining`: one outcome, with its task id, for every request
    that was submitted (or being submitted) but not yet reported.
    """

    def __init__(
        self,
        client: KlingClient,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        *,
        concurrency: int,
        poll: PollPolicy | None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._client = client
        self._concurrency = concurrency
        self._poll = poll
        self.remaining: list[GenerationOutcome] = []
        """After an early stop: one outcome per request not yet reported (mostly still running
        on the server, with ``error`` set and the task id kept)."""
        self._outcomes = self._generate(requests)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationOutcome:
        return await self._outcomes.__anext__()

    async def aclose(self) -> list[GenerationOutcome]:
        """Stop the stream: no new submissions, local waits cancelled.

        Returns:
            The outcomes of the requests still in progress (also kept in :attr:`remaining`).
        """
        await self._outcomes.aclose()
        return self.remaining

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _generate(
        self, requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest]
    ) -> AsyncGenerator[GenerationOutcome, None]:
        from kling_async._client import new_external_task_id

        source = _requests(requests)
        running: dict[asyncio.Task[GenerationOutcome], _Job] = {}
        # Finished jobs queue up here: asyncio.wait over all running jobs would cost O(N) per
        # completion, O(N²) for a batch, which stalls the loop with thousands in flight.
        completed: collections.deque[asyncio.Task[GenerationOutcome]] = collections.deque()
        wake = asyncio.Event()

        def on_done(finished: asyncio.Task[GenerationOutcome]) -> None:
            completed.append(finished)
            wake.set()

        exhausted = False
        try:
            while True:
                # Pull lazily: never more requests than there are free places.
                while not exhausted and len(running) < self._concurrency:
                    try:
                        request = await source.__anext__()
                    except StopAsyncIteration:
                        exhausted = True
                        break
                    job = _Job(request, request.external_task_id or new_external_task_id())
                    job_task = asyncio.ensure_future(_run(self._client, job, self._poll))
                    job_task.add_done_callback(on_done)
                    running[job_task] = job
                if not running:
                    return
                while not completed:
                    wake.clear()
                    await wake.wait()
                finished = completed.popleft()
                del running[finished]
                yield finished.result()
        finally:
            await self._stop(running)
            await source.aclose()

    async def _stop(self, running: dict[asyncio.Task[GenerationOutcome], _Job]) -> None:
        finished = {task for task in running if task.done()}
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for task, job in running.items():
            if task in finished and not task.cancelled() and task.exception() is None:
                self.remaining.append(task.result())  # finished, but never yielded
            else:
                self.remaining.append(job.abandoned())
        if self.remaining:
            _log.warning(
                "generate_many stopped with %d outcomes not yet reported: %s",
                len(self.remaining),
                ", ".join(
                    f"task {job.task.task_id}" if job.task else f"external {job.external_task_id}"
                    for job in running.values()
                ),
            )
