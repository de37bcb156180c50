"""The converter: every payload quirk of the wire contract, and the create body."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

import kling_async as ka
from kling_async._serde import CreateBody, ShapeError, dump_body, read_envelope, structure_task

UTC = datetime.timezone.utc
TASK_ID = "827301452311113784"  # the shape of a real Kling id: long, numeric, a string


def task_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": TASK_ID,
        "task_status": "succeed",
        "task_status_msg": "",
        "task_info": {"external_task_id": "job-1"},
        "created_at": 1722000000000,
        "updated_at": 1722000030000,
        "task_result": {"images": [{"index": 0, "url": "https://cdn.example.com/0.png"}]},
    }
    data.update(overrides)
    return data


def without(key: str) -> dict[str, Any]:
    data = task_data()
    del data[key]
    return data


def envelope(data: Any, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": 0, "message": "SUCCEED", "request_id": "req-1", "data": data}
    body.update(overrides)
    return body


# --- the plain contract -------------------------------------------------------------------


def test_documented_task() -> None:
    task = structure_task(task_data(), "req-1")
    assert task == ka.Task(
        task_id=TASK_ID,
        status=ka.TaskStatus.SUCCEED,
        status_message=None,
        external_task_id="job-1",
        created_at=datetime.datetime(2024, 7, 26, 13, 20, tzinfo=UTC),
        updated_at=datetime.datetime(2024, 7, 26, 13, 20, 30, tzinfo=UTC),
        images=(ka.GeneratedImage(index=0, url="https://cdn.example.com/0.png"),),
        request_id="req-1",
    )


def test_documented_envelope() -> None:
    env = read_envelope(envelope(task_data()))
    assert env.code == 0
    assert env.message == "SUCCEED"
    assert env.request_id == "req-1"
    assert env.data == task_data()


# --- code ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (0, 0),
        ("0", 0),
        ("success", 0),
        ("SUCCESS", 0),
        ("", 0),
        (1303, 1303),
        ("1303", 1303),
        ("429", 429),
        (5000, 5000),
    ],
)
def test_code_forms(raw: object, code: int) -> None:
    assert read_envelope(envelope(None, code=raw)).code == code


def test_code_absent_means_success() -> None:
    body = envelope(task_data())
    del body["code"]
    env = read_envelope(body)
    assert env.code == 0
    assert structure_task(env.data, env.request_id).task_id == TASK_ID


def test_code_unreadable_word_is_not_success() -> None:
    assert read_envelope(envelope(None, code="upstream_error")).code != 0


def test_message_succeed_on_failed_task_keeps_reason_from_status_msg() -> None:
    body = envelope(task_data(task_status="failed", task_status_msg="content risk", task_result={}))
    env = read_envelope(body)
    task = structure_task(env.data, env.request_id)
    assert env.code == 0
    assert task.status is ka.TaskStatus.FAILED
    assert task.status_message == "content risk"
    assert task.images == ()


@pytest.mark.parametrize("body", [None, [], "SUCCEED", 7])
def test_envelope_must_be_an_object(body: object) -> None:
    with pytest.raises(ShapeError):
        read_envelope(body)


def test_envelope_ignores_unknown_fields() -> None:
    env = read_envelope(envelope(task_data(), trace={"id": 1}, cost=0.1))
    assert env.code == 0
    assert env.request_id == "req-1"


# --- task_id ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00123456789012345678901234567890", "00123456789012345678901234567890"),
        ("CjikY2dnPE4AAAAAAd9Y6A", "CjikY2dnPE4AAAAAAd9Y6A"),
        (827301452311113784, "827301452311113784"),
        (17, "17"),
    ],
)
def test_task_id_is_always_a_string(raw: object, expected: str) -> None:
    task = structure_task(task_data(task_id=raw), None)
    assert task.task_id == expected
    assert isinstance(task.task_id, str)


@pytest.mark.parametrize("raw", [None, ""])
def test_task_id_required(raw: object) -> None:
    with pytest.raises(ShapeError):
        structure_task(task_data(task_id=raw), None)


def test_task_id_missing() -> None:
    with pytest.raises(ShapeError):
        structure_task(without("task_id"), None)


@pytest.mark.parametrize("data", [None, "task", 12, [1, 2]])
def test_task_must_be_an_object(data: object) -> None:
    with pytest.raises(ShapeError):
        structure_task(data, None)


def test_missing_status_is_a_shape_error() -> None:
    with pytest.raises(ShapeError):
        structure_task(without("task_status"), None)


def test_shape_error_is_a_value_error() -> None:
    assert issubclass(ShapeError, ValueError)


# --- "nothing" in its four spellings ------------------------------------------------------

NOTHINGS = [None, {}, ""]


@pytest.mark.parametrize("nothing", NOTHINGS)
def test_task_info_nothing(nothing: object) -> None:
    assert structure_task(task_data(task_info=nothing), None).external_task_id is None


def test_task_info_missing() -> None:
    assert structure_task(without("task_info"), None).external_task_id is None


@pytest.mark.parametrize("nothing", NOTHINGS)
def test_external_task_id_nothing(nothing: object) -> None:
    task = structure_task(task_data(task_info={"external_task_id": nothing}), None)
    assert task.external_task_id is None


def test_external_task_id_missing_inside_task_info() -> None:
    task = structure_task(task_data(task_info={"other": 1}), None)
    assert task.external_task_id is None


@pytest.mark.parametrize("nothing", NOTHINGS)
def test_task_result_nothing(nothing: object) -> None:
    assert structure_task(task_data(task_result=nothing), None).images == ()


def test_task_result_missing() -> None:
    assert structure_task(without("task_result"), None).images == ()


@pytest.mark.parametrize("nothing", [None, [], {}, ""])
def test_task_result_images_nothing(nothing: object) -> None:
    assert structure_task(task_data(task_result={"images": nothing}), None).images == ()


@pytest.mark.parametrize("nothing", NOTHINGS)
def test_task_status_msg_nothing(nothing: object) -> None:
    assert structure_task(task_data(task_status_msg=nothing), None).status_message is None


def test_task_status_msg_missing() -> None:
    assert structure_task(without("task_status_msg"), None).status_message is None


# --- image items --------------------------------------------------------------------------


def test_images_by_index_in_index_order() -> None:
    items = [{"index": 1, "url": "https://cdn/b.png"}, {"index": 0, "url": "https://cdn/a.png"}]
    task = structure_task(task_data(task_result={"images": items}), None)
    assert task.images == (
        ka.GeneratedImage(index=0, url="https://cdn/a.png"),
        ka.GeneratedImage(index=1, url="https://cdn/b.png"),
    )


def test_images_without_index_use_their_position() -> None:
    items = [{"id": "", "url": "https://cdn/a.png"}, {"id": "", "url": "https://cdn/b.png"}]
    task = structure_task(task_data(task_result={"images": items}), None)
    assert [(image.index, image.url) for image in task.images] == [
        (0, "https://cdn/a.png"),
        (1, "https://cdn/b.png"),
    ]


def test_images_with_extra_keys() -> None:
    items = [
        {"index": 0, "url": "https://cdn/a.png", "watermark_url": "https://cdn/a-wm.png"},
        {"index": 1, "url": "https://cdn/b.png", "watermark_url": "", "size": [1, 2]},
    ]
    task = structure_task(task_data(task_result={"images": items, "videos": []}), None)
    assert [image.url for image in task.images] == ["https://cdn/a.png", "https://cdn/b.png"]


# --- timestamps ---------------------------------------------------------------------------


def test_timestamps_in_milliseconds_and_seconds_agree() -> None:
    in_ms = structure_task(task_data(created_at=1722000000123, updated_at=1722000030000), None)
    in_s = structure_task(task_data(created_at=1722000000, updated_at=1722000030), None)
    assert (
        in_ms.updated_at
        == in_s.updated_at
        == datetime.datetime(2024, 7, 26, 13, 20, 30, tzinfo=UTC)
    )
    assert in_ms.created_at is not None
    assert in_ms.created_at.microsecond == 123000
    assert in_ms.created_at.tzinfo is not None
    assert in_ms.created_at.utcoffset() == datetime.timedelta(0)


def test_timestamp_boundary_is_10_to_the_11() -> None:
    below = structure_task(task_data(updated_at=10**11 - 1), None).updated_at
    at = structure_task(task_data(updated_at=10**11), None).updated_at
    assert below is not None
    assert below.year == 5138  # still read as seconds
    assert at == datetime.datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)  # read as milliseconds


@pytest.mark.parametrize("nothing", [None, "", 0])
def test_timestamp_nothing(nothing: object) -> None:
    assert structure_task(task_data(created_at=nothing), None).created_at is None


def test_timestamp_missing() -> None:
    assert structure_task(without("updated_at"), None).updated_at is None


# --- status words -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("submitted", ka.TaskStatus.SUBMITTED),
        ("SUBMITTED", ka.TaskStatus.SUBMITTED),
        ("QUEUED", ka.TaskStatus.SUBMITTED),
        ("NOT_START", ka.TaskStatus.SUBMITTED),
        ("processing", ka.TaskStatus.PROCESSING),
        ("IN_PROGRESS", ka.TaskStatus.PROCESSING),
        ("succeed", ka.TaskStatus.SUCCEED),
        ("SUCCESS", ka.TaskStatus.SUCCEED),
        ("succeeded", ka.TaskStatus.SUCCEED),
        ("completed", ka.TaskStatus.SUCCEED),
        ("failed", ka.TaskStatus.FAILED),
        ("FAILURE", ka.TaskStatus.FAILED),
    ],
)
def test_status_words(word: str, status: ka.TaskStatus) -> None:
    assert structure_task(task_data(task_status=word), None).status is status


def test_unknown_status_word_is_kept_and_not_terminal() -> None:
    task = structure_task(task_data(task_status="MODERATION_REVIEW"), None)
    assert task.status.value == "MODERATION_REVIEW"
    assert str(task.status) == "MODERATION_REVIEW"
    assert "MODERATION_REVIEW" in repr(task.status)
    assert not task.status.is_terminal
    again = structure_task(task_data(task_status="MODERATION_REVIEW"), None)
    assert again.status is task.status


# --- router envelopes ---------------------------------------------------------------------


def kling_envelope(request_id: str = "inner-req") -> dict[str, Any]:
    return envelope(task_data(), request_id=request_id)


@pytest.mark.parametrize(
    "router_data",
    [
        pytest.param(kling_envelope(), id="data-is-kling-envelope"),
        pytest.param(
            {"action": "generate", "progress": "100%", "data": kling_envelope()},
            id="router-object-around-kling-envelope",
        ),
        pytest.param(
            {
                "task_id": "task_router_123",
                "action": "generate",
                "status": "SUCCESS",
                "fail_reason": "",
                "submit_time": 1722000000,
                "progress": "100%",
                "data": kling_envelope(),
            },
            id="router-task-dto-around-kling-envelope",
        ),
    ],
)
def test_router_envelope_is_unwrapped(router_data: dict[str, Any]) -> None:
    body = {"code": "success", "message": "", "request_id": "outer-req", "data": router_data}
    env = read_envelope(body)
    assert env.code == 0
    assert env.request_id == "inner-req"
    task = structure_task(env.data, env.request_id)
    assert task.task_id == TASK_ID
    assert task.status is ka.TaskStatus.SUCCEED
    assert task.request_id == "inner-req"
    assert task.external_task_id == "job-1"


def test_router_envelope_keeps_inner_error_code() -> None:
    inner = {"code": 1303, "message": "parallel task over limit", "request_id": "in", "data": None}
    env = read_envelope({"code": "success", "data": inner})
    assert env.code == 1303
    assert env.message == "parallel task over limit"
    assert env.request_id == "in"


def test_task_that_has_data_and_message_fields_is_not_mistaken_for_an_envelope() -> None:
    data = task_data(data={"x": 1}, message="hello")
    env = read_envelope(envelope(data))
    assert structure_task(env.data, env.request_id).task_id == TASK_ID


# --- unknown fields -----------------------------------------------------------------------


def test_unknown_fields_everywhere_are_ignored() -> None:
    data = task_data(
        final_unit_deduction="1",
        task_info={"external_task_id": "job-1", "parent_video": None},
        task_result={"images": [{"index": 0, "url": "https://cdn/a.png", "nsfw": False}], "x": 1},
    )
    task = structure_task(data, "r")
    assert task.external_task_id == "job-1"
    assert task.images == (ka.GeneratedImage(index=0, url="https://cdn/a.png"),)


def test_callback_body_without_envelope() -> None:
    task = structure_task(task_data(task_status="processing", task_result=None), None)
    assert task.status is ka.TaskStatus.PROCESSING
    assert task.request_id is None


# --- the create body ----------------------------------------------------------------------


def test_minimal_create_body() -> None:
    body = dump_body(
        CreateBody(model_name="kling-v2", subject_images=["u1", "u2"], n=1, aspect_ratio="16:9")
    )
    assert body == {
        "model_name": "kling-v2",
        "subject_image_list": [{"subject_image": "u1"}, {"subject_image": "u2"}],
        "n": 1,
        "aspect_ratio": "16:9",
    }


def test_full_create_body_uses_wire_names() -> None:
    body = dump_body(
        CreateBody(
            model_name="kling-v2-1",
            subject_images=["a", "b", "c", "d"],
            n=4,
            aspect_ratio="1:1",
            prompt="tea",
            scene_image="scene64",
            style_image="https://img/style.png",
            callback_url="https://svc/cb?token=t",
            external_task_id="job-9",
        )
    )
    assert body == {
        "model_name": "kling-v2-1",
        "prompt": "tea",
        "subject_image_list": [
            {"subject_image": "a"},
            {"subject_image": "b"},
            {"subject_image": "c"},
            {"subject_image": "d"},
        ],
        "scence_image": "scene64",
        "style_image": "https://img/style.png",
        "n": 4,
        "aspect_ratio": "1:1",
        "callback_url": "https://svc/cb?token=t",
        "external_task_id": "job-9",
    }
    assert "scene_image" not in body
    assert "subject_images" not in body


@pytest.mark.parametrize(
    "field", ["prompt", "scene_image", "style_image", "callback_url", "external_task_id"]
)
def test_unset_fields_are_omitted(field: str) -> None:
    body = dump_body(
        CreateBody(
            model_name="kling-v2",
            subject_images=["a", "b"],
            n=1,
            aspect_ratio="16:9",
            **{field: None},
        )
    )
    assert set(body) == {"model_name", "subject_image_list", "n", "aspect_ratio"}
    assert None not in body.values()
