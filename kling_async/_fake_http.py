"""FakeKlingServer's HTTP plumbing: replies, dropped connections, auth, recording, faults."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from kling_async._fake_faults import Fault, canned_reply, error_body
from kling_async._fake_records import RecordedRequest

REDACTED: Final = "<redacted>"

Refusal = tuple[int, str]
"""A Kling error (code, message) refusing a request."""


def request_id() -> str:
    """A fresh request id."""
    return str(uuid.uuid4())


def json_reply(status: int, body: bytes, rid: str) -> web.Response:
    """A JSON reply carrying `rid` in ``X-Request-Id``."""
    return web.Response(
        status=status, body=body, content_type="application/json", headers={"X-Request-Id": rid}
    )


def error_reply(status: int, code: int, message: str) -> web.Response:
    """A Kling error envelope with a fresh request id."""
    rid = request_id()
    return json_reply(status, error_body(code, message, rid), rid)


def drop(request: web.Request) -> web.Response:
    """Abort the connection; the returned reply is never written."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


def auth_error(header: str, api_key: str | None) -> Refusal | None:
    """Check an ``Authorization`` header; return the Kling (code, message) refusing it, or None."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header or (scheme.lower() == "bearer" and not token):
        return 1001, "authorization is empty"
    if scheme.lower() != "bearer":
        return 1002, "authorization is invalid"
    if api_key is not None and not hmac.compare_digest(token.encode(), api_key.encode()):
        return 1002, "authorization is invalid"
    return None


def record_of(request: web.Request, route: str, body: Any, bearer_ok: bool) -> RecordedRequest:
    """Record a request, with the ``Authorization`` value redacted."""
    headers = {
        name: REDACTED if name.lower() == "authorization" else value
        for name, value in request.headers.items()
    }
    return RecordedRequest(
        method=request.method,
        path=request.path,
        route=route,
        query=dict(request.query),
        headers=headers,
        json=body,
        authorization_present="Authorization" in request.headers,
        bearer_ok=bearer_ok,
        received_at=time.time(),
    )


async def apply_fault(
    fault: Fault | None,
    request: web.Request,
    handle: Callable[[], web.Response],
    stopping: asyncio.Event,
) -> web.Response:
    """Answer `request` through `fault` (`handle` is the normal handling); no fault: `handle()`."""
    if fault is None:
        return handle()
    if fault.kind == "delay":
        try:
            await asyncio.wait_for(stopping.wait(), fault.seconds)
        except asyncio.TimeoutError:
            return handle()
        return drop(request)  # the server is shutting down
    if fault.kind == "accept_then_drop":
        handle()
        return drop(request)
    if fault.kind == "drop":
        return drop(request)
    return canned_reply(fault, request_id())
