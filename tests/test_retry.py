"""Retry policy: settings, backoff steps, Retry-After, the pure decisions and the retry loop."""

from __future__ import annotations

import calendar
import email.utils
import itertools
import time

import pytest
from multidict import CIMultiDict

import kling_async as ka
from kling_async._retry import (
    call_with_retry,
    is_retryable,
    parse_retry_after,
    provably_not_accepted,
    retry_delay,
)

NOW = 1_750_000_000.0
NO_WAIT = ka.RetryPolicy(base_delay=0)


def rate_limit(retry_after: float | None = None) -> ka.RateLimitError:
    return ka.RateLimitError("slow down", http_status=429, code=1302, retry_after=retry_after)


def server_error(code: int | None = 5000, http_status: int = 500) -> ka.ServerError:
    return ka.ServerError("oops", http_status=http_status, code=code)


# --- RetryPolicy --------------------------------------------------------------------------


def test_defaults() -> None:
    policy = ka.RetryPolicy()
    assert policy.max_attempts == 5
    assert policy.base_delay == 0.5
    assert policy.max_delay == 30.0
    assert policy.max_retry_after == 120.0


@pytest.mark.parametrize(
    "fields",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"base_delay": -0.1},
        {"max_delay": -1},
        {"max_retry_after": -5},
    ],
)
def test_invalid_settings_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - attrs validators raise plain ValueErrors
        ka.RetryPolicy(**fields)  # type: ignore[arg-type]


def test_one_attempt_and_zero_delay_are_allowed() -> None:
    policy = ka.RetryPolicy(max_attempts=1, base_delay=0, max_delay=0, max_retry_after=0)
    assert policy.max_attempts == 1


def test_policy_is_frozen_and_keyword_only() -> None:
    with pytest.raises(AttributeError):
        ka.RetryPolicy().max_attempts = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        ka.RetryPolicy(3)  # type: ignore[misc]


# --- delays -------------------------------------------------------------------------------


def first_steps(policy: ka.RetryPolicy, count: int) -> list[float]:
    return list(itertools.islice(policy.delays(), count))


