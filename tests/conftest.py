"""Shared fixtures. Builders live in ``tests/_images.py``; keep this file to fixtures."""

from __future__ import annotations

import pathlib

import pytest

from tests._images import make_jpeg, make_png

# --- images -------------------------------------------------------------------------------


@pytest.fixture
def png_bytes() -> bytes:
    """A valid 400x400 PNG."""
    return make_png(400, 400)


@pytest.fixture
def jpeg_bytes() -> bytes:
    """A header-valid 400x300 JPEG."""
    return make_jpeg(400, 300)


@pytest.fixture
def png_path(tmp_path: pathlib.Path) -> pathlib.Path:
    """A 400x400 PNG file in a temporary directory."""
    path = tmp_path / "subject.png"
    path.write_bytes(make_png(400, 400))
    return path


@pytest.fixture
def jpeg_path(tmp_path: pathlib.Path) -> pathlib.Path:
    """A 400x300 JPEG file in a temporary directory."""
    path = tmp_path / "subject.jpg"
    path.write_bytes(make_jpeg(400, 300))
    return path
