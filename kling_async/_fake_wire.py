"""FakeKlingServer's wire format: create-body validation, task objects, envelopes and quirks."""

from __future__ import annotations

import base64
import binascii
import json
import random
from typing import Any, Final

import attrs

from kling_async._fake_records import SUCCEED, FakeTask, Snapshot

ASPECT_RATIOS: Final = frozenset({"16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"})
MAX_PROMPT: Final = 2500
IMAGE_MAGIC: Final = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")

#: Status words routers use instead of Kling's own (DESIGN.md §3); the first is Kling's.
STATUS_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "submitted": ("submitted", "SUBMITTED", "QUEUED", "NOT_START"),
    "processing": ("processing", "IN_PROGRESS"),
    "succeed": ("succeed", "SUCCESS", "succeeded", "completed"),
    "failed": ("failed", "FAILURE"),
}

_ABSENT: Final = object()  # "leave the key out" in quirky renderings
# Spellings of "nothing" seen in real replies, per field.
_NO_MESSAGE: Final[tuple[object, ...]] = (None, _ABSENT, "")
_NO_INFO: Final[tuple[object, ...]] = (None, _ABSENT, {}, {"external_task_id": ""})
_NO_RESULT: Final[tuple[object, ...]] = (None, _ABSENT, {})


class InvalidBody(Exception):
    """A create body the real API would refuse with code 1201; the message names the field."""


@attrs.frozen
class CreateSpec:
    """The parts of a valid create body the server acts on."""

    n: int
    prompt: str
    external_task_id: str | None
    callback_url: str | None


def dumps(obj: object) -> bytes:
    """Serialise compactly."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _check_image(field: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidBody(f"{field} must be a non-empty string")
    if value.startswith(("http://", "https://")):
        return
    if value[:5].lower() == "data:":
        raise InvalidBody(f"{field} must be Base64 without a data: prefix")
    try:
        head = base64.b64decode(value, validate=True)[:8]
    except (binascii.Error, ValueError):
        raise InvalidBody(f"{field} must be an http(s) URL or Base64") from None
    if not head.startswith(IMAGE_MAGIC):
        raise InvalidBody(f"{field} is not a PNG or JPEG image")


def validate_create(body: object) -> CreateSpec:
    """Check a create body as the real API does.

    Raises:
        InvalidBody: Naming the offending field.
    """
    if not isinstance(body, dict):
        raise InvalidBody("request body must be a JSON object")
    subjects = body.get("subject_image_list")
    if not isinstance(subjects, list) or not 2 <= len(subjects) <= 4:
        raise InvalidBody("subject_image_list must be a list of 2 to 4 items")
    for position, item in enumerate(subjects):
        if not isinstance(item, dict):
            raise InvalidBody(f"subject_image_list[{position}] must be an object")
        _check_image(f"subject_image_list[{position}].subject_image", item.get("subject_image"))
    for field in ("scence_image", "style_image"):
        if body.get(field) is not None:
            _check_image(field, body[field])
    prompt = body.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise InvalidBody(f"prompt must be a string of at most {MAX_PROMPT} characters")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 9:
        raise InvalidBody("n must be an integer from 1 to 9")
    aspect = body.get("aspect_ratio", "16:9")
    if aspect not in ASPECT_RATIOS:
        raise InvalidBody(f"aspect_ratio must be one of {', '.join(sorted(ASPECT_RATIOS))}")
    model = body.get("model_name", "kling-v2")
    if not isinstance(model, str) or not model:
        raise InvalidBody("model_name must be a non-empty string")
    callback = body.get("callback_url")
    if callback is not None and (
        not isinstance(callback, str) or not callback.startswith(("http://", "https://"))
    ):
        raise InvalidBody("callback_url must be an http(s) URL")
    external = body.get("external_task_id")
    if external is not None and not isinstance(external, str):
        raise InvalidBody("external_task_id must be a string")
    return CreateSpec(n, prompt, external or None, callback or None)


def image_url(image_base: str, task_id: str, index: int) -> str:
    """URL of one generated image."""
    return f"{image_base}/fake-images/{task_id}/{index}.png"


def render_task(
    task: FakeTask, snap: Snapshot, image_base: str, rng: random.Random | None
) -> dict[str, Any]:
    """Render the task object as the API shows it (messy real-world shapes if `rng` is given)."""
    urls = (
        [image_url(image_base, task.task_id, i) for i in range(task.n)]
        if snap.state == SUCCEED
        else None
    )
    ext = task.external_task_id
    if rng is None:
        return {
            "task_id": task.task_id,
            "task_status": snap.state,
            "task_status_msg": snap.message,
            "task_info": {"external_task_id": ext} if ext else {},
            "created_at": task.created_at,
            "updated_at": snap.updated_at,
            "task_result": {"images": [{"index": i, "url": u} for i, u in enumerate(urls)]}
            if urls is not None
            else {},
        }
    in_seconds = rng.random() < 0.5
    fields: dict[str, object] = {
        "task_id": task.task_id,
        "task_status": rng.choice(STATUS_WORDS[snap.state]),
        "task_status_msg": snap.message or rng.choice(_NO_MESSAGE),
        "task_info": {"external_task_id": ext, "source": "api"} if ext else rng.choice(_NO_INFO),
        "created_at": task.created_at // 1000 if in_seconds else task.created_at,
        "updated_at": snap.updated_at // 1000 if in_seconds else snap.updated_at,
        "task_result": _quirky_result(urls, rng) if urls is not None else rng.choice(_NO_RESULT),
        "final_unit_deduction": str(task.n),
        "task_type": "kling_image_reference",
    }
    return {key: value for key, value in fields.items() if value is not _ABSENT}


def _quirky_result(urls: list[str], rng: random.Random) -> dict[str, Any]:
    shape = rng.randrange(3)
    if shape == 0:
        images = [{"index": i, "url": u} for i, u in enumerate(urls)]
    elif shape == 1:  # no index: the position is the index
        images = [{"id": "", "url": u} for u in urls]
    else:
        images = [
            {"index": i, "url": u, "watermark_url": u + "?watermark=1"} for i, u in enumerate(urls)
        ]
    return {"images": images, "videos": []}


def envelope(data: object, request_id: str, variant: int | None) -> dict[str, Any]:
    """Wrap `data` in the Kling envelope; a `variant` (quirks mode) picks a messy shape."""
    kling = {"code": 0, "message": "SUCCEED", "request_id": request_id, "data": data}
    if variant is None:
        return kling
    shape = variant % 4
    if shape == 0:  # unknown extra top-level fields
        return {**kling, "trace_id": request_id[:8], "usage": {"units": 1}}
    if shape == 1:
        return {**kling, "code": "success"}
    if shape == 2:
        del kling["code"]
        return kling
    return {"code": "success", "message": "", "data": kling}  # a router's wrapping
