"""The exception hierarchy and the one function that maps an API reply to an exception.

```
KlingError
├── ConfigurationError
├── RequestValidationError (also ValueError)
├── InvalidCallbackError (also ValueError)
├── TransportError
├── APIError
│   ├── AuthenticationError
│   ├── PermissionDeniedError
│   ├── QuotaExceededError
│   ├── InvalidRequestError
│   ├── NotFoundError
│   ├── ContentPolicyError
│   ├── RateLimitError
│   │   └── ConcurrencyLimitError
│   ├── ServerError
│   └── UnexpectedResponseError
├── TaskFailedError
├── WaitTimeoutError
└── SubmissionUnknownError
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kling_async._models import Task

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConcurrencyLimitError",
    "ConfigurationError",
    "ContentPolicyError",
    "InvalidCallbackError",
    "InvalidRequestError",
    "KlingError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestValidationError",
    "ServerError",
    "SubmissionUnknownError",
    "TaskFailedError",
    "TransportError",
    "UnexpectedResponseError",
    "WaitTimeoutError",
    "error_from_reply",
]


class KlingError(Exception):
    """Root of every error this library raises.

    Attributes:
        message: What went wrong, in words.
        request_id: The id of the API request involved, when one is known.
        task_id: The id of the task involved, when one is known.
    """

    def __init__(
        self, message: str, *, request_id: str | None = None, task_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.task_id = task_id

    def __str__(self) -> str:
        details = [f"{name}={value}" for name, value in self._details() if value is not None]
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def _details(self) -> list[tuple[str, object]]:
        return [("request_id", self.request_id), ("task_id", self.task_id)]


class ConfigurationError(KlingError):
    """The client is not configured well enough to work (for example, no API key)."""


class RequestValidationError(KlingError, ValueError):
    """A request was refused locally, before anything was sent.

    Attributes:
        field: The request field at fault, e.g. ``"subject_images[1]"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidCallbackError(KlingError, ValueError):
    """A callback body could not be read as a task."""


class TransportError(KlingError):
    """The API could not be reached, or did not answer in time, after all retries.

    Attributes:
        maybe_delivered: Whether the request may have reached the server (``False`` when the
            connection was never established).
    """

    def __init__(
        self, message: str, *, maybe_delivered: bool = True, task_id: str | None = None
    ) -> None:
        super().__init__(message, task_id=task_id)
        self.maybe_delivered = maybe_delivered


class APIError(KlingError):
    """The API answered with an error.

    Attributes:
        http_status: The HTTP status of the reply.
        code: Kling's error code from the body, when there was one.
        body: The decoded JSON body, or the start of the raw body when it was not JSON.
        retry_after: Seconds the server asked us to wait before trying again, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        code: int | None = None,
        request_id: str | None = None,
        body: Any = None,
        retry_after: float | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id, task_id=task_id)
        self.http_status = http_status
        self.code = code
        self.body = body
        self.retry_after = retry_after

    def _details(self) -> list[tuple[str, object]]:
        return [
            ("http_status", self.http_status),
            ("code", self.code),
            *super()._details(),
            ("retry_after", self.retry_after),
        ]


class AuthenticationError(APIError):
    """The API key is missing, invalid or expired (HTTP 401, codes 1000–1004)."""


class PermissionDeniedError(APIError):
    """The key may not use this API or model, or the IP is not allowed (codes 1103, 1304)."""


class QuotaExceededError(APIError):
    """The account is in arrears or its resource pack is used up (codes 1100–1102). Not retried."""


class InvalidRequestError(APIError):
    """The API refused the request's parameters (HTTP 400, codes 1200–1201)."""


class NotFoundError(APIError):
    """The task or resource does not exist (codes 1202–1203, or an unknown task id)."""


class ContentPolicyError(APIError):
    """The platform or content-safety policy refused the request (codes 1300–1301)."""


class RateLimitError(APIError):
    """Too many requests (HTTP 429, code 1302, or a 429 without a Kling code). Retried."""


class ConcurrencyLimitError(RateLimitError):
    """The account's parallel-task limit is reached (code 1303). Retried behind the slot budget."""


