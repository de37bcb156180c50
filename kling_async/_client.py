"""``KlingClient``: the public entry point that ties transport, submission and polling together."""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Protocol

import aiohttp
import attrs
from yarl import URL

from kling_async import _routes
from kling_async._budget import SlotBudget, Slots
from kling_async._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_BASE_URL,
    MAX_CONCURRENT_CREATES,
    MAX_CONCURRENT_QUERIES,
    MAX_DOWNLOAD_BYTES,
)
from kling_async._download import download_images
from kling_async._errors import (
    ConfigurationError,
    KlingError,
    TaskFailedError,
)
from kling_async._fanout import GenerationStream
from kling_async._models import GenerationRequest, Task, TaskStatus
from kling_async._polling import PollPolicy, follow
from kling_async._retry import RetryPolicy, call_with_retry
from kling_async._serde import CreateBody, dump_body
from kling_async._submission import submit_safely, task_from_reply
from kling_async._tracker import TaskTracker, merge
from kling_async._transport import Transport

if TYPE_CHECKING:
    from types import TracebackType


class CallbackSource(Protocol):
    """What a client needs from a callback receiver (see ``kling_async.webhooks``)."""

    fallback_factor: float
    """How much slower the client polls tasks whose states are pushed."""

    def callback_url_for(self, external_task_id: str) -> str:
        """The callback URL (with its token) a submission should carry."""

    def subscribe(self, listener: Callable[[Task], object]) -> None:
        """Deliver every accepted pushed state to ``listener``."""

    def unsubscribe(self, listener: Callable[[Task], object]) -> None:
        """Stop delivering to ``listener``."""

    def latest(self, task_id: str) -> Task | None:
        """The newest state already pushed for a task (it may arrive before the create reply)."""


def new_external_task_id() -> str:
    """A fresh external task id for a submission that did not name one."""
    return f"ka-{uuid.uuid4().hex}"


