"""Retry policy: frozen settings, pure decisions, and the loop that applies them.

The ``backoff`` library supplies the timing (exponential growth with full jitter); everything
else here is a pure function of (error, attempt, policy), so the decision can be tested alone.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TypeVar

import attrs
import backoff

from kling_async._constants import HEADER_RETRY_AFTER, HEADER_RETRY_AFTER_MS
from kling_async._errors import (
    APIError,
    RateLimitError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
)

_log = logging.getLogger("kling_async")
_T = TypeVar("_T")


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How HTTP requests are retried on rate limits, server errors and transient failures.

    Quota, authentication, permission, validation and content-policy errors are never retried.
    A create request is re-sent only when it provably was not accepted (see the docs on
    submitting safely). Use ``RetryPolicy(max_attempts=1)`` to turn retries off, and
    ``RetryPolicy(base_delay=0)`` in tests to remove the waits.
    """

    max_attempts: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    """Attempts in total, the first included (1 = no retry)."""
    base_delay: float = attrs.field(default=0.5, validator=_positive)
    """The first backoff step in seconds; it doubles per attempt, with full jitter."""
    max_delay: float = attrs.field(default=30.0, validator=_positive)
    """The largest backoff step in seconds."""
    max_retry_after: float = attrs.field(default=120.0, validator=_positive)
    """The longest ``Retry-After`` the client waits out; a longer one raises at once."""

    def delays(self) -> Iterator[float]:
        """The jittered backoff steps, without end."""
        steps = backoff.expo(base=2, factor=self.base_delay, max_value=self.max_delay)
        next(steps)  # backoff's generators are primed with one next()
        for step in steps:
            yield backoff.full_jitter(step)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date)."""
    millis = headers.get(HEADER_RETRY_AFTER_MS)
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get(HEADER_RETRY_AFTER)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # the asctime form carries no zone; HTTP dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_retryable(error: BaseException) -> bool:
    """Whether a failed idempotent request (a GET) may be sent again."""
    if isinstance(error, TransportError):
        return True
    if isinstance(error, UnexpectedResponseError):
        return error.http_status >= 500
    return isinstance(error, (RateLimitError, ServerError))


def provably_not_accepted(error: BaseException) -> bool:
    """Whether a failed create request certainly did not create a task (safe to re-send)."""
    if isinstance(error, TransportError):
        return not error.maybe_delivered
    if isinstance(error, UnexpectedResponseError):
        return False
    if isinstance(error, RateLimitError):
        return True
    return isinstance(error, ServerError) and error.code is not None and 5000 <= error.code <= 5002


def retry_delay(
    policy: RetryPolicy, attempt: int, error: BaseException, step: float
) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` to give up.

    Args:
        policy: The retry settings.
        attempt: How many attempts were made so far (1 after the first).
        error: What the last attempt raised (already judged retryable).
        step: The next jittered backoff step, used when the server named no wait.
    """
    if attempt >= policy.max_attempts:
        return None
    retry_after = error.retry_after if isinstance(error, APIError) else None
    if retry_after is not None:
        return retry_after if retry_after <= policy.max_retry_after else None
    return step


async def call_with_retry(
    attempt_once: Callable[[], Awaitable[_T]],
    policy: RetryPolicy,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> _T:
    """Run ``attempt_once`` until it succeeds, the error is not retryable, or the policy says stop.

    Raises:
        KlingError: The last attempt's error.
    """
    steps: Iterator[float] | None = None  # made on the first failure only: the common path
    attempt = 0
    while True:
        attempt += 1
        try:
            return await attempt_once()
        except Exception as exc:
            if not retryable(exc):
                raise
            if steps is None:
                steps = policy.delays()
            delay = retry_delay(policy, attempt, exc, next(steps))
            if delay is None:
                raise
            _log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, exc, delay)
        await asyncio.sleep(delay)
