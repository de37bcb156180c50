"""The data model: what users build (requests) and what the API reports (tasks).

Models do no I/O and know no wire names; ``_serde`` maps them to and from JSON.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Iterable

import attrs

from kling_async._constants import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_MODEL,
    MAX_N,
    MAX_PROMPT_CHARS,
    MAX_SUBJECTS,
    MIN_N,
    MIN_SUBJECTS,
)
from kling_async._errors import KlingError, RequestValidationError
from kling_async._images import ImageInput, ImageSource


class TaskStatus(str, enum.Enum):
    """The state of a task. Unknown words from the server are kept as extra members.

    ``TaskStatus("weird")`` returns a member whose ``value`` is ``"weird"``; it is not terminal.
    """

    SUBMITTED = "submitted"
    """Accepted, waiting to run."""
    PROCESSING = "processing"
    """Running."""
    SUCCEED = "succeed"
    """Finished with images."""
    FAILED = "failed"
    """Finished without images; the task's ``status_message`` says why."""

    @classmethod
    def _missing_(cls, value: object) -> TaskStatus | None:
        if not isinstance(value, str):
            return None
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        # Cache it so that the same unknown word always gives the same member.
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (``succeed`` or ``failed``)."""
        return self in (TaskStatus.SUCCEED, TaskStatus.FAILED)

    @property
    def is_known(self) -> bool:
        """Whether this is one of the four documented states."""
        return type(self).__members__.get(self._name_) is self

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"<TaskStatus.{self._name_}: {self.value!r}>"


@attrs.frozen(kw_only=True)
class GeneratedImage:
    """One generated image."""

    index: int
    """Position of the image within the task's results, from 0."""
    url: str
    """Where the image can be downloaded (URLs expire; download soon)."""


@attrs.frozen(kw_only=True)
class Task:
    """The state of one generation task as the API last reported it."""

    task_id: str
    """The task id the API assigned (a string; never parse it as a number)."""
    status: TaskStatus
    """Where the task is in its life."""
    status_message: str | None = None
    """The server's reason for a failure, if it gave one."""
    external_task_id: str | None = None
    """The external task id the submission carried."""
    created_at: datetime.datetime | None = None
    """When the task was created (UTC)."""
    updated_at: datetime.datetime | None = None
    """When the task last changed (UTC)."""
    images: tuple[GeneratedImage, ...] = ()
    """The generated images, in index order (empty until the task succeeds)."""
    request_id: str | None = None
    """The request id of the reply this state came from (``None`` for a pushed callback)."""


def _subjects(value: Iterable[ImageSource]) -> tuple[ImageInput, ...]:
    if isinstance(value, (str, bytes, ImageInput)) or not isinstance(value, Iterable):
        raise RequestValidationError(
            "subject_images", f"expected a list of {MIN_SUBJECTS}–{MAX_SUBJECTS} images"
        )
    images = []
    for index, item in enumerate(value):
        try:
            images.append(ImageInput.coerce(item))
        except TypeError as exc:
            raise RequestValidationError(f"subject_images[{index}]", str(exc)) from None
    return tuple(images)


def _optional_image(field: str, value: ImageSource | None) -> ImageInput | None:
    if value is None:
        return None
    try:
        return ImageInput.coerce(value)
    except TypeError as exc:
        raise RequestValidationError(field, str(exc)) from None


def _scene(value: ImageSource | None) -> ImageInput | None:
    return _optional_image("scene_image", value)


def _style(value: ImageSource | None) -> ImageInput | None:
    return _optional_image("style_image", value)


_URL = re.compile(r"^https?://[^/\s]+\S*$", re.IGNORECASE)


@attrs.frozen(kw_only=True)
class GenerationRequest:
    """One *Generate With References* request, checked when it is built.

    Raises:
        RequestValidationError: A field breaks the API's limits (nothing is sent).
    """

    subject_images: tuple[ImageInput, ...] = attrs.field(converter=_subjects)
    """2–4 subject reference images: URL or base64 ``str``, ``bytes``, ``Path``, ``ImageInput``."""
    prompt: str | None = None
    """What to generate (at most 2500 characters)."""
    scene_image: ImageInput | None = attrs.field(default=None, converter=_scene)
    """An optional scene reference image."""
    style_image: ImageInput | None = attrs.field(default=None, converter=_style)
    """An optional style reference image."""
    n: int = 1
    """How many images to generate, 1–9. A task holds ``n`` of the account's parallel slots."""
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    """One of ``16:9 9:16 1:1 4:3 3:4 3:2 2:3 21:9``."""
    model_name: str = DEFAULT_MODEL
    """The model to use."""
    callback_url: str | None = None
    """Where the API posts status changes; set automatically by a client with a receiver."""
    external_task_id: str | None = None
    """Your id for the task, unique per account; a random one is used when not given."""

    def __attrs_post_init__(self) -> None:
        count = len(self.subject_images)
        if not MIN_SUBJECTS <= count <= MAX_SUBJECTS:
            raise RequestValidationError(
                "subject_images",
                f"{count} images given; between {MIN_SUBJECTS} and {MAX_SUBJECTS} are required",
            )
        for index, image in enumerate(self.subject_images):
            image.validate(f"subject_images[{index}]")
        if self.scene_image is not None:
            self.scene_image.validate("scene_image")
        if self.style_image is not None:
            self.style_image.validate("style_image")
        self._check_scalars()

    def _check_scalars(self) -> None:
        if self.prompt is not None:
            if not isinstance(self.prompt, str):
                raise RequestValidationError("prompt", "must be a string")
            if len(self.prompt) > MAX_PROMPT_CHARS:
                raise RequestValidationError(
                    "prompt",
                    f"{len(self.prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed",
                )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not MIN_N <= self.n <= MAX_N:
            raise RequestValidationError("n", f"must be an integer from {MIN_N} to {MAX_N}")
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise RequestValidationError(
                "aspect_ratio",
                f"{self.aspect_ratio!r} is not one of {', '.join(sorted(ASPECT_RATIOS))}",
            )
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise RequestValidationError("model_name", "must be a non-empty string")
        if self.callback_url is not None and not (
            isinstance(self.callback_url, str) and _URL.match(self.callback_url)
        ):
            raise RequestValidationError("callback_url", "must be an http(s) URL")
        if self.external_task_id is not None and not (
            isinstance(self.external_task_id, str) and self.external_task_id.strip()
        ):
            raise RequestValidationError("external_task_id", "must be a non-empty string")


@attrs.frozen(kw_only=True)
class GenerationOutcome:
    """What became of one request in `KlingClient.generate_many`."""

    request: GenerationRequest
    """The very request object that was passed in."""
    task: Task | None = None
    """The final task when it succeeded; otherwise the last state seen, if any."""
    error: KlingError | None = None
    """Why the request did not succeed, or ``None``."""
    task_id: str | None = None
    """The task id whenever a task exists (also when waiting failed or was stopped)."""

    @property
    def ok(self) -> bool:
        """Whether the task succeeded."""
        return self.error is None and self.task is not None

    def unwrap(self) -> Task:
        """Return the succeeded task, or raise the error."""
        if self.error is not None:
            raise self.error
        assert self.task is not None
        return self.task
