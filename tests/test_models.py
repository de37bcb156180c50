"""The data model: request validation, task statuses and generation outcomes."""

from __future__ import annotations

import pathlib

import attrs
import pytest

import kling_async as ka
from tests._images import make_png

URLS = [f"https://img.example.com/{name}.png" for name in "abcde"]
ASPECT_RATIOS = ["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]


def build(**overrides: object) -> ka.GenerationRequest:
    fields: dict[str, object] = {"subject_images": URLS[:2], "prompt": "two cats having tea"}
    fields.update(overrides)
    return ka.GenerationRequest(**fields)  # type: ignore[arg-type]


def refused(field: str, **overrides: object) -> ka.RequestValidationError:
    with pytest.raises(ka.RequestValidationError) as info:
        build(**overrides)
    assert info.value.field == field
    assert field in str(info.value)
    return info.value


# --- GenerationRequest --------------------------------------------------------------------


def test_defaults() -> None:
    request = build()
    assert request.n == 1
    assert request.aspect_ratio == "16:9"
    assert request.model_name == "kling-v2"
    assert request.scene_image is None
    assert request.style_image is None
    assert request.callback_url is None
    assert request.external_task_id is None


@pytest.mark.parametrize("count", [2, 3, 4])
def test_two_to_four_subjects_accepted(count: int) -> None:
    request = build(subject_images=URLS[:count])
    assert len(request.subject_images) == count
    assert all(isinstance(image, ka.ImageInput) for image in request.subject_images)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_other_subject_counts_refused(count: int) -> None:
    error = refused("subject_images", subject_images=URLS[:count])
    assert str(count) in str(error)


def test_subjects_from_any_iterable() -> None:
    request = build(subject_images=(url for url in URLS[:3]))
    assert [image.value for image in request.subject_images] == URLS[:3]


@pytest.mark.parametrize("value", ["https://img.example.com/a.png", b"\x89PNG", 7])
def test_subject_images_must_be_a_collection(value: object) -> None:
    refused("subject_images", subject_images=value)


def test_mixed_subject_kinds(png_path: pathlib.Path) -> None:
    png = make_png(400, 300)
    request = build(subject_images=[URLS[0], png, png_path, ka.ImageInput.from_url(URLS[1])])
    assert [image.kind for image in request.subject_images] == ["url", "bytes", "path", "url"]


def test_bad_subject_type_names_its_position() -> None:
    refused("subject_images[1]", subject_images=[URLS[0], 42])


def test_invalid_subject_image_names_its_position() -> None:
    refused("subject_images[2]", subject_images=[URLS[0], URLS[1], make_png(200, 400)])


def test_missing_subject_file_names_its_position(tmp_path: pathlib.Path) -> None:
    refused("subject_images[0]", subject_images=[tmp_path / "missing.png", URLS[1]])


@pytest.mark.parametrize("field", ["scene_image", "style_image"])
def test_optional_images(field: str, png_path: pathlib.Path) -> None:
    assert getattr(build(**{field: png_path}), field) == ka.ImageInput.from_path(png_path)
    refused(field, **{field: make_png(299, 400)})
    refused(field, **{field: 3.5})


def test_request_validation_error_is_value_error_and_kling_error() -> None:
    error = refused("prompt", prompt="x" * 2501)
    assert isinstance(error, ValueError)
    assert isinstance(error, ka.KlingError)


def test_prompt_length() -> None:
    assert build(prompt="x" * 2500).prompt == "x" * 2500
    refused("prompt", prompt="x" * 2501)
    assert build(prompt=None).prompt is None


def test_prompt_must_be_text() -> None:
    refused("prompt", prompt=123)


@pytest.mark.parametrize("n", [1, 5, 9])
def test_n_accepted(n: int) -> None:
    assert build(n=n).n == n


@pytest.mark.parametrize("n", [0, -1, 10, True, False, 1.0, "2", None])
def test_n_refused(n: object) -> None:
    refused("n", n=n)


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_aspect_ratios_accepted(ratio: str) -> None:
    assert build(aspect_ratio=ratio).aspect_ratio == ratio


@pytest.mark.parametrize("ratio", ["5:4", "16/9", "", "1:1 ", "square", None])
def test_aspect_ratios_refused(ratio: object) -> None:
    refused("aspect_ratio", aspect_ratio=ratio)


@pytest.mark.parametrize("name", ["", "   ", None])
def test_model_name_refused(name: object) -> None:
    refused("model_name", model_name=name)


@pytest.mark.parametrize(
    "url", ["https://svc.example.com/kling/callback?token=abc", "http://127.0.0.1:8080/cb"]
)
def test_callback_url_accepted(url: str) -> None:
    assert build(callback_url=url).callback_url == url


@pytest.mark.parametrize("url", ["ftp://svc.example.com/cb", "svc.example.com/cb", "", "https://"])
def test_callback_url_refused(url: str) -> None:
    refused("callback_url", callback_url=url)


def test_external_task_id() -> None:
    assert build(external_task_id="job-42").external_task_id == "job-42"
    refused("external_task_id", external_task_id="")
    refused("external_task_id", external_task_id="   ")
    refused("external_task_id", external_task_id=42)


def test_request_is_frozen() -> None:
    request = build()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.n = 2  # type: ignore[misc]


def test_request_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        ka.GenerationRequest(URLS[:2])  # type: ignore[misc]


# --- TaskStatus ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "terminal"),
    [
        (ka.TaskStatus.SUBMITTED, False),
        (ka.TaskStatus.PROCESSING, False),
        (ka.TaskStatus.SUCCEED, True),
        (ka.TaskStatus.FAILED, True),
    ],
)
def test_is_terminal(status: ka.TaskStatus, terminal: bool) -> None:
    assert status.is_terminal is terminal


