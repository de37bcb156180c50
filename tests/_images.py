"""Tiny image builders for tests: real PNGs and header-valid JPEGs of any size, no Pillow."""

from __future__ import annotations

import struct
import zlib

__all__ = ["PNG_SIGNATURE", "make_jpeg", "make_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Largest payload of one JPEG marker segment (its 2-byte length counts itself).
_MAX_SEGMENT_PAYLOAD = 0xFFFF - 2


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def make_png(width: int, height: int, *, size: int | None = None) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` pixels.

    ``size`` pads the file to exactly that many bytes with a private ancillary chunk
    (it must leave room for the chunk's 12 bytes of overhead).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x00" + bytes(width)) * height  # filter byte 0, then one byte per pixel
    head = PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 9))
    tail = _png_chunk(b"IEND", b"")
    if size is None:
        return head + tail
    padding = size - len(head) - len(tail) - 12
    if padding < 0:
        raise ValueError(f"a {width}x{height} PNG needs more than {size} bytes")
    data = head + _png_chunk(b"prVt", bytes(padding)) + tail
    assert len(data) == size
    return data


def make_jpeg(width: int, height: int, *, exif_padding: int = 0) -> bytes:
    """A minimal JPEG whose header says ``width`` x ``height``: SOI, [APP1…], SOF0, EOI.

    ``exif_padding`` puts that many bytes of APP1 payload before the frame header, split over
    as many segments as needed (one segment holds at most 65533 bytes).
    """
    parts = [b"\xff\xd8"]
    remaining = exif_padding
    while remaining > 0:
        chunk = min(remaining, _MAX_SEGMENT_PAYLOAD)
        parts.append(b"\xff\xe1" + struct.pack(">H", chunk + 2) + bytes(chunk))
        remaining -= chunk
    # SOF0: length 11, 8-bit precision, height, width, one component (id 1, 1x1, table 0).
    parts.append(b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00")
    parts.append(b"\xff\xd9")
    return b"".join(parts)
