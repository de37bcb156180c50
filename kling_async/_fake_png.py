"""Tiny PNG encoder for FakeKlingServer's generated images (zlib + struct, no Pillow)."""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from typing import Final

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

RGB = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=512)
def make_png(width: int, height: int, rgb: RGB) -> bytes:
    """Encode a solid-colour 8-bit RGB PNG.

    Results are cached: a fake server serves the same few images over and over.

    Args:
        width: Image width in pixels (≥ 1).
        height: Image height in pixels (≥ 1).
        rgb: The colour as three 0–255 ints.

    Returns:
        The PNG file's bytes.

    Raises:
        ValueError: If a dimension is not positive or a colour channel is out of range.
    """
    if width < 1 or height < 1:
        raise ValueError(f"PNG dimensions must be positive, got {width}x{height}")
    if any(not 0 <= channel <= 255 for channel in rgb):
        raise ValueError(f"colour channels must be 0-255, got {rgb!r}")
    # Each scanline starts with filter byte 0 (None); identical rows compress to almost nothing.
    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * height, 6))
        + _chunk(b"IEND", b"")
    )


def colour_for(key: str) -> RGB:
    """Derive a stable colour from a string (e.g. ``"<task_id>/<index>"``).

    Args:
        key: Any string; equal keys give equal colours.

    Returns:
        An RGB triple.
    """
    digest = hashlib.blake2b(key.encode(), digest_size=3).digest()
    return (digest[0], digest[1], digest[2])
