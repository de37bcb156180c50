"""FakeKlingServer's callback delivery: ordered per task, with duplicate/delay/reorder/drop."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Any

import aiohttp
import attrs

from kling_async._fake_records import CallbackDelivery

_log = logging.getLogger("kling_async.testing")


@attrs.frozen
class _Item:
    task_id: str
    status: str
    url: str
    payload: dict[str, Any]
    delay: float


class CallbackDispatcher:
    """POSTs task objects to callback URLs; a delivery failure is logged and counted, never raised.

    Deliveries of one task go out one after another, in the order they were queued.
    """

    def __init__(self, rng: random.Random, timeout: float = 10.0) -> None:
        self.deliveries: list[CallbackDelivery] = []
        self.failures = 0
        self.dropped = 0
        self._rng = rng
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._held: dict[str, list[_Item]] = {}
        self._queues: dict[str, collections.deque[_Item]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def emit(
        self,
        task_id: str,
        url: str,
        status: str,
        payload: dict[str, Any],
        *,
        terminal: bool,
        duplicate: bool,
        delay: float,
        out_of_order: bool,
        drop: float,
    ) -> None:
        """Queue one status change of a task for delivery (must run inside the event loop)."""
        item = _Item(task_id, status, url, payload, delay)
        if out_of_order and not terminal:
            self._held.setdefault(task_id, []).append(item)  # released with the terminal one
            return
        batch = [*self._held.pop(task_id, []), item]
        if out_of_order:
            batch.reverse()
        kept: list[_Item] = []
        for entry in batch:
            if drop > 0 and self._rng.random() < drop:
                self.dropped += 1
            else:
                kept.extend([entry, entry] if duplicate else [entry])
        if not kept:
            return
        # Only a task's worker removes its queue (when it finds it empty), so a running worker
        # always drains the queue new items go to.
        self._queues.setdefault(task_id, collections.deque()).extend(kept)
        if task_id not in self._workers:
            self._workers[task_id] = asyncio.ensure_future(self._drain(task_id))

    @property
    def pending(self) -> int:
        """Callbacks queued or held but not yet attempted."""
        return sum(map(len, self._queues.values())) + sum(map(len, self._held.values()))

    async def _drain(self, task_id: str) -> None:
        queue = self._queues[task_id]
        try:
            while queue:
                item = queue.popleft()
                if item.delay > 0:
                    await asyncio.sleep(item.delay)
                await self._post(item)
        finally:
            del self._workers[task_id]
            if not queue:
                del self._queues[task_id]

    async def _post(self, item: _Item) -> None:
        status: int | None = None
        error: str | None = None
        try:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=self._timeout)
            async with self._session.post(item.url, json=item.payload) as reply:
                await reply.read()
                status = reply.status
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a receiver's problem must never break the server
            error = f"{type(exc).__name__}: {exc}"
        if error is not None or (status is not None and status >= 400):
            self.failures += 1
            # The query string may carry a webhook token: log the bare URL only.
            where = item.url.split("?", 1)[0]
            _log.warning(
                "callback for task %s to %s failed: %s", item.task_id, where, error or status
            )
        self.deliveries.append(
            CallbackDelivery(
                task_id=item.task_id,
                status=item.status,
                url=item.url,
                payload=item.payload,
                http_status=status,
                error=error,
                sent_at=time.time(),
            )
        )

    async def close(self) -> None:
        """Cancel undelivered callbacks and close the HTTP session."""
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()  # a worker cancelled before it ever ran never cleans up
        self._held.clear()
        self._queues.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