class KlingClient:
    """An asyncio client for Kling's *Generate With References* image API (via DeerAPI).

    Use it as an async context manager, or call :meth:`aclose` when done::

        async with KlingClient() as client:
            task = await client.generate(request)

    Args:
        api_key: The API key; defaults to the ``DEERAPI_KEY`` environment variable.
        base_url: The API's base URL; defaults to ``DEERAPI_BASE_URL``, else
            ``https://api.deerapi.com``.
        session: An ``aiohttp.ClientSession`` to borrow; the client never closes it.
        timeout: Seconds allowed for each HTTP request.
        retry: How failed requests are retried.
        poll: How tasks are polled while waiting, and the overall deadline.
        max_in_flight: The account's parallel-task slot budget (a task weighs ``n``);
            ``None`` is unbounded until the API answers 1303, then it adapts.
        callbacks: A callback receiver (``kling_async.webhooks.CallbackReceiver``): submissions
            carry its URL and waits complete when the callback arrives; polling is the fallback.

    Raises:
        ConfigurationError: No API key, or an unusable base URL.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_in_flight: int | None = None,
        callbacks: CallbackSource | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not key or not key.strip():
            raise ConfigurationError(
                f"no API key: pass api_key=... or set the {ENV_API_KEY} environment variable"
            )
        base = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        parsed = URL(base)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigurationError(f"base_url must be an http(s) URL, got {base!r}")
        if timeout <= 0:
            raise ConfigurationError("timeout must be positive")
        if max_in_flight is not None and max_in_flight < 1:
            raise ConfigurationError("max_in_flight must be at least 1, or None")
        self._transport = Transport(
            api_key=key.strip(), base_url=base, timeout=timeout, session=session
        )
        self.retry = retry or RetryPolicy()
        """The retry policy in use."""
        self.poll = poll or PollPolicy()
        """The poll policy in use."""
        self._budget = SlotBudget(max_in_flight)
        self._submit_gate = asyncio.Semaphore(MAX_CONCURRENT_CREATES)
        # Status checks queue here rather than inside aiohttp: a sleeping coroutine costs one
        # future, while thousands of requests waiting for a pooled connection each cost a
        # request object, timers and trace calls, in bursts that stall the event loop.
        self._query_gate = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self._tracker = TaskTracker(self._budget)
        self._callbacks = callbacks
        if callbacks is not None:
            callbacks.subscribe(self._tracker.observe)
        self._closed = False

    @property
    def base_url(self) -> str:
        """The API's base URL."""
        return str(self._transport.base_url)

    @property
    def slots_in_use(self) -> int:
        """Account slots held by this client's unfinished tasks."""
        return self._budget.in_use

    @property
    def slot_limit(self) -> float:
        """The current slot budget (``inf`` while unbounded); it shrinks on 1303 replies."""
        return self._budget.limit

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<KlingClient {state} base_url={self.base_url!r}>"

    async def __aenter__(self) -> KlingClient:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless it was borrowed). The client cannot be reused."""
        if self._closed:
            return
        self._closed = True
        if self._callbacks is not None:
            self._callbacks.unsubscribe(self._tracker.observe)
        await self._transport.aclose()

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError("this KlingClient is closed; create a new one")

    async def _create_body(self, request: GenerationRequest, external_task_id: str) -> CreateBody:
        callback_url = request.callback_url
        if callback_url is None and self._callbacks is not None:
            callback_url = self._callbacks.callback_url_for(external_task_id)
        subjects = [
            await image.to_wire(f"subject_images[{index}]")
            for index, image in enumerate(request.subject_images)
        ]
        return CreateBody(
            model_name=request.model_name,
            subject_images=subjects,
            n=request.n,
            aspect_ratio=request.aspect_ratio,
            prompt=request.prompt,
            scene_image=await request.scene_image.to_wire("scene_image")
            if request.scene_image
            else None,
            style_image=await request.style_image.to_wire("style_image")
            if request.style_image
            else None,
            callback_url=callback_url,
            external_task_id=external_task_id,
        )

    async def submit(self, request: GenerationRequest) -> Task:
        """Create a task. It is never created twice, even when the connection fails midway.

        The task holds ``request.n`` slots of the budget until a wait sees it end.

        Raises:
            RequestValidationError: A local image became unreadable since the request was built.
            SubmissionUnknownError: The API may have accepted it, and it could not be looked up.
            APIError: The API refused it (see the error table), or retries ran out.
            TransportError: The API could not be reached.
        """
        return await self._submit_as(request, request.external_task_id or new_external_task_id())

    async def _submit_as(self, request: GenerationRequest, external_task_id: str) -> Task:
        """``submit`` under a given external task id (for callers that must know it first)."""
        self._ensure_open()
        slots = Slots(self._budget, request.n)
        await slots.acquire()
        try:
            # The gate bounds the create requests (and their base64 bodies) alive at once, so
            # a burst of thousands of submissions neither floods the pool nor the memory.
            async with self._submit_gate:
                body = dump_body(await self._create_body(request, external_task_id))
                task = await submit_safely(
                    self._transport,
                    self.retry,
                    body,
                    external_task_id=external_task_id,
                    lookup=self.get_task,
                    on_concurrency_limit=slots.wait_after_limit,
                )
        except BaseException:
            slots.release()
            raise
        if task.external_task_id is None:
            task = attrs.evolve(task, external_task_id=external_task_id)
        slots.held = False  # the tracker holds them from here on
        # Tasks whose states our receiver gets pushed are polled more slowly.
        pushed = self._callbacks is not None and request.callback_url is None
        self._tracker.hold(task, slots.count, pushed=pushed)
        if pushed and self._callbacks is not None:
            # A callback can beat the create reply; the tracker did not know the task then.
            early = self._callbacks.latest(task.task_id)
            if early is not None:
                self._tracker.observe(early)
        return task

    async def get_task(self, task_id: str) -> Task:
        """Fetch a task's current state by its task id or its external task id.

        Raises:
            NotFoundError: No such task.
        """
        self._ensure_open()
        async with self._query_gate:
            reply = await call_with_retry(
                lambda: self._transport.request(
                    "GET", _routes.get_task(task_id), task_lookup=True, task_id=task_id
                ),
                self.retry,
            )
        task = task_from_reply(reply, task_id=task_id)
        self._tracker.observe(task)
        return task

    def watch(
        self, task: Task | str, *, poll: PollPolicy | None = None
    ) -> AsyncGenerator[Task, None]:
        """Yield the task's current state, then one state per status change, until it ends.

        Args:
            task: A task, or a task id / external task id.
            poll: Overrides the client's poll policy for this call.

        Raises:
            WaitTimeoutError: The poll policy's deadline passed first.
        """
        self._ensure_open()
        task_id = task.task_id if isinstance(task, Task) else task
        slow = 1.0
        if self._callbacks is not None:
            if self._tracker.is_pushed(task_id):
                slow = self._callbacks.fallback_factor
            known = self._callbacks.latest(task_id)
            if isinstance(task, Task) and known is not None:
                task = merge(task, known)  # it may have ended before this wait began
        return follow(
            task,
            fetch=self.get_task,
            tracker=self._tracker,
            policy=poll or self.poll,
            slow_factor=slow,
        )

    async def wait(self, task: Task | str, *, poll: PollPolicy | None = None) -> Task:
        """Wait until the task ends; return it when it succeeded.

        Cancelling the wait stops polling; the task keeps running on the server.

        Raises:
            TaskFailedError: The task failed (``error.task.status_message`` says why).
            WaitTimeoutError: The deadline passed first (the task keeps running).
        """
        last: Task | None = None
        async with aclosing(self.watch(task, poll=poll)) as updates:
            async for update in updates:
                last = update
        assert last is not None
        if last.status is TaskStatus.FAILED:
            raise TaskFailedError(last)
        return last

    async def generate(self, request: GenerationRequest, *, poll: PollPolicy | None = None) -> Task:
        """Submit a request and wait for its task to succeed (``submit`` + ``wait``)."""
        return await self.wait(await self.submit(request), poll=poll)

    def generate_many(
        self,
        requests: Iterable[GenerationRequest] | AsyncIterable[GenerationRequest],
        *,
        concurrency: int = 16,
        poll: PollPolicy | None = None,
    ) -> GenerationStream:
        """Run many requests concurrently; yield one outcome per request as each completes.

        Requests are consumed lazily. One failure never stops the rest. Leaving the loop early
        (``break`` or cancellation) stops new submissions and local waits; use the stream as
        ``async with`` to read ``stream.remaining`` (the task ids of what was still running).
        All submissions share the client's slot budget (``max_in_flight``).

        Args:
            requests: Any iterable or async iterable of requests.
            concurrency: How many requests are in progress at once (the slot budget may
                hold them back further).
            poll: Overrides the client's poll policy.
        """
        self._ensure_open()
        return GenerationStream(self, requests, concurrency=concurrency, poll=poll)

    async def download(
        self, task: Task | str, directory: str | os.PathLike[str]
    ) -> list[pathlib.Path]:
        """Download all images of a succeeded task concurrently into ``directory``.

        Files are named ``<task_id>-<index>.<png|jpg>`` and written atomically; the API key is
        sent to the API's own origin only, never to an image host.

        Args:
            task: A task, or a task id (fetched first).
            directory: Created if missing.

        Returns:
            The paths, in image-index order.

        Raises:
            TaskFailedError: The task failed.
            KlingError: The task has not finished yet.
        """
        self._ensure_open()
        if not isinstance(task, Task):
            task = await self.get_task(task)
        if task.status is TaskStatus.FAILED:
            raise TaskFailedError(task)
        if task.status is not TaskStatus.SUCCEED:
            raise KlingError(
                f"the task has not succeeded yet (status {task.status}); wait for it first",
                task_id=task.task_id,
            )
        return await download_images(
            task,
            pathlib.Path(directory),
            lambda url: call_with_retry(
                lambda: self._transport.fetch(url, max_bytes=MAX_DOWNLOAD_BYTES), self.retry
            ),
        )
