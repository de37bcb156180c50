"""FakeKlingServer: an in-process fake of the Kling image API for tests, demos and benchmarks.

It speaks the wire contract of ``POST /kling/v1/images/generations`` and
``GET /kling/v1/images/generations/{id}``, serves the generated PNGs itself, and records what it
received. Tasks progress over a configurable time (computed lazily, so 10,000 concurrent tasks
cost nothing while idle); scripted faults, a parallel-slot limit, messy real-world reply shapes
and callbacks can be switched on::

    async with FakeKlingServer(api_key="sk-test") as server:
        server.add_fault(Fault.status(503, 5001), route="get")
        async with kling_async.KlingClient("sk-test", base_url=server.base_url) as client:
            ...

Run ``python -m kling_async.testing --port 8765`` to serve one until interrupted.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from kling_async import _fake_http as _http
from kling_async import _fake_wire as _wire
from kling_async._fake_callbacks import CallbackDispatcher
from kling_async._fake_cli import parse_options, serve_forever
from kling_async._fake_faults import Fault, FaultQueue, FaultRoute
from kling_async._fake_http import Refusal, apply_fault, error_reply
from kling_async._fake_png import colour_for, make_png
from kling_async._fake_records import (
    DEFAULT_FAILURE,
    FAILED,
    STATUSES,
    SUBMITTED,
    TERMINAL,
    CallbackDelivery,
    FakeTask,
    RecordedRequest,
    Snapshot,
)
from kling_async._fake_wire import CreateSpec, InvalidBody, render_task, validate_create

__all__ = [
    "CallbackDelivery",
    "FakeKlingServer",
    "FakeTask",
    "Fault",
    "FaultRoute",
    "RecordedRequest",
    "main",
]

CREATE_PATH: Final = "/kling/v1/images/generations"
_NOT_JSON: Final = object()


class FakeKlingServer:
    """An aiohttp.web server on 127.0.0.1 that behaves like Kling's image API (via DeerAPI).

    Use it as ``async with FakeKlingServer(...) as server`` (or `start` / `stop`). The behaviour
    switches (`api_key` to `record_requests`, except `image_host`, `port` and `seed`) are also
    public attributes that may be changed while it runs.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see `base_url`).
        api_key: If set, only ``Authorization: Bearer <api_key>`` is accepted (missing header:
            401/1001, other key: 401/1002); if None any non-empty Bearer token is.
        task_duration: Seconds from creation to the terminal state, or a callable drawn once per
            task (e.g. ``lambda: random.uniform(5, 30)``). A task is ``submitted`` for the first
            10 % of it, then ``processing``. With 0 the first GET already sees the end.
        auto_progress: If False, tasks created from then on stay ``submitted`` until
            `set_status` / `finish`.
        slot_limit: Account parallel-task limit; a task holds ``n`` slots until it ends, and a
            create that would exceed the limit gets 429/1303. None: unlimited.
        image_host: Host name put in result image URLs (default: `host`), e.g. ``"localhost"``
            to give images another origin than the API.
        image_size: ``(width, height)`` of the generated PNGs.
        quirks: Reply with the messy real-world shapes of DESIGN.md §3 (code ``"success"`` or
            absent, router envelopes, status words like ``SUCCESS``, timestamps in seconds, image
            items without index, nulls, unknown fields), chosen per reply from `seed`.
        seed: Seed of every random choice (quirks, callback drops).
        callback_duplicate: Send every callback twice.
        callback_delay: Seconds to wait before each callback.
        callback_out_of_order: Hold a task's callbacks until its terminal one, then send them
            newest first.
        callback_drop: Probability (0–1) that a callback is silently not sent; True drops all.
        record_requests: Keep `requests` / `image_requests` (turn off for long benchmarks).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        task_duration: float | Callable[[], float] = 0.0,
        auto_progress: bool = True,
        slot_limit: int | None = None,
        image_host: str | None = None,
        image_size: tuple[int, int] = (320, 320),
        quirks: bool = False,
        seed: int = 0,
        callback_duplicate: bool = False,
        callback_delay: float = 0.0,
        callback_out_of_order: bool = False,
        callback_drop: float | bool = 0.0,
        record_requests: bool = True,
    ) -> None:
        self.host = host
        self.api_key = api_key
        self.task_duration = task_duration
        self.auto_progress = auto_progress
        self.slot_limit = slot_limit
        self.image_size = image_size
        self.quirks = quirks
        self.callback_duplicate = callback_duplicate
        self.callback_delay = callback_delay
        self.callback_out_of_order = callback_out_of_order
        self.callback_drop = callback_drop
        self.record_requests = record_requests
        self.requests: list[RecordedRequest] = []
        """Every request received, in arrival order (also faulted ones)."""
        self.image_requests: list[RecordedRequest] = []
        """The requests for generated images."""
        self.create_count = 0
        """Tasks actually created."""
        self.get_count = 0
        """GET requests received on the task route (faulted ones included)."""
        self.count_1303 = 0
        """Creates refused with 1303 because of `slot_limit`."""
        self.peak_slots_in_use = 0
        """Highest `slots_in_use` seen."""
        self._port = port
        self._image_host = image_host or host
        self._slots = 0
        self._tasks: dict[str, FakeTask] = {}
        self._by_external: dict[str, FakeTask] = {}
        self._deadlines: list[tuple[float, int, FakeTask]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._faults = FaultQueue()
        self._rng = random.Random(seed)
        self._quirk_turn = itertools.count()
        self._sequence = itertools.count()
        self._callbacks = CallbackDispatcher(random.Random(seed + 1))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._state = "new"
        self._base_url = ""
        self._image_base = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            RuntimeError: If the server was already started.
            OSError: If the address cannot be bound.
        """
        if self._state != "new":
            raise RuntimeError("a FakeKlingServer can only be started once")
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(CREATE_PATH, self._handle_create)
        app.router.add_get(CREATE_PATH + "/{task_id}", self._handle_get)
        app.router.add_get(r"/fake-images/{task_id}/{index:\d+}.png", self._handle_image)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = runner.addresses[0][1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._base_url = f"http://{host}:{port}"
        self._image_base = f"http://{self._image_host}:{port}"
        self._state = "running"

    async def stop(self) -> None:
        """Stop serving: drop open connections and undelivered callbacks. Idempotent."""
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        self._stopping.set()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._callbacks.close()

    async def __aenter__(self) -> FakeKlingServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<FakeKlingServer {self._base_url or '(not started)'} {self._state}>"

    # -- state for tests -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``http://127.0.0.1:54321`` (kept after `stop`).

        Raises:
            RuntimeError: If the server was never started.
        """
        if not self._base_url:
            raise RuntimeError("FakeKlingServer is not started")
        return self._base_url

    @property
    def image_base_url(self) -> str:
        """The origin of result image URLs (differs from `base_url` when `image_host` is set)."""
        return self._image_base

    @property
    def tasks(self) -> Mapping[str, FakeTask]:
        """Every task created, by task id."""
        return self._tasks

    @property
    def slots_in_use(self) -> int:
        """Account slots held right now (sum of ``n`` over running tasks)."""
        if self._loop is not None:
            self._sweep(self._loop.time())
        return self._slots

    @property
    def callbacks_sent(self) -> list[CallbackDelivery]:
        """Every callback POST attempted, in order (dropped ones are not attempted)."""
        return self._callbacks.deliveries

    @property
    def callback_failures(self) -> int:
        """Callback POSTs that failed (no connection, timeout, or an HTTP status ≥ 400)."""
        return self._callbacks.failures

    @property
    def callbacks_dropped(self) -> int:
        """Callbacks not sent because of `callback_drop`."""
        return self._callbacks.dropped

    @property
    def callbacks_pending(self) -> int:
        """Callbacks queued (or held for out-of-order delivery) but not yet attempted."""
        return self._callbacks.pending

    def find_task(self, task_id: str) -> FakeTask | None:
        """Look a task up by task id or external task id, as the GET route does.

        Args:
            task_id: A task id or an external task id.

        Returns:
            The task, or None if there is none.
        """
        return self._tasks.get(task_id) or self._by_external.get(task_id)

    def set_status(self, task_id: str, status: str, message: str | None = None) -> FakeTask:
        """Move a task to `status` by hand; it stops following its automatic schedule.

        Args:
            task_id: Task id or external task id.
            status: ``submitted``, ``processing``, ``succeed`` or ``failed``.
            message: The ``task_status_msg``; a failure without one gets a default reason.

        Returns:
            The task.

        Raises:
            KeyError: If there is no such task.
            ValueError: If `status` is not one of the four, or the task already ended.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        task = self.find_task(task_id)
        if task is None:
            raise KeyError(task_id)
        if task.is_terminal:
            raise ValueError(f"task {task.task_id} already ended ({task.status})")
        if status == FAILED and not message:
            message = DEFAULT_FAILURE
        timer = self._timers.pop(task.task_id, None)
        if timer is not None:
            timer.cancel()
        snap = task._force(status, message or "", int(time.time() * 1000))
        if snap is not None:
            self._after_change(task, snap)
        return task

    def finish(self, task_id: str, ok: bool = True, message: str | None = None) -> FakeTask:
        """End a task now: ``succeed`` if `ok`, else ``failed`` with `message`.

        Args:
            task_id: Task id or external task id.
            ok: Whether the task succeeds.
            message: The failure reason (default: a content-rejection message).

        Returns:
            The task.

        Raises:
            KeyError: If there is no such task.
            ValueError: If the task already ended.
        """
        return self.set_status(task_id, "succeed" if ok else FAILED, message)

    def add_fault(self, fault: Fault, route: FaultRoute = "any", times: int = 1) -> None:
        """Script a fault for the next `times` requests of `route` (FIFO with earlier faults).

        Args:
            fault: What to do, built with a `Fault` factory.
            route: ``create``, ``get``, ``image`` or ``any`` of them.
            times: How many requests it applies to.

        Raises:
            ValueError: If `route` is unknown or `times` < 1.
        """
        self._faults.add(fault, route, times)

    def clear_faults(self) -> None:
        """Forget every scripted fault not yet consumed."""
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many scripted fault applications are left."""
        return len(self._faults)

    # -- task bookkeeping ------------------------------------------------------------------

    def _observe(self, task: FakeTask) -> None:
        if task._is_scheduled and self._loop is not None:
            for snap in task._advance(self._loop.time()):
                self._after_change(task, snap)

    def _after_change(self, task: FakeTask, snap: Snapshot) -> None:
        if snap.state in TERMINAL:
            self._slots -= task.n
        if task.callback_url is not None and self._state == "running":
            payload = render_task(task, snap, self._image_base, self._rng if self.quirks else None)
            self._callbacks.emit(
                task.task_id,
                task.callback_url,
                snap.state,
                payload,
                terminal=snap.state in TERMINAL,
                duplicate=self.callback_duplicate,
                delay=self.callback_delay,
                out_of_order=self.callback_out_of_order,
                drop=float(self.callback_drop),
            )

    def _arm(self, task: FakeTask) -> None:
        # Timers exist only for tasks with a callback: the others advance when looked at.
        when = task._next_change_at()
        if when is not None and self._loop is not None and self._state == "running":
            self._timers[task.task_id] = self._loop.call_at(when, self._on_timer, task)

    def _on_timer(self, task: FakeTask) -> None:
        self._timers.pop(task.task_id, None)
        self._observe(task)
        self._arm(task)

    def _sweep(self, now: float) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            self._observe(heapq.heappop(deadlines)[2])

    def _new_task(self, body: dict[str, Any], spec: CreateSpec, now: float) -> FakeTask:
        duration = self.task_duration() if callable(self.task_duration) else self.task_duration
        duration = max(0.0, float(duration))
        created = int(time.time() * 1000)
        task_id = str((created << 22) | (next(self._sequence) & 0x3FFFFF))  # snowflake-like
        schedule = (now, now + duration / 10, now + duration) if self.auto_progress else None
        task = FakeTask(
            task_id=task_id,
            external_task_id=spec.external_task_id,
            n=spec.n,
            body=body,
            callback_url=spec.callback_url,
            will_fail="FAIL" in spec.prompt,
            created_at=created,
            updated_at=created,
            schedule=schedule,
            observe=self._observe,
        )
        self._tasks[task_id] = task
        if spec.external_task_id is not None:
            self._by_external[spec.external_task_id] = task
        self.create_count += 1
        self._slots += spec.n
        self.peak_slots_in_use = max(self.peak_slots_in_use, self._slots)
        if schedule is not None:
            heapq.heappush(self._deadlines, (schedule[2], next(self._sequence), task))
        if spec.callback_url is not None:
            self._after_change(task, Snapshot(SUBMITTED, created, ""))
            self._arm(task)
        return task

    # -- HTTP ------------------------------------------------------------------------------

    def _receive(self, request: web.Request, route: str, body: Any) -> Refusal | None:
        """Record `request` (if recording is on); return why its Authorization is refused."""
        refusal = _http.auth_error(request.headers.get("Authorization", ""), self.api_key)
        if self.record_requests:
            recorded = _http.record_of(request, route, body, refusal is None)
            self.requests.append(recorded)
            if route == "image":
                self.image_requests.append(recorded)
        return refusal

    def _task_reply(self, task: FakeTask, snap: Snapshot) -> web.Response:
        rid = _http.request_id()
        rng = self._rng if self.quirks else None
        variant = next(self._quirk_turn) if self.quirks else None
        reply = _wire.envelope(render_task(task, snap, self._image_base, rng), rid, variant)
        return _http.json_reply(200, _wire.dumps(reply), rid)

    async def _handle_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = _NOT_JSON
        refusal = self._receive(request, "create", None if body is _NOT_JSON else body)
        handle = functools.partial(self._create, body, refusal)
        return await apply_fault(self._faults.take("create"), request, handle, self._stopping)

    def _create(self, body: Any, refusal: Refusal | None) -> web.Response:
        if refusal is not None:
            return error_reply(401, *refusal)
        try:
            spec = validate_create(body)
        except InvalidBody as exc:
            return error_reply(400, 1201, str(exc))
        if spec.external_task_id is not None and spec.external_task_id in self._by_external:
            return error_reply(400, 1201, "external_task_id already exists")
        assert self._loop is not None
        now = self._loop.time()
        self._sweep(now)  # slots of tasks that ended since the last look are free again
        if self.slot_limit is not None and self._slots + spec.n > self.slot_limit:
            self.count_1303 += 1
            return error_reply(429, 1303, "parallel task over resource pack limit")
        task = self._new_task(body, spec, now)
        # The create reply always shows the task as just submitted.
        return self._task_reply(task, Snapshot(SUBMITTED, task.created_at, ""))

    async def _handle_get(self, request: web.Request) -> web.Response:
        refusal = self._receive(request, "get", None)
        self.get_count += 1
        handle = functools.partial(self._get, request.match_info["task_id"], refusal)
        return await apply_fault(self._faults.take("get"), request, handle, self._stopping)

    def _get(self, task_id: str, refusal: Refusal | None) -> web.Response:
        if refusal is not None:
            return error_reply(401, *refusal)
        task = self.find_task(task_id)
        if task is None:
            return error_reply(400, 1201, "task not found")
        return self._task_reply(task, task._snapshot())

    async def _handle_image(self, request: web.Request) -> web.Response:
        self._receive(request, "image", None)
        task_id, index = request.match_info["task_id"], int(request.match_info["index"])
        handle = functools.partial(self._image, task_id, index)
        return await apply_fault(self._faults.take("image"), request, handle, self._stopping)

    def _image(self, task_id: str, index: int) -> web.Response:
        task = self._tasks.get(task_id)
        if task is None or index >= task.n:
            return error_reply(404, 1203, "image not found")
        width, height = self.image_size
        png = make_png(width, height, colour_for(f"{task_id}/{index}"))
        return web.Response(
            body=png, content_type="image/png", headers={"Cache-Control": "max-age=86400"}
        )

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        self._receive(request, "other", None)
        return error_reply(404, 1202, "invalid request method or path")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a FakeKlingServer until Ctrl-C or SIGTERM, printing its base URL on stdout.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``); see ``--help``.

    Returns:
        The exit status (0).
    """
    return serve_forever(FakeKlingServer(**parse_options(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
