"""Reference images: coercion, header parsing, local limits and the wire form."""

from __future__ import annotations

import base64
import pathlib

import pytest

import kling_async as ka
from kling_async._images import check_image_bytes, inspect_image
from tests._images import PNG_SIGNATURE, make_jpeg, make_png

MIB10 = 10 * 1024 * 1024
HEADER_WINDOW = 256 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- coercion -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://img.example.com/a.png", "http://img.example.com/a.png?x=1", "HTTPS://X.Y/z"]
)
def test_coerce_http_string_is_url(url: str) -> None:
    image = ka.ImageInput.coerce(url)
    assert image.kind == "url"
    assert image.value == url


def test_coerce_other_string_is_base64(png_bytes: bytes) -> None:
    image = ka.ImageInput.coerce(b64(png_bytes))
    assert image.kind == "base64"
    assert image.value == b64(png_bytes)


@pytest.mark.parametrize("prefix", ["data:image/png;base64,", "DATA:image/jpeg;BASE64,"])
def test_coerce_strips_data_url_prefix(png_bytes: bytes, prefix: str) -> None:
    image = ka.ImageInput.coerce(prefix + b64(png_bytes))
    assert image.kind == "base64"
    assert image.value == b64(png_bytes)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_coerce_bytes_like(png_bytes: bytes, wrap: type) -> None:
    image = ka.ImageInput.coerce(wrap(png_bytes))
    assert image.kind == "bytes"
    assert image.value == png_bytes
    assert type(image.value) is bytes


def test_coerce_path(png_path: pathlib.Path) -> None:
    image = ka.ImageInput.coerce(png_path)
    assert image.kind == "path"
    assert image.value == png_path


def test_coerce_passes_image_input_through() -> None:
    original = ka.ImageInput.from_url("https://img.example.com/a.png")
    assert ka.ImageInput.coerce(original) is original


@pytest.mark.parametrize("value", [42, 1.5, None, ["https://a.example/x.png"], object()])
def test_coerce_bad_type_is_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=type(value).__name__):
        ka.ImageInput.coerce(value)  # type: ignore[arg-type]


def test_from_path_accepts_str(png_path: pathlib.Path) -> None:
    image = ka.ImageInput.from_path(str(png_path))
    assert image.kind == "path"
    assert image.value == png_path


# --- header parsing -----------------------------------------------------------------------


def test_inspect_png() -> None:
    info = inspect_image(make_png(640, 480))
    assert info is not None
    assert (info.format, info.width, info.height) == ("png", 640, 480)


def test_inspect_jpeg() -> None:
    info = inspect_image(make_jpeg(1024, 768))
    assert info is not None
    assert (info.format, info.width, info.height) == ("jpeg", 1024, 768)


def test_inspect_jpeg_after_large_metadata() -> None:
    info = inspect_image(make_jpeg(500, 400, exif_padding=HEADER_WINDOW + 10_000))
    assert info is not None
    assert (info.format, info.width, info.height) == ("jpeg", 500, 400)


@pytest.mark.parametrize(
    "data",
    [
        PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR\x00\x00",  # PNG cut inside IHDR
        b"\xff\xd8",  # bare SOI
        make_jpeg(400, 400, exif_padding=1000)[:500],  # cut inside the APP1 segment
        make_jpeg(400, 400)[:-8],  # cut inside SOF0
    ],
    ids=["png", "jpeg-soi", "jpeg-app1", "jpeg-sof"],
)
def test_truncated_header_is_refused(data: bytes) -> None:
    assert inspect_image(data) is None
    with pytest.raises(ka.RequestValidationError, match="truncated") as info:
        check_image_bytes(data, "scene_image")
    assert info.value.field == "scene_image"


