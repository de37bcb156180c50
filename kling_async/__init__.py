"""kling_async: an asyncio client for Kling's *Generate With References* image API (via DeerAPI).

The public API is what this module exports; everything in ``kling_async._*`` is private.
"""

import logging as _logging

from kling_async import webhooks
from kling_async._client import CallbackSource, KlingClient
from kling_async._errors import (
    APIError,
    AuthenticationError,
    ConcurrencyLimitError,
    ConfigurationError,
    ContentPolicyError,
    InvalidCallbackError,
    InvalidRequestError,
    KlingError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    SubmissionUnknownError,
    TaskFailedError,
    TransportError,
    UnexpectedResponseError,
    WaitTimeoutError,
)
from kling_async._fanout import GenerationStream
from kling_async._images import ImageInput, ImageSource
from kling_async._models import (
    GeneratedImage,
    GenerationOutcome,
    GenerationRequest,
    Task,
    TaskStatus,
)
from kling_async._polling import PollPolicy
from kling_async._retry import RetryPolicy
from kling_async._version import __version__

__all__ = [
    "APIError",
    "AuthenticationError",
    "CallbackSource",
    "ConcurrencyLimitError",
    "ConfigurationError",
    "ContentPolicyError",
    "GeneratedImage",
    "GenerationOutcome",
    "GenerationRequest",
    "GenerationStream",
    "ImageInput",
    "ImageSource",
    "InvalidCallbackError",
    "InvalidRequestError",
    "KlingClient",
    "KlingError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollPolicy",
    "QuotaExceededError",
    "RateLimitError",
    "RequestValidationError",
    "RetryPolicy",
    "ServerError",
    "SubmissionUnknownError",
    "Task",
    "TaskFailedError",
    "TaskStatus",
    "TransportError",
    "UnexpectedResponseError",
    "WaitTimeoutError",
    "__version__",
    "webhooks",
]

# A library never configures logging; this keeps its records off stderr until the app does.
_logging.getLogger("kling_async").addHandler(_logging.NullHandler())