def test_delays_are_jittered_within_growing_bounded_steps() -> None:
    policy = ka.RetryPolicy(base_delay=1.0, max_delay=6.0)
    bounds = [1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    samples = [first_steps(policy, len(bounds)) for _ in range(300)]
    for position, bound in enumerate(bounds):
        column = [sample[position] for sample in samples]
        assert all(0 <= delay <= bound for delay in column), (position, bound, max(column))
        # Full jitter: spread over the whole step, not pinned to it.
        assert max(column) > 0.7 * bound
        assert min(column) < 0.3 * bound
        assert len(set(column)) > 100


def test_delays_never_exceed_max_delay() -> None:
    policy = ka.RetryPolicy(base_delay=0.5, max_delay=30.0)
    assert all(0 <= delay <= 30.0 for delay in first_steps(policy, 60))


def test_delays_without_end() -> None:
    assert len(first_steps(ka.RetryPolicy(), 200)) == 200


def test_zero_base_delay_means_no_waits() -> None:
    assert first_steps(NO_WAIT, 20) == [0] * 20


# --- parse_retry_after --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "3"}, 3.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-5"}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after-ms": "-100"}, 0.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Mon, 99 Foo 2024 25:61:00 GMT"}, None),
        ({}, None),
        ({"X-Other": "3"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers), now=NOW) == expected


def test_parse_retry_after_http_date_relative_to_now() -> None:
    headers = CIMultiDict({"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)})
    assert parse_retry_after(headers, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after(headers, now=NOW + 10) == pytest.approx(20.0)


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    headers = CIMultiDict({"Retry-After": email.utils.formatdate(NOW - 60, usegmt=True)})
    assert parse_retry_after(headers, now=NOW) == 0.0


@pytest.fixture
def far_west_local_time(monkeypatch: pytest.MonkeyPatch):
    """Run with a local time zone far from UTC, so local-time mistakes show."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    monkeypatch.setenv("TZ", "EST+05")  # POSIX form: needs no tz database
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 form
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime form: no zone, but it means GMT
    ],
)
@pytest.mark.usefixtures("far_west_local_time")
def test_parse_retry_after_http_date_forms_are_gmt(value: str) -> None:
    now = calendar.timegm((1994, 11, 6, 8, 49, 7))
    assert parse_retry_after(CIMultiDict({"Retry-After": value}), now=now) == pytest.approx(30.0)


# --- is_retryable -------------------------------------------------------------------------

RETRYABLE = [
    ka.TransportError("timeout"),
    ka.TransportError("refused", maybe_delivered=False),
    rate_limit(),
    ka.RateLimitError("429 from a router", http_status=429),
    ka.ConcurrencyLimitError("parallel limit", http_status=429, code=1303),
    server_error(5000),
    server_error(5001, 503),
    server_error(None, 502),
    ka.UnexpectedResponseError("gateway html", http_status=502, body="<html>"),
]
NOT_RETRYABLE = [
    ka.QuotaExceededError("arrears", http_status=429, code=1101),
    ka.AuthenticationError("bad key", http_status=401, code=1002),
    ka.PermissionDeniedError("no", http_status=403, code=1103),
    ka.PermissionDeniedError("ip", http_status=429, code=1304),
    ka.InvalidRequestError("bad", http_status=400, code=1200),
    ka.NotFoundError("gone", http_status=404, code=1203),
    ka.ContentPolicyError("unsafe", http_status=400, code=1301),
    ka.UnexpectedResponseError("not json", http_status=200, body="{}{}"),
    ka.RequestValidationError("n", "bad"),
    ka.ConfigurationError("no key"),
    ValueError("not ours"),
]


@pytest.mark.parametrize("error", RETRYABLE, ids=repr)
def test_retryable(error: BaseException) -> None:
    assert is_retryable(error)


@pytest.mark.parametrize("error", NOT_RETRYABLE, ids=repr)
def test_not_retryable(error: BaseException) -> None:
    assert not is_retryable(error)


# --- provably_not_accepted ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ka.TransportError("connect refused", maybe_delivered=False),
        rate_limit(),
        ka.RateLimitError("429 from a router", http_status=429),
        ka.ConcurrencyLimitError("parallel limit", http_status=429, code=1303),
        server_error(5000),
        server_error(5001, 503),
        server_error(5002, 504),
    ],
    ids=repr,
)
def test_provably_not_accepted(error: BaseException) -> None:
    assert provably_not_accepted(error)


@pytest.mark.parametrize(
    "error",
    [
        ka.TransportError("read timeout", maybe_delivered=True),
        ka.UnexpectedResponseError("gateway html", http_status=502, body="<html>"),
        server_error(None, 502),
        ka.QuotaExceededError("arrears", http_status=429, code=1102),
        ka.AuthenticationError("bad key", http_status=401, code=1002),
        ka.ContentPolicyError("unsafe", http_status=400, code=1301),
        ka.InvalidRequestError("bad", http_status=400, code=1201),
    ],
    ids=repr,
)
def test_not_provably_not_accepted(error: BaseException) -> None:
    assert not provably_not_accepted(error)


# --- retry_delay --------------------------------------------------------------------------


def test_max_attempts_counts_all_attempts() -> None:
    policy = ka.RetryPolicy(max_attempts=3)
    assert retry_delay(policy, 1, server_error(), 0.25) == 0.25
    assert retry_delay(policy, 2, server_error(), 0.5) == 0.5
    assert retry_delay(policy, 3, server_error(), 0.5) is None


def test_one_attempt_means_no_retry() -> None:
    assert retry_delay(ka.RetryPolicy(max_attempts=1), 1, server_error(), 0.1) is None


def test_retry_after_is_honoured_over_the_backoff_step() -> None:
    policy = ka.RetryPolicy(max_retry_after=120.0)
    assert retry_delay(policy, 1, rate_limit(retry_after=7.0), 0.3) == 7.0
    assert retry_delay(policy, 1, rate_limit(retry_after=120.0), 0.3) == 120.0
    assert retry_delay(policy, 1, rate_limit(retry_after=0.0), 0.3) == 0.0


def test_retry_after_above_cap_gives_up() -> None:
    policy = ka.RetryPolicy(max_retry_after=120.0)
    assert retry_delay(policy, 1, rate_limit(retry_after=120.5), 0.3) is None


def test_retry_after_does_not_extend_attempts() -> None:
    policy = ka.RetryPolicy(max_attempts=2)
    assert retry_delay(policy, 2, rate_limit(retry_after=1.0), 0.3) is None


def test_transport_error_uses_the_step() -> None:
    assert retry_delay(ka.RetryPolicy(), 1, ka.TransportError("reset"), 0.42) == 0.42


# --- call_with_retry ----------------------------------------------------------------------


class Flaky:
    """An async callable that raises the given errors in turn, then returns ``result``."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


async def test_retries_retryable_errors_then_succeeds() -> None:
    attempt = Flaky(server_error(), rate_limit(), ka.TransportError("reset"))
    assert await call_with_retry(attempt, NO_WAIT) == "ok"
    assert attempt.calls == 4


async def test_stops_at_max_attempts_and_raises_the_last_error() -> None:
    errors = [server_error(5000), server_error(5001), server_error(5002), server_error(5000)]
    attempt = Flaky(*errors)
    with pytest.raises(ka.ServerError) as info:
        await call_with_retry(attempt, ka.RetryPolicy(max_attempts=3, base_delay=0))
    assert attempt.calls == 3
    assert info.value is errors[2]


async def test_max_attempts_one_means_a_single_call() -> None:
    attempt = Flaky(server_error())
    with pytest.raises(ka.ServerError):
        await call_with_retry(attempt, ka.RetryPolicy(max_attempts=1, base_delay=0))
    assert attempt.calls == 1


@pytest.mark.parametrize(
    "error",
    [
        ka.QuotaExceededError("arrears", http_status=429, code=1101),
        ka.AuthenticationError("bad key", http_status=401, code=1000),
        ka.ContentPolicyError("unsafe", http_status=400, code=1300),
        ka.PermissionDeniedError("ip", http_status=429, code=1304),
        ka.InvalidRequestError("bad", http_status=400, code=1201),
    ],
    ids=repr,
)
async def test_never_retries_final_errors(error: ka.APIError) -> None:
    attempt = Flaky(error)
    with pytest.raises(type(error)) as info:
        await call_with_retry(attempt, NO_WAIT)
    assert info.value is error
    assert attempt.calls == 1


async def test_retry_after_above_cap_raises_at_once() -> None:
    error = rate_limit(retry_after=600.0)
    attempt = Flaky(error)
    with pytest.raises(ka.RateLimitError) as info:
        await call_with_retry(attempt, NO_WAIT)
    assert info.value is error
    assert info.value.retry_after == 600.0
    assert attempt.calls == 1


async def test_short_retry_after_is_waited_out() -> None:
    attempt = Flaky(rate_limit(retry_after=0.0))
    assert await call_with_retry(attempt, NO_WAIT) == "ok"
    assert attempt.calls == 2


async def test_custom_retryable_predicate() -> None:
    ambiguous = ka.TransportError("read timeout", maybe_delivered=True)
    attempt = Flaky(ambiguous)
    with pytest.raises(ka.TransportError):
        await call_with_retry(attempt, NO_WAIT, retryable=provably_not_accepted)
    assert attempt.calls == 1

    never_sent = Flaky(ka.TransportError("refused", maybe_delivered=False))
    assert await call_with_retry(never_sent, NO_WAIT, retryable=provably_not_accepted) == "ok"
    assert never_sent.calls == 2


async def test_success_first_time_calls_once() -> None:
    attempt = Flaky(result=42)
    assert await call_with_retry(attempt, NO_WAIT) == 42
    assert attempt.calls == 1