def test_known_words() -> None:
    assert [status.value for status in ka.TaskStatus] == [
        "submitted",
        "processing",
        "succeed",
        "failed",
    ]
    assert ka.TaskStatus("succeed") is ka.TaskStatus.SUCCEED
    assert str(ka.TaskStatus.FAILED) == "failed"


def test_unknown_word_is_kept() -> None:
    status = ka.TaskStatus("paused_by_moderator")
    assert isinstance(status, ka.TaskStatus)
    assert status.value == "paused_by_moderator"
    assert str(status) == "paused_by_moderator"
    assert "paused_by_moderator" in repr(status)
    assert not status.is_terminal
    assert status not in (
        ka.TaskStatus.SUBMITTED,
        ka.TaskStatus.PROCESSING,
        ka.TaskStatus.SUCCEED,
        ka.TaskStatus.FAILED,
    )


def test_unknown_word_gives_the_same_member_each_time() -> None:
    first = ka.TaskStatus("on_hold")
    assert ka.TaskStatus("on_hold") is first
    assert ka.TaskStatus("on_hold") == first
    assert ka.TaskStatus("on_hold_2") is not first


def test_unknown_words_do_not_join_the_documented_members() -> None:
    ka.TaskStatus("something_new")
    assert len(list(ka.TaskStatus)) == 4


def test_status_rejects_non_text() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - enum lookup raises a plain ValueError
        ka.TaskStatus(3)  # type: ignore[arg-type]


# --- Task ---------------------------------------------------------------------------------


def test_task_defaults_and_frozen() -> None:
    task = ka.Task(task_id="123", status=ka.TaskStatus.SUBMITTED)
    assert task.images == ()
    assert task.status_message is None
    assert task.request_id is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.task_id = "456"  # type: ignore[misc]


# --- GenerationOutcome --------------------------------------------------------------------


def test_outcome_ok_and_unwrap() -> None:
    request = build()
    task = ka.Task(task_id="1", status=ka.TaskStatus.SUCCEED)
    outcome = ka.GenerationOutcome(request=request, task=task, task_id="1")
    assert outcome.ok
    assert outcome.unwrap() is task
    assert outcome.request is request


def test_outcome_with_error() -> None:
    failed = ka.Task(task_id="1", status=ka.TaskStatus.FAILED, status_message="nsfw")
    error = ka.TaskFailedError(failed)
    outcome = ka.GenerationOutcome(request=build(), task=failed, error=error, task_id="1")
    assert not outcome.ok
    with pytest.raises(ka.TaskFailedError) as info:
        outcome.unwrap()
    assert info.value is error


def test_outcome_without_task_is_not_ok() -> None:
    error = ka.QuotaExceededError("arrears", http_status=429, code=1101)
    outcome = ka.GenerationOutcome(request=build(), error=error)
    assert not outcome.ok
    assert outcome.task_id is None
    with pytest.raises(ka.QuotaExceededError):
        outcome.unwrap()
