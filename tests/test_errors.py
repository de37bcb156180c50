"""The exception tree, the reply-to-exception mapping and the error messages."""

from __future__ import annotations

import datetime

import pytest

import kling_async as ka
from kling_async._errors import error_from_reply


def reply_error(
    http_status: int, code: int | None, *, task_lookup: bool = False, **extra: object
) -> ka.APIError:
    fields: dict[str, object] = {"message": "boom", "request_id": "req-7", "body": {"code": code}}
    fields.update(extra)
    return error_from_reply(
        http_status=http_status,
        code=code,
        task_lookup=task_lookup,
        **fields,  # type: ignore[arg-type]
    )


# --- the mapping table of DESIGN §3 -------------------------------------------------------

CODE_TABLE = [
    *[(401, code, ka.AuthenticationError) for code in range(1000, 1005)],
    *[(429, code, ka.QuotaExceededError) for code in range(1100, 1103)],
    (403, 1103, ka.PermissionDeniedError),
    *[(400, code, ka.InvalidRequestError) for code in (1200, 1201)],
    *[(404, code, ka.NotFoundError) for code in (1202, 1203)],
    *[(400, code, ka.ContentPolicyError) for code in (1300, 1301)],
    (429, 1302, ka.RateLimitError),
    (429, 1303, ka.ConcurrencyLimitError),
    (429, 1304, ka.PermissionDeniedError),
    (500, 5000, ka.ServerError),
    (503, 5001, ka.ServerError),
    (504, 5002, ka.ServerError),
]


@pytest.mark.parametrize(("http_status", "code", "cls"), CODE_TABLE)
def test_code_table(http_status: int, code: int, cls: type[ka.APIError]) -> None:
    error = reply_error(http_status, code)
    assert type(error) is cls
    assert error.http_status == http_status
    assert error.code == code
    assert error.request_id == "req-7"
    assert error.message == "boom"
    assert error.body == {"code": code}


@pytest.mark.parametrize(("http_status", "code", "cls"), CODE_TABLE)
def test_body_code_decides_even_on_http_200(
    http_status: int, code: int, cls: type[ka.APIError]
) -> None:
    error = reply_error(200, code)
    assert type(error) is cls
    assert error.http_status == 200


@pytest.mark.parametrize(
    ("http_status", "cls"),
    [
        (400, ka.InvalidRequestError),
        (401, ka.AuthenticationError),
        (403, ka.PermissionDeniedError),
        (404, ka.NotFoundError),
        (429, ka.RateLimitError),
        (500, ka.ServerError),
        (502, ka.ServerError),
        (503, ka.ServerError),
        (504, ka.ServerError),
    ],
)
def test_http_status_fallback_without_code(http_status: int, cls: type[ka.APIError]) -> None:
    error = reply_error(http_status, None)
    assert type(error) is cls
    assert error.code is None


def test_code_beats_http_status() -> None:
    assert type(reply_error(500, 1303)) is ka.ConcurrencyLimitError
    assert type(reply_error(429, 1101)) is ka.QuotaExceededError
    assert type(reply_error(400, 5000)) is ka.ServerError


def test_router_http_code_in_body_from_http_200() -> None:
    error = reply_error(200, 429)
    assert type(error) is ka.RateLimitError


def test_unknown_code_on_http_200_is_still_an_api_error() -> None:
    error = reply_error(200, 9999)
    assert isinstance(error, ka.APIError)
    assert error.code == 9999


@pytest.mark.parametrize("code", [1200, 1201])
def test_invalid_parameter_on_task_lookup_is_not_found(code: int) -> None:
    error = reply_error(400, code, task_lookup=True, task_id="827301")
    assert type(error) is ka.NotFoundError
    assert error.task_id == "827301"
    assert isinstance(reply_error(400, code, task_lookup=False), ka.InvalidRequestError)
    assert not isinstance(reply_error(400, code, task_lookup=False), ka.NotFoundError)


def test_task_lookup_does_not_change_other_classes() -> None:
    assert type(reply_error(429, 1303, task_lookup=True)) is ka.ConcurrencyLimitError
    assert type(reply_error(401, 1001, task_lookup=True)) is ka.AuthenticationError
    assert type(reply_error(500, None, task_lookup=True)) is ka.ServerError


def test_retry_after_is_kept() -> None:
    assert reply_error(429, 1302, retry_after=3.5).retry_after == 3.5
    assert reply_error(429, 1302).retry_after is None


def test_message_falls_back_to_http_status() -> None:
    error = reply_error(502, None, message=None)
    assert "502" in error.message


