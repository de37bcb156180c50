"""Webhooks: the callback receiver that authenticates pushed task states, and ``parse_callback``.

Kling POSTs the bare task object to a task's ``callback_url`` on every status change. The
callbacks are not signed, may repeat and may arrive out of order, so:

- every callback URL carries the task's ``external_task_id`` and a per-task token,
  ``HMAC-SHA256(secret, external_task_id)`` in hex, which the receiver checks (403 otherwise);
- a body is read with the receiver's own size cap (413), must be JSON (400) and must describe
  the task its token was issued for (403);
- accepted states go through the same merge as polled ones: a terminal state is final,
  otherwise the newest ``updated_at`` wins, so a task never moves backwards.

Give the receiver to ``KlingClient(callbacks=receiver)`` and waits complete as soon as the
callback arrives, while polling carries on ``fallback_factor`` times slower in case a callback
is lost.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from kling_async._errors import ConfigurationError, InvalidCallbackError, RequestValidationError
from kling_async._models import Task
from kling_async._serde import ShapeError, excerpt, read_envelope, structure_task
from kling_async._tracker import merge

__all__ = [
    "CallbackReceiver",
    "DEFAULT_FALLBACK_FACTOR",
    "DEFAULT_MAX_BODY",
    "Listener",
    "parse_callback",
]

DEFAULT_MAX_BODY: Final = 1024 * 1024
"""The largest callback body accepted by default, in bytes (1 MiB)."""
DEFAULT_FALLBACK_FACTOR: Final = 5.0
"""How much slower than its poll policy a client polls tasks whose states are pushed."""

#: How many tasks' newest states a receiver remembers (to drop duplicates and stale states).
_REMEMBERED_TASKS: Final = 10_000
#: Bytes read from a request body at a time.
_CHUNK: Final = 64 * 1024
#: Seconds the standalone server drains an oversized body after answering 413.
_LINGER_SECONDS: Final = 1.0

_log = logging.getLogger("kling_async.webhooks")

Listener = Callable[[Task], object]
"""Called with every accepted pushed state; an awaitable result is awaited."""


def parse_callback(body: bytes | str | Mapping[str, Any]) -> Task:
    """Read a callback body (the bare task object Kling POSTs) as a :class:`~kling_async.Task`.

    For users of other web frameworks. It does not check the callback's token: authenticate
    the request first, or use :meth:`CallbackReceiver.receive`, which does both.

    Args:
        body: The raw body, or the already decoded JSON object.

    Returns:
        The pushed state, with ``request_id=None``.

    Raises:
        InvalidCallbackError: The body is not JSON, or not a task object (also a ``ValueError``).
    """
    if isinstance(body, (bytes, str)):
        raw = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
        try:
            data: Any = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise InvalidCallbackError(f"the callback body is not JSON: {excerpt(raw)!r}") from exc
    else:
        data = body
    # Tolerate a router that wraps the task in a reply envelope.
    if isinstance(data, Mapping) and "task_id" not in data and "data" in data:
        data = read_envelope(data).data
    try:
        return structure_task(data, None)
    except ShapeError as exc:
        raise InvalidCallbackError(f"the callback body is not a task object: {exc}") from exc


_REASONS: Final = {200: "ok", 400: "malformed callback", 403: "forbidden", 413: "body too large"}


def _size(body: bytes | str | Mapping[str, Any]) -> int:
    if isinstance(body, str):
        return len(body.encode("utf-8", "replace"))
    return len(body) if isinstance(body, bytes) else 0  # a decoded object was capped when read


def _reply(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


class CallbackReceiver:
    """Receives Kling's task callbacks, authenticates them and hands new states to listeners.

    Mount :meth:`handle` in an aiohttp application, or serve it on its own with :meth:`start`.
    Pass the receiver to ``KlingClient(callbacks=...)``: submissions then carry
    :meth:`callback_url_for` automatically and waits complete when the callback arrives.
    One receiver can serve several clients; closing a client does not stop it.

    Args:
        public_url: Where the API can reach this receiver (``https://host/path``). Callback
            URLs are this plus a query string. A port of ``0`` (tests, local runs) is replaced
            by the port :meth:`start` binds.
        secret: The key of the per-task tokens; keep it out of source control. Tokens stay
            valid for as long as the secret does, so rotating it rejects earlier tasks' callbacks.
        max_body: The largest body accepted, in bytes (413 above), whatever the hosting
            application allows.
        fallback_factor: How much slower than its poll policy a client polls tasks whose
            states this receiver pushes (polling is the fallback for lost callbacks).

    Raises:
        ConfigurationError: ``public_url`` is not an http(s) URL, ``secret`` is empty, or a
            limit is out of range.
    """

    def __init__(
        self,
        *,
        public_url: str,
        secret: bytes | str,
        max_body: int = DEFAULT_MAX_BODY,
        fallback_factor: float = DEFAULT_FALLBACK_FACTOR,
    ) -> None:
        url = URL(public_url)
        if url.scheme not in ("http", "https") or not url.host or url.fragment:
            raise ConfigurationError(
                f"public_url must be an http(s) URL without a fragment, got {public_url!r}"
            )
        key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not key:
            raise ConfigurationError("the callback secret must not be empty")
        if max_body < 1:
            raise ConfigurationError("max_body must be at least 1 byte")
        if fallback_factor < 1:
            raise ConfigurationError("fallback_factor must be at least 1")
        self._configured_url = url
        self._url = url
        self._key = key
        self.max_body = max_body
        """The largest body accepted, in bytes."""
        self.fallback_factor = fallback_factor
        """How much slower a client polls tasks whose states this receiver pushes."""
        self._listeners: dict[Listener, None] = {}  # an ordered set
        self._states: collections.OrderedDict[str, Task] = collections.OrderedDict()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def public_url(self) -> str:
        """Where the API reaches this receiver (without a task's query string)."""
        return str(self._url)

    @property
    def port(self) -> int | None:
        """The port the standalone server listens on, or ``None`` when it is not running."""
        return self._port

    def __repr__(self) -> str:
        state = "serving" if self._runner is not None else "not serving"
        return f"<CallbackReceiver {state} public_url={self.public_url!r}>"

    # -- tokens ------------------------------------------------------------------------------

    def _token(self, external_task_id: str) -> str:
        message = external_task_id.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def callback_url_for(self, external_task_id: str) -> str:
        """The callback URL, with the task's token, that a submission should carry.

        Args:
            external_task_id: The submission's external task id.

        Raises:
            RequestValidationError: ``external_task_id`` is empty.
        """
        if not external_task_id:
            raise RequestValidationError("external_task_id", "must not be empty")
        query = {"external_task_id": external_task_id, "token": self._token(external_task_id)}
        return str(self._url.update_query(query))

    def _authenticate(self, external_task_id: str, token: str | None) -> bool:
        if not external_task_id or token is None:
            return False
        expected = self._token(external_task_id).encode("ascii")
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """Deliver every accepted pushed state to ``listener`` from now on.

        Listeners run inside the request handler, in subscription order; an exception in one
        is logged and does not stop the others. A listener that returns an awaitable is awaited
        before the callback is answered, so keep it short.
        """
        self._listeners[listener] = None

    def unsubscribe(self, listener: Listener) -> None:
        """Stop delivering to ``listener`` (no error if it was not subscribed)."""
        self._listeners.pop(listener, None)

    def latest(self, task_id: str) -> Task | None:
        """The newest state pushed for a task, if this receiver has seen one recently."""
        return self._states.get(task_id)

    async def receive(
        self,
        body: bytes | str | Mapping[str, Any],
        *,
        external_task_id: str | None,
        token: str | None,
    ) -> int:
        """Process one callback; for mounting the receiver in another web framework.

        Args:
            body: The request body (raw, or already decoded JSON).
            external_task_id: The ``external_task_id`` query parameter of the request.
            token: The ``token`` query parameter of the request.

        Returns:
            The HTTP status to answer: 403 for a missing or wrong token or a body about another
            task, 413 for a body over ``max_body``, 400 for a body that is not a JSON task
            object, 200 otherwise. Only a 200 can change a task's state.
        """
        if external_task_id is None or not self._authenticate(external_task_id, token):
            _log.debug("callback rejected (403): missing or wrong token")
            return 403
        if _size(body) > self.max_body:
            _log.debug("callback rejected (413) for external_task_id=%s", external_task_id)
            return 413
        return await self._deliver(body, external_task_id)

    async def _deliver(self, body: bytes | str | Mapping[str, Any], external_task_id: str) -> int:
        """Parse an authenticated body, merge its state and hand a new state to the listeners."""
        try:
            task = parse_callback(body)
        except InvalidCallbackError as exc:
            _log.debug("callback rejected (400) for external_task_id=%s: %s", external_task_id, exc)
            return 400
        if task.external_task_id is None:  # no task_info: the URL says which task it is
            task = attrs.evolve(task, external_task_id=external_task_id)
        elif task.external_task_id != external_task_id:
            _log.debug("callback rejected (403): the body is about another external_task_id")
            return 403
        current = self._states.get(task.task_id)
        if current is not None and current.external_task_id != task.external_task_id:
            # This task came with another token before: a token is valid for its task only.
            _log.debug("callback rejected (403): the task belongs to another external_task_id")
            return 403
        merged = merge(current, task)
        if current is not None:
            self._states.move_to_end(task.task_id)
            if merged == current:
                return 200  # a duplicate, or a stale state: nothing new
        self._states[task.task_id] = merged
        while len(self._states) > _REMEMBERED_TASKS:
            self._states.popitem(last=False)
        for listener in list(self._listeners):
            try:
                result = listener(merged)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("a callback listener failed on task_id=%s", task.task_id)
        return 200

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler: ``app.router.add_post(path, receiver.handle)``.

        Answers as :meth:`receive` does; the token is checked before the body is read, and the
        body is read with the receiver's own cap. Note that an access log which records the
        request line records the token too; the standalone server keeps no access log.
        """
        ids = request.query.getall("external_task_id", [])
        tokens = request.query.getall("token", [])
        if len(ids) != 1 or len(tokens) != 1 or not self._authenticate(ids[0], tokens[0]):
            _log.debug("callback rejected (403): missing or wrong token")
            return _reply(403, "forbidden")
        try:
            raw = await self._read_body(request)
        except (HttpProcessingError, ConnectionError):
            _log.debug("callback body for external_task_id=%s is unreadable", ids[0])
            return _reply(400, "unreadable body")
        if raw is None:
            _log.debug("callback rejected (413) for external_task_id=%s", ids[0])
            return _reply(413, "body too large")
        status = await self._deliver(raw, ids[0])
        return _reply(status, _REASONS[status])

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or ``None`` when it is larger than ``max_body``."""
        if request.content_length is not None and request.content_length > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_CHUNK):
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        """Serve the receiver on its own, at ``public_url``'s path.

        Args:
            host: The interface to listen on (``"0.0.0.0"`` for all).
            port: The port to listen on (``0``: any free port; see :attr:`port`).

        Raises:
            RuntimeError: It is already serving.
            OSError: The address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("this CallbackReceiver is already serving")
        app = web.Application()
        app.router.add_post(self._configured_url.path, self.handle)
        # No access log: it would record tokens. A short linger after an early 413 (the
        # client may still be sending) keeps stop() from waiting aiohttp's default 10 s.
        runner = web.AppRunner(app, access_log=None, lingering_time=_LINGER_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        if self._configured_url.explicit_port == 0:
            self._url = self._configured_url.with_port(self._port)

    async def stop(self) -> None:
        """Stop the standalone server (no-op when it is not running)."""
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()
