"""Downloading a task's images: concurrent fetches, safe names, atomic writes."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from kling_async._constants import MAX_DOWNLOAD_BYTES
from kling_async._errors import UnexpectedResponseError
from kling_async._models import GeneratedImage, Task

_T = TypeVar("_T")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/jpg": "jpg", "image/webp": "webp"}


def safe_stem(task_id: str) -> str:
    """A task id made safe for a file name (no separators, no leading dots)."""
    return _UNSAFE.sub("_", task_id).lstrip(".") or "task"


def image_extension(data: bytes, content_type: str | None) -> str:
    """``png``, ``jpg`` or ``webp``, from the image's first bytes (the content type as a hint)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    extension = _EXTENSIONS.get((content_type or "").lower())
    if extension is None:
        raise UnexpectedResponseError(
            f"the downloaded file is not an image (content type {content_type!r})",
            http_status=200,
            body=data[:200].decode("utf-8", "replace"),
        )
    return extension


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    # os.open (not mkstemp) so that the file gets the usual mode under the process umask.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(temp, path)
    except BaseException:
        pathlib.Path(temp).unlink(missing_ok=True)
        raise


async def gather_or_cancel(jobs: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run ``jobs`` concurrently; on the first failure cancel the rest and re-raise it."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def download_images(
    task: Task,
    directory: pathlib.Path,
    fetch: Callable[[str], Awaitable[tuple[bytes, str | None]]],
) -> list[pathlib.Path]:
    """Fetch every image of ``task`` into ``directory``; return the paths in index order."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    stem = safe_stem(task.task_id)

    async def one(image: GeneratedImage) -> pathlib.Path:
        data, content_type = await fetch(image.url)
        path = directory / f"{stem}-{image.index}.{image_extension(data, content_type)}"
        await asyncio.to_thread(write_atomically, path, data)
        return path

    ordered = sorted(task.images, key=lambda image: image.index)
    return await gather_or_cancel([one(image) for image in ordered])


__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "download_images",
    "gather_or_cancel",
    "image_extension",
    "safe_stem",
    "write_atomically",
]