@pytest.mark.parametrize(
    "data", [b"GIF89a" + bytes(100), b"<html>hello</html>", b"", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
)
def test_not_an_image_is_refused(data: bytes) -> None:
    assert inspect_image(data) is None
    with pytest.raises(ka.RequestValidationError, match="not a JPEG or PNG"):
        check_image_bytes(data, "style_image")


# --- limits -------------------------------------------------------------------------------


def test_exactly_10_mib_is_accepted() -> None:
    data = make_png(400, 400, size=MIB10)
    info = check_image_bytes(data, "subject_images[0]")
    assert (info.width, info.height) == (400, 400)
    ka.ImageInput.from_bytes(data).validate("subject_images[0]")


def test_one_byte_over_10_mib_is_refused() -> None:
    data = make_png(400, 400, size=MIB10 + 1)
    with pytest.raises(ka.RequestValidationError, match=str(MIB10 + 1)) as info:
        ka.ImageInput.from_bytes(data).validate("subject_images[0]")
    assert info.value.field == "subject_images[0]"


def test_size_limit_for_files(tmp_path: pathlib.Path) -> None:
    ok = tmp_path / "ok.png"
    ok.write_bytes(make_png(400, 400, size=MIB10))
    big = tmp_path / "big.png"
    big.write_bytes(make_png(400, 400, size=MIB10 + 1))
    ka.ImageInput.from_path(ok).validate("scene_image")
    with pytest.raises(ka.RequestValidationError, match="bytes"):
        ka.ImageInput.from_path(big).validate("scene_image")


@pytest.mark.parametrize("make", [make_png, make_jpeg])
@pytest.mark.parametrize(
    ("width", "height"), [(300, 300), (300, 700), (700, 300), (750, 300), (300, 750), (5000, 2000)]
)
def test_dimensions_within_limits_are_accepted(make, width: int, height: int) -> None:
    info = check_image_bytes(make(width, height), "subject_images[0]")
    assert (info.width, info.height) == (width, height)


@pytest.mark.parametrize("make", [make_png, make_jpeg])
@pytest.mark.parametrize(("width", "height"), [(299, 400), (400, 299), (299, 299), (1, 1)])
def test_side_below_300_px_is_refused(make, width: int, height: int) -> None:
    with pytest.raises(ka.RequestValidationError, match="300 px") as info:
        check_image_bytes(make(width, height), "subject_images[1]")
    assert info.value.field == "subject_images[1]"


@pytest.mark.parametrize("make", [make_png, make_jpeg])
@pytest.mark.parametrize(("width", "height"), [(751, 300), (300, 751), (2501, 1000), (1000, 2501)])
def test_aspect_beyond_2_5_is_refused(make, width: int, height: int) -> None:
    with pytest.raises(ka.RequestValidationError, match="aspect ratio"):
        check_image_bytes(make(width, height), "subject_images[0]")


@pytest.mark.parametrize(("width", "height"), [(2500, 1000), (1000, 2500)])
def test_aspect_2_5_inclusive_for_files(tmp_path: pathlib.Path, width: int, height: int) -> None:
    path = tmp_path / "wide.jpg"
    path.write_bytes(make_jpeg(width, height))
    ka.ImageInput.from_path(path).validate("style_image")


# --- files --------------------------------------------------------------------------------


def test_missing_file_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ka.RequestValidationError, match="not found") as info:
        ka.ImageInput.from_path(tmp_path / "nope.png").validate("subject_images[0]")
    assert info.value.field == "subject_images[0]"


def test_directory_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ka.RequestValidationError) as info:
        ka.ImageInput.from_path(tmp_path).validate("scene_image")
    assert info.value.field == "scene_image"


def test_file_that_is_not_an_image_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("just text, honest")
    with pytest.raises(ka.RequestValidationError, match="not a JPEG or PNG"):
        ka.ImageInput.from_path(path).validate("scene_image")