# --- the hierarchy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ka.ConfigurationError, (ka.KlingError,)),
        (ka.RequestValidationError, (ka.KlingError, ValueError)),
        (ka.InvalidCallbackError, (ka.KlingError, ValueError)),
        (ka.TransportError, (ka.KlingError,)),
        (ka.APIError, (ka.KlingError,)),
        (ka.AuthenticationError, (ka.APIError,)),
        (ka.PermissionDeniedError, (ka.APIError,)),
        (ka.QuotaExceededError, (ka.APIError,)),
        (ka.InvalidRequestError, (ka.APIError,)),
        (ka.NotFoundError, (ka.APIError,)),
        (ka.ContentPolicyError, (ka.APIError,)),
        (ka.RateLimitError, (ka.APIError,)),
        (ka.ConcurrencyLimitError, (ka.RateLimitError, ka.APIError)),
        (ka.ServerError, (ka.APIError,)),
        (ka.UnexpectedResponseError, (ka.APIError,)),
        (ka.TaskFailedError, (ka.KlingError,)),
        (ka.WaitTimeoutError, (ka.KlingError,)),
        (ka.SubmissionUnknownError, (ka.KlingError,)),
    ],
)
def test_hierarchy(cls: type, bases: tuple[type, ...]) -> None:
    for base in (*bases, ka.KlingError, Exception):
        assert issubclass(cls, base)


def test_quota_is_not_a_rate_limit() -> None:
    # Both arrive as HTTP 429, but only one of them may be retried.
    assert not issubclass(ka.QuotaExceededError, ka.RateLimitError)


def test_not_found_is_not_invalid_request() -> None:
    assert not issubclass(ka.NotFoundError, ka.InvalidRequestError)


def test_api_errors_are_not_value_errors() -> None:
    assert not issubclass(ka.APIError, ValueError)


# --- messages -----------------------------------------------------------------------------


def test_str_names_request_and_task_id() -> None:
    error = reply_error(429, 1303, task_id="827301452311113784")
    text = str(error)
    assert "boom" in text
    assert "req-7" in text
    assert "827301452311113784" in text
    assert "1303" in text


def test_str_without_ids_is_just_the_message() -> None:
    error = ka.KlingError("plain")
    assert str(error) == "plain"
    assert error.request_id is None
    assert error.task_id is None


def test_str_of_transport_error_names_task_id() -> None:
    error = ka.TransportError("read timeout", task_id="t-1")
    assert "t-1" in str(error)
    assert error.maybe_delivered is True
    assert ka.TransportError("refused", maybe_delivered=False).maybe_delivered is False


def test_request_validation_error_field() -> None:
    error = ka.RequestValidationError("subject_images[1]", "too small")
    assert error.field == "subject_images[1]"
    assert "subject_images[1]" in str(error)
    assert "too small" in str(error)


def make_task(**fields: object) -> ka.Task:
    values: dict[str, object] = {
        "task_id": "827301452311113784",
        "status": ka.TaskStatus.FAILED,
        "status_message": "Failure to pass the risk control system",
        "request_id": "req-final",
        "updated_at": datetime.datetime(2024, 7, 26, tzinfo=datetime.timezone.utc),
    }
    values.update(fields)
    return ka.Task(**values)  # type: ignore[arg-type]


def test_task_failed_error() -> None:
    task = make_task()
    error = ka.TaskFailedError(task)
    assert error.task is task
    assert error.task_id == task.task_id
    assert error.request_id == "req-final"
    text = str(error)
    assert "Failure to pass the risk control system" in text
    assert task.task_id in text
    assert "req-final" in text


def test_task_failed_error_without_reason() -> None:
    error = ka.TaskFailedError(make_task(status_message=None, request_id=None))
    assert "827301452311113784" in str(error)
    assert "None" not in str(error)


def test_wait_timeout_error() -> None:
    last = make_task(status=ka.TaskStatus.PROCESSING, status_message=None)
    error = ka.WaitTimeoutError("827301452311113784", timeout=900.0, last_task=last)
    assert error.task_id == "827301452311113784"
    assert error.last_task is last
    assert error.timeout == 900.0
    text = str(error)
    assert "827301452311113784" in text
    assert "900" in text
    assert "req-final" in text


def test_wait_timeout_error_without_last_task() -> None:
    error = ka.WaitTimeoutError("t-9", timeout=1.5)
    assert error.last_task is None
    assert "t-9" in str(error)


def test_submission_unknown_error() -> None:
    error = ka.SubmissionUnknownError("job-42", "the create request may have been accepted")
    assert error.external_task_id == "job-42"
    text = str(error)
    assert "job-42" in text
    assert "may have been accepted" in text
    assert isinstance(error, ka.KlingError)


def test_errors_can_be_raised_and_caught_by_root() -> None:
    with pytest.raises(ka.KlingError) as info:
        raise reply_error(401, 1002)
    assert isinstance(info.value, ka.AuthenticationError)
