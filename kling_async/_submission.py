"""Submitting a task safely, so that no task is ever created (and billed) twice.

A create request that may have reached the server is never re-sent blindly.
Every submission carries an ``external_task_id``. The request is re-sent only when it provably
was not accepted; after an ambiguous failure the task is looked up by that id first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeGuard

from kling_async import _routes
from kling_async._errors import (
    ConcurrencyLimitError,
    InvalidRequestError,
    KlingError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SubmissionUnknownError,
    TransportError,
    UnexpectedResponseError,
)
from kling_async._models import Task
from kling_async._retry import RetryPolicy, provably_not_accepted, retry_delay
from kling_async._serde import ShapeError, structure_task
from kling_async._transport import Reply, Transport

_log = logging.getLogger("kling_async")

#: Called with a 1303-like error; returns once the submission may be sent again, or ``False``
#: when no other task of ours is in flight (so the wait counts as an ordinary retry).
ConcurrencyHandler = Callable[[RateLimitError], Awaitable[bool]]


def task_from_reply(reply: Reply, *, task_id: str | None = None) -> Task:
    """Read the task from a successful reply.

    Raises:
        UnexpectedResponseError: The reply holds no readable task.
    """
    try:
        return structure_task(reply.envelope.data, reply.envelope.request_id)
    except ShapeError as exc:
        raise UnexpectedResponseError(
            f"the API reply holds no readable task: {exc}",
            http_status=reply.http_status,
            request_id=reply.envelope.request_id,
            body=reply.envelope.data,
            task_id=task_id,
        ) from exc


def is_concurrency_signal(error: BaseException) -> TypeGuard[RateLimitError]:
    """1303, or a 429 whose Kling code a router rewrote away."""
    return isinstance(error, ConcurrencyLimitError) or (
        isinstance(error, RateLimitError) and error.code in (None, 429)
    )


async def submit_safely(
    transport: Transport,
    policy: RetryPolicy,
    body: dict[str, object],
    *,
    external_task_id: str,
    lookup: Callable[[str], Awaitable[Task]],
    on_concurrency_limit: ConcurrencyHandler,
) -> Task:
    """Create a task, re-sending only when that cannot create a second one.

    Args:
        transport: Sends the create request.
        policy: Attempts and backoff.
        body: The wire body (it carries ``external_task_id``).
        external_task_id: The id to look the task up by after an ambiguous failure.
        lookup: ``get_task`` (with its own retries).
        on_concurrency_limit: Waits behind the slot budget after a 1303.

    Raises:
        SubmissionUnknownError: The request may have created a task that cannot be found now.
        KlingError: The API refused the request, or retries ran out.
    """
    steps = policy.delays()
    attempt = 0
    ambiguous: KlingError | None = None
    while True:
        attempt += 1
        try:
            reply = await transport.request("POST", _routes.CREATE_TASK, json=body)
            return task_from_reply(reply)
        except KlingError as exc:
            if ambiguous is not None and isinstance(exc, InvalidRequestError):
                # A re-send refused as a duplicate external_task_id: the first one got through.
                found = await _reconcile(lookup, external_task_id, exc)
                if found is not None:
                    return found
                raise
            if provably_not_accepted(exc):
                if is_concurrency_signal(exc) and await on_concurrency_limit(exc):
                    attempt -= 1  # waited behind our own tasks: not a failed attempt
                    continue
                delay = retry_delay(policy, attempt, exc, next(steps))
                if delay is None:
                    raise
                _log.debug(
                    "create attempt %d not accepted (%s); retry in %.2f s", attempt, exc, delay
                )
                await asyncio.sleep(delay)
                continue
            if not _is_ambiguous(exc):
                raise
            _log.warning(
                "create request for external_task_id=%s may have reached the API (%s); "
                "looking it up before re-sending",
                external_task_id,
                type(exc).__name__,
            )
            found = await _reconcile(lookup, external_task_id, exc)
            if found is not None:
                return found
            ambiguous = exc
            if attempt >= policy.max_attempts:
                raise


def _is_ambiguous(error: KlingError) -> bool:
    # A failure after the request may have been written, or a reply we could not read.
    return isinstance(error, (TransportError, UnexpectedResponseError, ServerError))


async def _reconcile(
    lookup: Callable[[str], Awaitable[Task]], external_task_id: str, cause: KlingError
) -> Task | None:
    """The task created under ``external_task_id``, or ``None`` if there provably is none."""
    try:
        return await lookup(external_task_id)
    except NotFoundError:
        return None
    except KlingError as exc:
        raise SubmissionUnknownError(
            external_task_id,
            f"the create request may have been accepted ({type(cause).__name__}: "
            f"{cause.message}) and the task could not be looked up ({type(exc).__name__}); "
            f"look it up later by its external_task_id instead of re-submitting",
        ) from exc
