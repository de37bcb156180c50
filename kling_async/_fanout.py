"""Fan-out: many generations at once with bounded concurrency (first version)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING

from kling_async._errors import KlingError, TaskFailedError, WaitTimeoutError
from kling_async._models import GenerationOutcome, GenerationRequest

if TYPE_CHECKING:
    from kling_async._client import KlingClient
    from kling_async._polling import PollPolicy


async def _iterate(
    requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
) -> AsyncIterator[GenerationRequest]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


async def generate_many(
    client: KlingClient,
    requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
    *,
    concurrency: int,
    poll: PollPolicy | None,
) -> AsyncIterator[GenerationOutcome]:
    """Run requests with at most ``concurrency`` in progress; yield outcomes as they complete."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")

    async def run(request: GenerationRequest) -> GenerationOutcome:
        task_id: str | None = None
        try:
            task = await client.submit(request)
            task_id = task.task_id
            done = await client.wait(task, poll=poll)
        except TaskFailedError as exc:
            return GenerationOutcome(request=request, task=exc.task, error=exc, task_id=task_id)
        except WaitTimeoutError as exc:
            return GenerationOutcome(
                request=request, task=exc.last_task, error=exc, task_id=task_id
            )
        except KlingError as exc:
            return GenerationOutcome(request=request, error=exc, task_id=task_id)
        return GenerationOutcome(request=request, task=done, task_id=done.task_id)

    source = _iterate(requests).__aiter__()
    running: set[asyncio.Task[GenerationOutcome]] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(running) < concurrency:
                try:
                    request = await source.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    break
                running.add(asyncio.ensure_future(run(request)))
            if not running:
                return
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                yield finished.result()
    finally:
        for pending in running:
            pending.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
