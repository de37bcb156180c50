"""Download helpers: file names, image sniffing, atomic writes, all-or-nothing fetches."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest

import kling_async as ka
from kling_async._download import (
    download_images,
    gather_or_cancel,
    image_extension,
    safe_stem,
    write_atomically,
)


@pytest.mark.parametrize(
    ("task_id", "stem"),
    [
        ("8403759281937465344", "8403759281937465344"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a/b\\c d", "a_b_c_d"),
        ("...", "task"),
        ("", "task"),
    ],
)
def test_safe_stem_never_escapes_the_directory(task_id: str, stem: str) -> None:
    assert safe_stem(task_id) == stem
    assert "/" not in safe_stem(task_id)
    assert not safe_stem(task_id).startswith(".")


@pytest.mark.parametrize(
    ("data", "content_type", "extension"),
    [
        (b"\x89PNG\r\n\x1a\nrest", "image/jpeg", "png"),  # the bytes win over the header
        (b"\xff\xd8\xff\xe0rest", None, "jpg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", None, "webp"),
        (b"????", "image/png", "png"),
        (b"????", "IMAGE/JPEG", "jpg"),
    ],
)
def test_image_extension(data: bytes, content_type: str | None, extension: str) -> None:
    assert image_extension(data, content_type) == extension


def test_a_non_image_is_refused() -> None:
    with pytest.raises(ka.UnexpectedResponseError, match="not an image"):
        image_extension(b"<html>gateway</html>", "text/html")


def test_write_atomically_replaces_and_leaves_no_temp(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_write_atomically_cleans_up_on_failure(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "missing-dir" / "x.png"
    with pytest.raises(FileNotFoundError):
        write_atomically(target, b"data")
    (tmp_path / "d").mkdir()
    blocked = tmp_path / "d" / "x.png"
    blocked.mkdir()  # os.replace onto a directory fails after the temp file exists
    with pytest.raises(OSError, match="directory"):
        write_atomically(blocked, b"data")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.png"]


async def test_gather_or_cancel_cancels_the_rest_on_failure() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def failing() -> int:
        await started.wait()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await gather_or_cancel([slow(), failing()])
    assert cancelled.is_set()


async def test_download_images_orders_by_index(tmp_path: pathlib.Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 10
    task = ka.Task(
        task_id="t/1",
        status=ka.TaskStatus.SUCCEED,
        images=(
            ka.GeneratedImage(index=1, url="u1"),
            ka.GeneratedImage(index=0, url="u0"),
        ),
    )
    fetched: list[str] = []

    async def fetch(url: str) -> tuple[bytes, str | None]:
        fetched.append(url)
        return png + url.encode(), "image/png"

    paths = await download_images(task, tmp_path / "new", fetch)
    assert [p.name for p in paths] == ["t_1-0.png", "t_1-1.png"]
    assert paths[1].read_bytes().endswith(b"u1")
    assert sorted(fetched) == ["u0", "u1"]


def test_written_files_follow_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomically(tmp_path / "x.png", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o644
