"""The one cattrs converter: models to wire JSON and back, tolerant of real-world quirks."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from kling_async._constants import BODY_EXCERPT_CHARS
from kling_async._models import GeneratedImage, Task, TaskStatus

__all__ = [
    "CreateBody",
    "Envelope",
    "dump_body",
    "excerpt",
    "load_json",
    "read_envelope",
    "structure_task",
]

_converter: Final = cattrs.Converter(forbid_extra_keys=False)

#: Status words seen from routers that rewrite Kling's own, mapped to Kling's.
_STATUS_ALIASES: Final = {
    "submitted": TaskStatus.SUBMITTED,
    "queued": TaskStatus.SUBMITTED,
    "not_start": TaskStatus.SUBMITTED,
    "pending": TaskStatus.SUBMITTED,
    "processing": TaskStatus.PROCESSING,
    "in_progress": TaskStatus.PROCESSING,
    "running": TaskStatus.PROCESSING,
    "succeed": TaskStatus.SUCCEED,
    "success": TaskStatus.SUCCEED,
    "succeeded": TaskStatus.SUCCEED,
    "completed": TaskStatus.SUCCEED,
    "failed": TaskStatus.FAILED,
    "failure": TaskStatus.FAILED,
    "fail": TaskStatus.FAILED,
}
#: Values of ``code`` that mean success.
_OK_CODES: Final = frozenset({"", "0", "success", "succeed", "ok"})
#: How many router envelopes are unwrapped at most.
_MAX_WRAPPING: Final = 3
#: Timestamps below this are seconds, above it milliseconds (10^11 s is the year 5138).
_SECONDS_BELOW: Final = 10**11


class ShapeError(ValueError):
    """A reply does not have the shape of the wire contract."""


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {} or value == []


def _structure_status(value: Any, _: type) -> TaskStatus:
    if not isinstance(value, str) or not value.strip():
        raise ShapeError(f"task_status is {value!r}")
    word = value.strip()
    return _STATUS_ALIASES.get(word.lower()) or TaskStatus(word)


def _structure_optional_text(value: Any, _: type) -> str | None:
    if _empty(value):
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ShapeError(f"expected text, got {value!r}")


def _structure_text(value: Any, _: type) -> str:
    text = _structure_optional_text(value, str)
    if text is None:
        raise ShapeError("required text is missing")
    return text


def _structure_time(value: Any, _: type) -> datetime.datetime | None:
    if _empty(value) or value == 0:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.astimezone(datetime.timezone.utc)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"expected a timestamp, got {value!r}")
    seconds = value if value < _SECONDS_BELOW else value / 1000
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def _structure_images(value: Any, _: type) -> tuple[GeneratedImage, ...]:
    if _empty(value):
        return ()
    if not isinstance(value, list):
        raise ShapeError(f"images is {type(value).__name__}, not a list")
    images = []
    for position, item in enumerate(value):
        if isinstance(item, str):
            item = {"url": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("url"), str):
            raise ShapeError(f"image item {position} has no url")
        index = item.get("index")
        if isinstance(index, str) and index.strip().isdigit():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int):
            index = position
        images.append(GeneratedImage(index=index, url=item["url"]))
    return tuple(sorted(images, key=lambda image: image.index))


_converter.register_structure_hook(TaskStatus, _structure_status)
_converter.register_structure_hook(str, _structure_text)
# Unions and generic aliases are matched by equality: functools' dispatch cannot key on them.
_EXACT_HOOKS: Final[dict[Any, Callable[[Any, type], Any]]] = {
    str | None: _structure_optional_text,
    datetime.datetime | None: _structure_time,
    tuple[GeneratedImage, ...]: _structure_images,
}
_converter.register_structure_hook_factory(lambda t: t in _EXACT_HOOKS, lambda t: _EXACT_HOOKS[t])
_converter.register_structure_hook(
    Task,
    make_dict_structure_fn(
        Task,
        _converter,
        status=override(rename="task_status"),
        status_message=override(rename="task_status_msg"),
    ),
)


def _nested(data: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = data.get(outer)
    return value.get(inner) if isinstance(value, Mapping) else None


def structure_task(data: Any, request_id: str | None) -> Task:
    """Read a task object (``data`` of an envelope, or a bare callback body).

    Raises:
        ShapeError: It cannot be read as a task.
    """
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, Mapping):
        raise ShapeError(f"task is {type(data).__name__}, not an object")
    flat = {
        "task_id": data.get("task_id"),
        "task_status": data.get("task_status"),
        "task_status_msg": data.get("task_status_msg"),
        "external_task_id": _nested(data, "task_info", "external_task_id")
        or data.get("external_task_id"),
        "created_at": data.get("created_at"),
        "updated_at": data.get("updated_at"),
        "images": _nested(data, "task_result", "images"),
        "request_id": request_id,
    }
    try:
        return _converter.structure(flat, Task)
    except ShapeError:
        raise
    except (cattrs.BaseValidationError, ValueError, TypeError, OverflowError, OSError) as exc:
        detail = exc.exceptions[0] if isinstance(exc, cattrs.BaseValidationError) else exc
        raise ShapeError(str(detail)) from exc


@attrs.frozen(kw_only=True)
class Envelope:
    """The ``{code, message, request_id, data}`` wrapper of every reply."""

    code: int | None
    """0 on success; ``None`` when the body carried a code that is not a number."""
    message: str | None
    request_id: str | None
    data: Any


def _code(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _OK_CODES:
            return 0
        if text.lstrip("-").isdigit():
            return int(text)
    return None


def _is_envelope(value: Any) -> bool:
    return (
        isinstance(value, Mapping) and "data" in value and ("code" in value or "message" in value)
    )


def read_envelope(body: Any) -> Envelope:
    """Read a reply envelope, unwrapping a router's envelope around Kling's.

    Raises:
        ShapeError: The body is not an object.
    """
    if not isinstance(body, Mapping):
        raise ShapeError(f"reply is {type(body).__name__}, not an object")
    outer_request_id = body.get("request_id")
    # Routers wrap Kling's envelope, either directly ({"code": "success", "data": <envelope>})
    # or inside a task object of their own ({"code": "success", "data": {…, "data": <envelope>}}).
    for _ in range(_MAX_WRAPPING):
        data = body.get("data")
        if not isinstance(data, Mapping):
            break
        if _is_envelope(data.get("data")):
            body = data["data"]
        elif _is_envelope(data) and "task_id" not in data:
            body = data
        else:
            break
    request_id = body.get("request_id") or outer_request_id
    message = body.get("message", body.get("msg"))
    return Envelope(
        code=_code(body.get("code")),
        message=message if isinstance(message, str) else None,
        request_id=str(request_id) if request_id else None,
        data=body.get("data"),
    )


def load_json(raw: bytes) -> Any:
    """Decode a JSON body.

    Raises:
        ValueError: The body is not one JSON document.
    """
    return json.loads(raw)


def excerpt(raw: bytes) -> str:
    """The start of a raw body, for error messages."""
    return raw[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[:BODY_EXCERPT_CHARS]


@attrs.frozen(kw_only=True)
class CreateBody:
    """A create request with its images already in wire form."""

    model_name: str
    subject_images: list[str]
    n: int
    aspect_ratio: str
    prompt: str | None = None
    scene_image: str | None = None
    style_image: str | None = None
    callback_url: str | None = None
    external_task_id: str | None = None


def _subject_list(images: list[str]) -> list[dict[str, str]]:
    return [{"subject_image": image} for image in images]


_converter.register_unstructure_hook(
    CreateBody,
    make_dict_unstructure_fn(
        CreateBody,
        _converter,
        _cattrs_omit_if_default=True,
        subject_images=override(
            rename="subject_image_list",
            unstruct_hook=_subject_list,
        ),
        scene_image=override(rename="scence_image"),
    ),
)


def dump_body(body: CreateBody) -> dict[str, Any]:
    """The JSON object sent to create a task."""
    result: dict[str, Any] = _converter.unstructure(body)
    return result