class ServerError(APIError):
    """The API failed on its side (HTTP 5xx, codes 5000–5002). Retried."""


class UnexpectedResponseError(APIError):
    """The reply could not be understood (not JSON, or not the expected shape).

    ``body`` holds the first 200 characters of the raw reply.
    """


class TaskFailedError(KlingError):
    """The task ended in the ``failed`` state.

    Attributes:
        task: The final state of the task; ``task.status_message`` is the server's reason.
    """

    def __init__(self, task: Task) -> None:
        reason = task.status_message or "no reason given"
        super().__init__(f"task failed: {reason}", request_id=task.request_id, task_id=task.task_id)
        self.task = task


class WaitTimeoutError(KlingError):
    """Waiting for a task ran out of time. The task keeps running on the server.

    Attributes:
        last_task: The last state seen, if any; ``task_id`` lets you pick the task up later.
        timeout: The deadline that ran out, in seconds.
    """

    def __init__(self, task_id: str, *, timeout: float, last_task: Task | None = None) -> None:
        super().__init__(
            f"task did not finish within {timeout:g} s; it keeps running on the server",
            request_id=last_task.request_id if last_task else None,
            task_id=task_id,
        )
        self.timeout = timeout
        self.last_task = last_task


class SubmissionUnknownError(KlingError):
    """A create request may or may not have been accepted, and the task could not be looked up.

    Look the task up later with ``client.get_task(error.external_task_id)``; do not re-submit
    blindly, or you may pay twice.

    Attributes:
        external_task_id: The external task id the submission carried.
    """

    def __init__(self, external_task_id: str, message: str) -> None:
        super().__init__(message)
        self.external_task_id = external_task_id

    def _details(self) -> list[tuple[str, object]]:
        return [("external_task_id", self.external_task_id), *super()._details()]


_CODE_CLASSES: tuple[tuple[range, type[APIError]], ...] = (
    (range(1000, 1005), AuthenticationError),
    (range(1100, 1103), QuotaExceededError),
    (range(1103, 1104), PermissionDeniedError),
    (range(1200, 1202), InvalidRequestError),
    (range(1202, 1204), NotFoundError),
    (range(1300, 1302), ContentPolicyError),
    (range(1302, 1303), RateLimitError),
    (range(1303, 1304), ConcurrencyLimitError),
    (range(1304, 1305), PermissionDeniedError),
    (range(5000, 5003), ServerError),
)

_STATUS_CLASSES: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    422: InvalidRequestError,
    429: RateLimitError,
}


def _class_for(http_status: int, code: int | None) -> type[APIError]:
    if code is not None:
        for codes, cls in _CODE_CLASSES:
            if code in codes:
                return cls
        # Some routers put an HTTP status in the code field ("429").
        if 400 <= code <= 599:
            http_status = code
    if http_status >= 500:
        return ServerError
    return _STATUS_CLASSES.get(http_status, APIError)


def error_from_reply(
    *,
    http_status: int,
    code: int | None,
    message: str | None,
    request_id: str | None,
    body: Any,
    retry_after: float | None = None,
    task_lookup: bool = False,
    task_id: str | None = None,
) -> APIError:
    """Map an error reply to the matching exception.

    The body's Kling code decides when present; otherwise the HTTP status does.

    Args:
        http_status: The reply's HTTP status.
        code: The Kling code from the body, if any.
        message: The message from the body, if any.
        request_id: The request id of the reply, if any.
        body: The decoded body, kept on the error.
        retry_after: Seconds from a ``Retry-After`` header, if any.
        task_lookup: The reply answers a query for one task: "invalid parameter" then means
            the task does not exist.
        task_id: The task (or external task) id involved, if any.

    Returns:
        The error to raise.
    """
    cls = _class_for(http_status, code)
    if task_lookup and cls is InvalidRequestError:
        cls = NotFoundError
    text = message or f"HTTP {http_status}"
    return cls(
        text,
        http_status=http_status,
        code=code,
        request_id=request_id,
        body=body,
        retry_after=retry_after,
        task_id=task_id,
    )