def test_jpeg_file_with_frame_header_beyond_header_window(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "exif-heavy.jpg"
    data = make_jpeg(640, 480, exif_padding=HEADER_WINDOW + 50_000)
    assert data.index(b"\xff\xc0") > HEADER_WINDOW
    path.write_bytes(data)
    ka.ImageInput.from_path(path).validate("subject_images[0]")


def test_jpeg_file_beyond_header_window_still_checks_dimensions(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "exif-heavy-small.jpg"
    path.write_bytes(make_jpeg(200, 480, exif_padding=HEADER_WINDOW + 50_000))
    with pytest.raises(ka.RequestValidationError, match="300 px"):
        ka.ImageInput.from_path(path).validate("subject_images[0]")


def test_truncated_jpeg_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(make_jpeg(640, 480, exif_padding=HEADER_WINDOW + 50_000)[: HEADER_WINDOW + 10])
    with pytest.raises(ka.RequestValidationError, match="truncated"):
        ka.ImageInput.from_path(path).validate("subject_images[0]")


# --- validate on other kinds --------------------------------------------------------------


def test_base64_is_decoded_and_checked() -> None:
    ka.ImageInput.from_base64(b64(make_png(400, 400))).validate("scene_image")
    with pytest.raises(ka.RequestValidationError, match="300 px"):
        ka.ImageInput.from_base64(b64(make_png(200, 400))).validate("scene_image")


def test_data_url_is_decoded_and_checked() -> None:
    data_url = "data:image/jpeg;base64," + b64(make_jpeg(400, 400))
    ka.ImageInput.coerce(data_url).validate("scene_image")


def test_string_that_is_neither_url_nor_base64_is_refused() -> None:
    with pytest.raises(ka.RequestValidationError, match="URL or base64") as info:
        ka.ImageInput.coerce("./pictures/cat.png").validate("subject_images[0]")
    assert info.value.field == "subject_images[0]"


def test_url_is_not_fetched_but_must_have_a_host() -> None:
    ka.ImageInput.from_url("https://unreachable.invalid/a.png").validate("scene_image")
    with pytest.raises(ka.RequestValidationError, match="URL"):
        ka.ImageInput.from_url("https://").validate("scene_image")


# --- wire form ----------------------------------------------------------------------------


async def test_to_wire_url_is_unchanged() -> None:
    url = "https://img.example.com/a.png?sig=abc"
    assert await ka.ImageInput.coerce(url).to_wire("scene_image") == url


async def test_to_wire_bytes_is_plain_base64(png_bytes: bytes) -> None:
    wire = await ka.ImageInput.coerce(png_bytes).to_wire("scene_image")
    assert not wire.startswith("data:")
    assert base64.b64decode(wire, validate=True) == png_bytes


async def test_to_wire_data_url_loses_its_prefix(png_bytes: bytes) -> None:
    wire = await ka.ImageInput.coerce("data:image/png;base64," + b64(png_bytes)).to_wire("x")
    assert wire == b64(png_bytes)


async def test_to_wire_path_is_read_at_submit_time(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "later.jpg"
    path.write_bytes(make_png(400, 400))
    image = ka.ImageInput.from_path(path)
    image.validate("subject_images[0]")
    replacement = make_jpeg(600, 400)
    path.write_bytes(replacement)
    wire = await image.to_wire("subject_images[0]")
    assert base64.b64decode(wire, validate=True) == replacement


async def test_path_made_invalid_between_build_and_submit(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "changing.png"
    path.write_bytes(make_png(400, 400))
    request = ka.GenerationRequest(
        subject_images=["https://img.example.com/a.png", path], prompt="tea"
    )
    path.write_bytes(make_png(100, 100))
    with pytest.raises(ka.RequestValidationError, match="300 px") as info:
        await request.subject_images[1].to_wire("subject_images[1]")
    assert info.value.field == "subject_images[1]"


async def test_path_deleted_between_build_and_submit(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gone.png"
    path.write_bytes(make_png(400, 400))
    image = ka.ImageInput.from_path(path)
    image.validate("scene_image")
    path.unlink()
    with pytest.raises(ka.RequestValidationError, match="not found"):
        await image.to_wire("scene_image")


async def test_path_grown_over_limit_between_build_and_submit(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "grows.png"
    path.write_bytes(make_png(400, 400))
    image = ka.ImageInput.from_path(path)
    image.validate("scene_image")
    path.write_bytes(make_png(400, 400, size=MIB10 + 1))
    with pytest.raises(ka.RequestValidationError, match="10 MB"):
        await image.to_wire("scene_image")


# --- repr ---------------------------------------------------------------------------------


def test_repr_does_not_dump_bytes() -> None:
    data = make_png(400, 400, size=5000)
    text = repr(ka.ImageInput.from_bytes(data))
    assert len(text) < 100
    assert "bytes" in text
    assert "\\x" not in text


def test_repr_does_not_dump_base64() -> None:
    encoded = b64(make_png(400, 400, size=5000))
    text = repr(ka.ImageInput.from_base64(encoded))
    assert len(text) < 100
    assert encoded[:40] not in text
    assert "base64" in text


def test_repr_shortens_long_url_and_names_path(png_path: pathlib.Path) -> None:
    url = "https://img.example.com/" + "a" * 500 + ".png"
    assert len(repr(ka.ImageInput.from_url(url))) < 120
    assert "img.example.com" in repr(ka.ImageInput.from_url(url))
    assert png_path.name in repr(ka.ImageInput.from_path(png_path))


def test_request_repr_does_not_dump_image_data(png_bytes: bytes) -> None:
    request = ka.GenerationRequest(subject_images=[png_bytes, b64(png_bytes)], prompt="tea")
    assert b64(png_bytes)[:40] not in repr(request)
    assert len(repr(request)) < 600
