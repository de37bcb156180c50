"""What FakeKlingServer records: its tasks (with their lazy state machine), requests, callbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

SUBMITTED: Final = "submitted"
PROCESSING: Final = "processing"
SUCCEED: Final = "succeed"
FAILED: Final = "failed"
STATUSES: Final = frozenset({SUBMITTED, PROCESSING, SUCCEED, FAILED})
TERMINAL: Final = frozenset({SUCCEED, FAILED})
DEFAULT_FAILURE: Final = "generation failed: content rejected"


@attrs.frozen
class Snapshot:
    """A task's state at one moment (what one reply or one callback shows)."""

    state: str
    updated_at: int
    message: str


@attrs.define(kw_only=True, eq=False)
class FakeTask:
    """A task held by FakeKlingServer.

    `status`, `status_message` and `updated_at` are computed when read: a task with an automatic
    schedule advances (and frees its slots) the moment anyone looks at it.
    """

    task_id: str
    """The server-assigned id, a long numeric string."""
    external_task_id: str | None
    """The caller's id from the create body, if it sent one."""
    n: int
    """Number of images (and of account slots the task holds while running)."""
    body: dict[str, Any]
    """The create body as received."""
    callback_url: str | None
    """Where status changes are POSTed, if set."""
    will_fail: bool
    """Whether the automatic schedule ends in ``failed`` (the prompt contained "FAIL")."""
    created_at: int
    """Creation time, Unix milliseconds."""
    _updated_at: int
    _state: str = SUBMITTED
    _message: str = ""
    # (created, processing from, terminal from) in loop time; None once steered by hand.
    _schedule: tuple[float, float, float] | None = attrs.field(default=None, repr=False)
    _observe: Callable[[FakeTask], None] | None = attrs.field(default=None, repr=False)

    @property
    def status(self) -> str:
        """Current status: ``submitted``, ``processing``, ``succeed`` or ``failed``."""
        if self._observe is not None:
            self._observe(self)
        return self._state

    @property
    def status_message(self) -> str:
        """Failure reason (or the message given to ``set_status``); ``""`` when none."""
        if self._observe is not None:
            self._observe(self)
        return self._message

    @property
    def updated_at(self) -> int:
        """Time of the last status change, Unix milliseconds."""
        if self._observe is not None:
            self._observe(self)
        return self._updated_at

    @property
    def is_terminal(self) -> bool:
        """Whether the task has succeeded or failed."""
        return self.status in TERMINAL

    # The rest is driven by FakeKlingServer, which owns the side effects (slots, callbacks).

    @property
    def _is_scheduled(self) -> bool:
        """Whether the task still follows its automatic schedule (no `set_status` yet)."""
        return self._schedule is not None and self._state not in TERMINAL

    def _snapshot(self) -> Snapshot:
        """Return the current state (advancing it first)."""
        state = self.status
        return Snapshot(state, self._updated_at, self._message)

    def _next_change_at(self) -> float | None:
        """Loop time of the next scheduled change, or None."""
        if self._schedule is None or self._state in TERMINAL:
            return None
        return self._schedule[1] if self._state == SUBMITTED else self._schedule[2]

    def _advance(self, now: float) -> list[Snapshot]:
        """Apply the scheduled changes due at loop time `now`; return each state reached."""
        reached: list[Snapshot] = []
        if self._schedule is None or self._state in TERMINAL:
            return reached
        start, processing_at, done_at = self._schedule
        if self._state == SUBMITTED and now >= processing_at:
            self._set(PROCESSING, self._at(processing_at - start), "")
            reached.append(Snapshot(self._state, self._updated_at, self._message))
        if self._state == PROCESSING and now >= done_at:
            if self.will_fail:
                self._set(FAILED, self._at(done_at - start), DEFAULT_FAILURE)
            else:
                self._set(SUCCEED, self._at(done_at - start), "")
            reached.append(Snapshot(self._state, self._updated_at, self._message))
        return reached

    def _force(self, state: str, message: str, now_ms: int) -> Snapshot | None:
        """Leave the schedule and move to `state`; return the new state, or None if unchanged."""
        self._schedule = None
        if state == self._state and message == self._message:
            return None
        self._set(state, max(now_ms, self._updated_at), message)
        return Snapshot(self._state, self._updated_at, self._message)

    def _at(self, offset: float) -> int:
        return self.created_at + round(offset * 1000)

    def _set(self, state: str, updated_at: int, message: str) -> None:
        self._state = state
        self._updated_at = updated_at
        self._message = message


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One request FakeKlingServer received (recorded before any fault applies)."""

    method: str
    """HTTP method."""
    path: str
    """URL path, e.g. ``/kling/v1/images/generations``."""
    route: str
    """``create``, ``get``, ``image`` or ``other`` (an unknown route)."""
    query: dict[str, str]
    """Query parameters."""
    headers: dict[str, str]
    """Request headers; the ``Authorization`` value is replaced by ``"<redacted>"``."""
    json: Any
    """The parsed JSON body, or None (no body, or not JSON)."""
    authorization_present: bool
    """Whether an ``Authorization`` header was sent."""
    bearer_ok: bool
    """Whether the ``Authorization`` header was accepted."""
    received_at: float
    """Unix time of arrival."""


@attrs.frozen(kw_only=True)
class CallbackDelivery:
    """One callback POST FakeKlingServer attempted (dropped callbacks are not attempted)."""

    task_id: str
    """The task the callback is about."""
    status: str
    """The task status it reported (canonical word, even in quirks mode)."""
    url: str
    """Where it was POSTed."""
    payload: dict[str, Any]
    """The JSON body sent: the bare task object."""
    http_status: int | None
    """The receiver's HTTP status, or None when delivery failed."""
    error: str | None
    """Why delivery failed, or None."""
    sent_at: float
    """Unix time of the attempt."""
