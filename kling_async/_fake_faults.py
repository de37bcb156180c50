"""Scripted faults for FakeKlingServer: the public `Fault` vocabulary and its FIFO queue."""

from __future__ import annotations

import http
import json
from typing import Final, Literal

import attrs
from aiohttp import web

FaultRoute = Literal["create", "get", "image", "any"]
"""Which requests a scripted fault applies to (``"any"``: create, get and image requests)."""

FaultKind = Literal[
    "status", "html", "concatenated", "accept_then_drop", "drop", "delay", "generic_429"
]
"""The kinds of scripted fault; build them with the `Fault` factory methods."""

ROUTES: Final = frozenset({"create", "get", "image", "any"})

#: Default messages of the Kling error codes (DESIGN.md §3).
KLING_MESSAGES: Final[dict[int, str]] = {
    1000: "authentication failed",
    1001: "authorization is empty",
    1002: "authorization is invalid",
    1003: "authorization is not yet valid",
    1004: "authorization has expired",
    1100: "account exception",
    1101: "account in arrears",
    1102: "resource pack depleted or expired",
    1103: "no permission for this API or model",
    1200: "invalid request parameters",
    1201: "invalid request parameters",
    1202: "invalid request method",
    1203: "requested resource does not exist",
    1300: "platform policy triggered",
    1301: "content security policy triggered",
    1302: "rate limit exceeded, please try again later",
    1303: "parallel task over resource pack limit",
    1304: "IP not on the whitelist",
    5000: "internal server error",
    5001: "service temporarily unavailable",
    5002: "server internal timeout",
}


def error_body(code: int, message: str, request_id: str) -> bytes:
    """Serialise a Kling error envelope (no ``data``)."""
    return json.dumps({"code": code, "message": message, "request_id": request_id}).encode()


@attrs.frozen(kw_only=True)
class Fault:
    """One scripted misbehaviour of FakeKlingServer; build it with a factory method.

    Queue it with ``server.add_fault(fault, route=..., times=...)``. Faults are consumed in FIFO
    order by the requests of their route; a request consumes at most one fault.
    """

    kind: FaultKind
    """What the server does instead of (or around) its normal reply."""
    http_status: int = 200
    """HTTP status of a canned reply."""
    code: int | None = None
    """Kling code of a `status` fault."""
    message: str = ""
    """Message of a `status` fault."""
    retry_after: int | str | None = None
    """``Retry-After`` header value (seconds or an HTTP-date) of a `status` fault."""
    seconds: float = 0.0
    """Sleep of a `delay` fault."""

    @classmethod
    def status(
        cls,
        http_status: int,
        code: int,
        message: str | None = None,
        retry_after: int | str | None = None,
    ) -> Fault:
        """Reply with a Kling JSON error envelope; nothing is created.

        Args:
            http_status: The HTTP status, e.g. 500, 503, 429, 401.
            code: The Kling code in the body, e.g. 5000, 5001, 1302, 1303, 1102, 1004.
            message: The body message; defaults to the code's usual text.
            retry_after: A ``Retry-After`` header: int seconds or an HTTP-date string.

        Returns:
            The fault.
        """
        text = message if message is not None else KLING_MESSAGES.get(code, "error")
        return cls(
            kind="status", http_status=http_status, code=code, message=text, retry_after=retry_after
        )

    @classmethod
    def html(cls, status: int = 502) -> Fault:
        """Reply with an HTML gateway error page (``text/html``); nothing is created.

        Args:
            status: The HTTP status of the page.

        Returns:
            The fault.
        """
        return cls(kind="html", http_status=status)

    @classmethod
    def concatenated(cls) -> Fault:
        """Reply 200 with two JSON documents back to back in one body; nothing is created.

        Returns:
            The fault.
        """
        return cls(kind="concatenated")

    @classmethod
    def accept_then_drop(cls) -> Fault:
        """Handle the request normally (a create creates, holds slots), then drop the connection.

        The client never sees the reply and gets a disconnect error instead.

        Returns:
            The fault.
        """
        return cls(kind="accept_then_drop")

    @classmethod
    def drop(cls) -> Fault:
        """Drop the connection without a reply and without handling the request.

        Returns:
            The fault.
        """
        return cls(kind="drop")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Sleep, then handle the request normally (provokes client read timeouts).

        The request is handled even if the client gave up meanwhile, as a real server would.

        Args:
            seconds: How long to wait before handling.

        Returns:
            The fault.
        """
        return cls(kind="delay", seconds=seconds)

    @classmethod
    def generic_429(cls) -> Fault:
        """Reply 429 with a non-Kling body ``{"error": "too many requests"}`` (router rewrite).

        Returns:
            The fault.
        """
        return cls(kind="generic_429", http_status=429)


def canned_reply(fault: Fault, request_id: str) -> web.Response:
    """Build the reply of a fault that answers instead of the server (status, html, ...)."""
    if fault.kind == "status":
        headers = {"X-Request-Id": request_id}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = error_body(fault.code or 0, fault.message, request_id)
        return web.Response(
            status=fault.http_status, body=body, headers=headers, content_type="application/json"
        )
    if fault.kind == "html":
        phrase = _phrase(fault.http_status)
        page = (
            f"<html>\r\n<head><title>{fault.http_status} {phrase}</title></head>\r\n<body>\r\n"
            f"<center><h1>{fault.http_status} {phrase}</h1></center>\r\n<hr><center>nginx</center>"
            "\r\n</body>\r\n</html>\r\n"
        )
        return web.Response(status=fault.http_status, text=page, content_type="text/html")
    if fault.kind == "concatenated":
        doc = json.dumps({"code": 0, "message": "SUCCEED", "request_id": request_id, "data": {}})
        return web.Response(
            body=(doc + doc).encode(),
            headers={"X-Request-Id": request_id},
            content_type="application/json",
        )
    if fault.kind == "generic_429":
        return web.Response(
            status=429, body=b'{"error":"too many requests"}', content_type="application/json"
        )
    raise ValueError(f"fault {fault.kind!r} has no canned reply")  # pragma: no cover


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@attrs.define
class _Entry:
    fault: Fault
    route: str
    remaining: int


class FaultQueue:
    """Scripted faults in FIFO order; `take` hands out the first one matching a route."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def __len__(self) -> int:
        return sum(entry.remaining for entry in self._entries)

    def add(self, fault: Fault, route: str, times: int) -> None:
        """Queue `fault` for the next `times` requests of `route`."""
        if route not in ROUTES:
            raise ValueError(f"route must be one of {sorted(ROUTES)}, got {route!r}")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._entries.append(_Entry(fault, route, times))

    def take(self, route: str) -> Fault | None:
        """Consume and return the oldest fault for `route` (or ``"any"``), if there is one."""
        if not self._entries:  # the hot path: no faults scripted
            return None
        for position, entry in enumerate(self._entries):
            if entry.route == route or entry.route == "any":
                entry.remaining -= 1
                if entry.remaining == 0:
                    del self._entries[position]
                return entry.fault
        return None

    def clear(self) -> None:
        """Forget every queued fault."""
        self._entries.clear()
