"""Reference images: where they come from, local checks, and their wire form."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import pathlib
import re
import struct
from typing import Literal, Union

import attrs

from kling_async._constants import MAX_ASPECT, MAX_IMAGE_BYTES, MIN_IMAGE_SIDE
from kling_async._errors import RequestValidationError

ImageKind = Literal["url", "base64", "bytes", "path"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
_DATA_URL = re.compile(r"^data:[^,]*?;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")
# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xDA)})
#: How much of a local file is read to find its format and size before the full read.
_HEADER_BYTES = 256 * 1024


@attrs.frozen
class ImageInfo:
    """What the header of a local image says."""

    format: Literal["png", "jpeg"]
    width: int
    height: int


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            if i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def inspect_image(data: bytes) -> ImageInfo | None:
    """Read format and dimensions from a PNG or JPEG header; ``None`` if neither can be read."""
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return ImageInfo("png", width, height)
    if data.startswith(_JPEG_SOI):
        size = _jpeg_size(data)
        if size is not None:
            return ImageInfo("jpeg", *size)
    return None


def _sniff_error(data: bytes) -> str:
    if data.startswith((_PNG_SIGNATURE, _JPEG_SOI)):
        return "the image header is truncated or corrupt; its dimensions cannot be read"
    return "not a JPEG or PNG image (checked by its first bytes)"


def check_image_bytes(data: bytes, field: str, *, size: int | None = None) -> ImageInfo:
    """Check a local image against the API's limits.

    Args:
        data: The image, or at least its header.
        field: The request field, named in any error.
        size: The full size in bytes when ``data`` is only the header.

    Raises:
        RequestValidationError: The image breaks a limit.
    """
    total = len(data) if size is None else size
    if total > MAX_IMAGE_BYTES:
        raise RequestValidationError(
            field, f"image is {total} bytes; the limit is {MAX_IMAGE_BYTES} bytes (10 MB)"
        )
    info = inspect_image(data)
    if info is None:
        raise RequestValidationError(field, _sniff_error(data))
    if min(info.width, info.height) < MIN_IMAGE_SIDE:
        raise RequestValidationError(
            field,
            f"image is {info.width}x{info.height} px; each side must be at least "
            f"{MIN_IMAGE_SIDE} px",
        )
    ratio = info.width / info.height
    if ratio > MAX_ASPECT or ratio < 1 / MAX_ASPECT:
        raise RequestValidationError(
            field,
            f"image is {info.width}x{info.height} px; its aspect ratio must be between "
            f"1:{MAX_ASPECT:g} and {MAX_ASPECT:g}:1",
        )
    return info


def _strip_data_url(text: str) -> str:
    return _DATA_URL.sub("", text.strip(), count=1)


def _decode_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", text.encode("ascii")), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise RequestValidationError(
            field,
            "a string must be an http(s) URL or base64-encoded image data; "
            "pass a pathlib.Path for a local file",
        ) from None


def _short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


@attrs.frozen(repr=False)
class ImageInput:
    """One reference image: a URL, base64 text, raw bytes or a local file.

    Plain ``str``, ``bytes`` and ``pathlib.Path`` values are turned into an ``ImageInput``
    automatically; build one yourself to be explicit (``ImageInput.from_path("a.png")``).
    Local images (everything but URLs) are checked before anything is sent: JPEG or PNG,
    at most 10 MB, each side at least 300 px, aspect ratio between 1:2.5 and 2.5:1.
    """

    kind: ImageKind
    """Where the image comes from: ``"url"``, ``"base64"``, ``"bytes"`` or ``"path"``."""
    value: str | bytes | pathlib.Path
    """The URL, the base64 text (without a ``data:`` prefix), the bytes or the path."""

    @classmethod
    def from_url(cls, url: str) -> ImageInput:
        """An image the API fetches itself from an ``http(s)`` URL (not fetched locally)."""
        return cls("url", url.strip())

    @classmethod
    def from_base64(cls, data: str) -> ImageInput:
        """Base64 image data; a ``data:image/...;base64,`` prefix is removed."""
        return cls("base64", _strip_data_url(data))

    @classmethod
    def from_bytes(cls, data: bytes) -> ImageInput:
        """Raw JPEG or PNG bytes, sent as base64."""
        return cls("bytes", bytes(data))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ImageInput:
        """A local JPEG or PNG file, read and sent as base64 when the request is submitted."""
        return cls("path", pathlib.Path(path))

    @classmethod
    def coerce(cls, value: ImageSource) -> ImageInput:
        """Turn any accepted image value into an ``ImageInput``.

        A ``str`` is a URL when it starts with ``http://`` or ``https://`` and base64 otherwise.

        Raises:
            TypeError: The value is of no accepted type.
        """
        if isinstance(value, ImageInput):
            return value
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered.startswith(("http://", "https://")):
                return cls.from_url(value)
            return cls.from_base64(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls.from_bytes(bytes(value))
        if isinstance(value, os.PathLike):
            return cls.from_path(value)
        raise TypeError(
            f"expected a URL or base64 str, bytes, pathlib.Path or ImageInput, "
            f"not {type(value).__name__}"
        )

    def validate(self, field: str) -> None:
        """Check this image locally (URLs only for their form), naming ``field`` in errors.

        Raises:
            RequestValidationError: The image breaks a limit or cannot be read.
        """
        if self.kind == "url":
            assert isinstance(self.value, str)
            if not re.match(r"^https?://[^/\s]+", self.value, re.IGNORECASE):
                raise RequestValidationError(field, f"not a valid http(s) URL: {self.value!r}")
        elif self.kind == "base64":
            assert isinstance(self.value, str)
            check_image_bytes(_decode_base64(self.value, field), field)
        elif self.kind == "bytes":
            assert isinstance(self.value, bytes)
            check_image_bytes(self.value, field)
        else:
            assert isinstance(self.value, pathlib.Path)
            _check_path_header(self.value, field)

    async def to_wire(self, field: str) -> str:
        """The string the API receives: the URL, or base64 without a ``data:`` prefix."""
        if self.kind in ("url", "base64"):
            assert isinstance(self.value, str)
            return self.value
        if self.kind == "bytes":
            assert isinstance(self.value, bytes)
            return base64.b64encode(self.value).decode("ascii")
        assert isinstance(self.value, pathlib.Path)
        return await asyncio.to_thread(_read_path_base64, self.value, field)

    def __repr__(self) -> str:
        if self.kind == "url":
            assert isinstance(self.value, str)
            return f"ImageInput.from_url({_short(self.value)!r})"
        if self.kind == "path":
            return f"ImageInput.from_path({str(self.value)!r})"
        assert not isinstance(self.value, pathlib.Path)
        return f"ImageInput(kind={self.kind!r}, {len(self.value)} chars/bytes)"


ImageSource = Union[str, bytes, bytearray, memoryview, "os.PathLike[str]", ImageInput]
"""Anything accepted as a reference image."""


def _read_path(path: pathlib.Path, field: str, limit: int | None) -> tuple[bytes, int]:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return b"", size
        with path.open("rb") as fh:
            return fh.read() if limit is None else fh.read(limit), size
    except FileNotFoundError:
        raise RequestValidationError(field, f"file not found: {str(path)!r}") from None
    except IsADirectoryError:
        raise RequestValidationError(field, f"not a file: {str(path)!r}") from None
    except OSError as exc:
        raise RequestValidationError(field, f"cannot read {str(path)!r}: {exc.strerror}") from None


def _check_path_header(path: pathlib.Path, field: str) -> None:
    head, size = _read_path(path, field, _HEADER_BYTES)
    if size > MAX_IMAGE_BYTES or inspect_image(head) is not None or size <= len(head):
        check_image_bytes(head, field, size=size)
        return
    # A JPEG whose frame header sits behind large metadata: read it all (at most 10 MB).
    data, size = _read_path(path, field, None)
    check_image_bytes(data, field, size=size)


def _read_path_base64(path: pathlib.Path, field: str) -> str:
    data, size = _read_path(path, field, None)
    check_image_bytes(data, field, size=size)
    return base64.b64encode(data).decode("ascii")
