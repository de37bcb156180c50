"""FakeKlingServer speaks the wire contract (DESIGN.md §3), checked with a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import os
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kling_async.testing import FakeKlingServer, Fault

KEY = "sk-fake-server-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
CREATE = "/kling/v1/images/generations"
URL_A = "https://img.example.com/a.png"
URL_B = "https://img.example.com/b.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def make_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": "kling-v2",
        "prompt": "two cats having tea",
        "subject_image_list": [{"subject_image": URL_A}, {"subject_image": URL_B}],
        "n": 1,
        "aspect_ratio": "1:1",
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class Api:
    """A thin raw-HTTP helper bound to one server."""

    def __init__(self, session: aiohttp.ClientSession, server: FakeKlingServer) -> None:
        self.session = session
        self.server = server

    async def create(
        self, body: Any = None, headers: dict[str, str] | None = None, **overrides: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        payload = make_body(**overrides) if body is None else body
        async with self.session.post(
            self.server.base_url + CREATE,
            json=payload,
            headers=AUTH if headers is None else headers,
        ) as reply:
            return reply.status, await reply.json(content_type=None), reply

    async def get(
        self, task_id: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.session.get(
            f"{self.server.base_url}{CREATE}/{task_id}",
            headers=AUTH if headers is None else headers,
        ) as reply:
            return reply.status, await reply.json(content_type=None), reply

    async def task(self, **overrides: Any) -> dict[str, Any]:
        status, doc, _ = await self.create(**overrides)
        assert status == 200, doc
        return doc["data"]  # type: ignore[no-any-return]


@pytest.fixture
async def server() -> AsyncIterator[FakeKlingServer]:
    async with FakeKlingServer(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def api(session: aiohttp.ClientSession, server: FakeKlingServer) -> Api:
    return Api(session, server)


class Receiver:
    """A callback endpoint on 127.0.0.1 that keeps every JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.reply_status = 200
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(status=self.reply_status)

    def statuses(self) -> list[str]:
        return [body["task_status"] for body in self.bodies]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook?token=abc"
    yield rec
    await runner.cleanup()


# -- happy path ----------------------------------------------------------------------------


async def test_create_then_get_roundtrip(api: Api, server: FakeKlingServer) -> None:
    status, doc, reply = await api.create(n=2, external_task_id="job-1")

    assert status == 200
    assert set(doc) == {"code", "message", "request_id", "data"}
    assert (doc["code"], doc["message"]) == (0, "SUCCEED")
    assert doc["request_id"]
    assert reply.headers["X-Request-Id"] == doc["request_id"]
    task = doc["data"]
    assert task["task_id"].isdigit()
    assert len(task["task_id"]) >= 18
    assert task["task_status"] == "submitted"  # even with task_duration=0
    assert task["task_info"] == {"external_task_id": "job-1"}
    assert task["task_result"] == {}
    assert task["task_status_msg"] == ""
    assert task["created_at"] > 10**12
    assert task["updated_at"] == task["created_at"]

    status, doc, reply = await api.get(task["task_id"])
    assert status == 200
    assert doc["code"] == 0
    assert reply.headers["X-Request-Id"] == doc["request_id"]
    done = doc["data"]
    assert done["task_status"] == "succeed"
    assert [image["index"] for image in done["task_result"]["images"]] == [0, 1]
    assert done["task_result"]["images"][1]["url"] == (
        f"{server.base_url}/fake-images/{task['task_id']}/1.png"
    )
    assert server.create_count == 1
    assert server.get_count == 1
    assert server.tasks[task["task_id"]].external_task_id == "job-1"


async def test_get_resolves_external_task_id(api: Api, server: FakeKlingServer) -> None:
    task = await api.task(external_task_id="mine-7")
    status, doc, _ = await api.get("mine-7")
    assert status == 200
    assert doc["data"]["task_id"] == task["task_id"]
    assert server.find_task("mine-7") is server.tasks[task["task_id"]]


async def test_requests_are_recorded_with_the_key_redacted(
    api: Api, server: FakeKlingServer
) -> None:
    task = await api.task()
    await api.get(task["task_id"])
    post, get = server.requests
    assert (post.method, post.route, post.path) == ("POST", "create", CREATE)
    assert post.json == make_body()
    assert post.headers["Authorization"] == "<redacted>"
    assert post.authorization_present
    assert post.bearer_ok
    assert (get.method, get.route, get.json) == ("GET", "get", None)
    assert KEY not in repr(server.requests)


async def test_task_progresses_over_its_duration(session: aiohttp.ClientSession) -> None:
    draws: list[float] = []

    def duration() -> float:
        draws.append(1.0)
        return 1.0

    async with FakeKlingServer(task_duration=duration) as server:
        api = Api(session, server)
        task = await api.task()
        _, doc, _ = await api.get(task["task_id"])
        assert doc["data"]["task_status"] == "submitted"
        fake = server.tasks[task["task_id"]]
        await wait_until(lambda: fake.status == "processing")  # after 10 % of 1 s
        _, doc, _ = await api.get(task["task_id"])
        assert doc["data"]["task_status"] == "processing"
        assert doc["data"]["updated_at"] - doc["data"]["created_at"] == 100
        assert server.slots_in_use == 1
    assert draws == [1.0]  # drawn once per task, not per look


async def test_manual_progress(api: Api, server: FakeKlingServer) -> None:
    server.auto_progress = False
    task = await api.task(n=3)
    task_id = task["task_id"]
    _, doc, _ = await api.get(task_id)
    assert doc["data"]["task_status"] == "submitted"

    server.set_status(task_id, "processing")
    _, doc, _ = await api.get(task_id)
    assert doc["data"]["task_status"] == "processing"
    assert server.slots_in_use == 3

    server.finish(task_id, ok=False, message="boom")
    _, doc, _ = await api.get(task_id)
    assert (doc["data"]["task_status"], doc["data"]["task_status_msg"]) == ("failed", "boom")
    assert doc["data"]["task_result"] == {}
    assert server.slots_in_use == 0

    with pytest.raises(ValueError, match="already ended"):
        server.set_status(task_id, "succeed")
    with pytest.raises(ValueError, match="status must be"):
        server.set_status(task_id, "done")
    with pytest.raises(KeyError):
        server.finish("no-such-task")


async def test_fail_prompt_ends_failed_with_a_succeed_envelope(api: Api) -> None:
    task = await api.task(prompt="please FAIL this")
    status, doc, _ = await api.get(task["task_id"])
    assert status == 200
    assert (doc["code"], doc["message"]) == (0, "SUCCEED")
    assert doc["data"]["task_status"] == "failed"
    assert "content rejected" in doc["data"]["task_status_msg"]
    assert doc["data"]["task_result"] == {}


# -- validation, auth, routing ---------------------------------------------------------------

PNG_B64 = base64.b64encode(PNG_MAGIC + b"rest-of-file").decode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (["not", "an", "object"], "JSON object"),
        (make_body(subject_image_list=None), "subject_image_list"),
        (make_body(subject_image_list=[{"subject_image": URL_A}]), "subject_image_list"),
        (make_body(subject_image_list=[{"subject_image": URL_A}] * 5), "subject_image_list"),
        (make_body(subject_image_list=[{"subject_image": URL_A}, "x"]), "subject_image_list[1]"),
        (make_body(subject_image_list=[{"subject_image": URL_A}, {}]), "subject_image_list[1]"),
        (make_body(subject_image_list=[{"subject_image": ""}] * 2), "subject_image_list[0]"),
        (make_body(prompt="x" * 2501), "prompt"),
        (make_body(n=0), "n must"),
        (make_body(n=10), "n must"),
        (make_body(n="2"), "n must"),
        (make_body(n=True), "n must"),
        (make_body(aspect_ratio="5:4"), "aspect_ratio"),
        (make_body(scence_image=5), "scence_image"),
        (make_body(style_image=["x"]), "style_image"),
        (make_body(style_image="data:image/png;base64," + PNG_B64), "data: prefix"),
        (make_body(scence_image="not base64!"), "scence_image"),
        (make_body(scence_image=base64.b64encode(b"GIF89a....").decode()), "PNG or JPEG"),
        (make_body(callback_url="ftp://x"), "callback_url"),
        (make_body(external_task_id=7), "external_task_id"),
    ],
)
async def test_invalid_bodies_are_refused_with_1201(
    api: Api, server: FakeKlingServer, body: Any, field: str
) -> None:
    status, doc, reply = await api.create(body=body)
    assert status == 400
    assert doc["code"] == 1201
    assert field in doc["message"]
    assert reply.headers["X-Request-Id"] == doc["request_id"]
    assert server.create_count == 0


async def test_body_that_is_not_json_is_refused(
    session: aiohttp.ClientSession, server: FakeKlingServer
) -> None:
    async with session.post(server.base_url + CREATE, data=b"{oops", headers=AUTH) as reply:
        doc = await reply.json()
    assert (reply.status, doc["code"]) == (400, 1201)
    assert server.requests[0].json is None


async def test_plain_base64_images_are_accepted(api: Api) -> None:
    subjects = [{"subject_image": PNG_B64}, {"subject_image": URL_A}]
    task = await api.task(subject_image_list=subjects, style_image=PNG_B64)
    assert task["task_status"] == "submitted"


async def test_duplicate_external_task_id(api: Api, server: FakeKlingServer) -> None:
    await api.task(external_task_id="dup")
    status, doc, _ = await api.create(external_task_id="dup")
    assert (status, doc["code"]) == (400, 1201)
    assert doc["message"] == "external_task_id already exists"
    assert server.create_count == 1


async def test_unknown_task_route_and_method(
    api: Api, session: aiohttp.ClientSession, server: FakeKlingServer
) -> None:
    status, doc, _ = await api.get("123456")
    assert (status, doc["code"], doc["message"]) == (400, 1201, "task not found")
    async with session.get(server.base_url + "/kling/v1/videos/nope", headers=AUTH) as reply:
        assert (reply.status, (await reply.json())["code"]) == (404, 1202)
    async with session.put(server.base_url + CREATE, headers=AUTH) as reply:
        assert (reply.status, (await reply.json())["code"]) == (404, 1202)
    async with session.get(server.base_url + "/fake-images/123/0.png") as reply:
        assert (reply.status, (await reply.json())["code"]) == (404, 1203)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, 1001),
        ({"Authorization": "Bearer "}, 1001),
        ({"Authorization": "Basic c2stZmFrZQ=="}, 1002),
        ({"Authorization": "Bearer sk-wrong"}, 1002),
    ],
)
async def test_authentication_errors(
    api: Api, server: FakeKlingServer, headers: dict[str, str], code: int
) -> None:
    status, doc, _ = await api.create(headers=headers)
    assert (status, doc["code"]) == (401, code)
    status, doc, _ = await api.get("anything", headers=headers)
    assert (status, doc["code"]) == (401, code)
    assert server.create_count == 0
    assert not any(r.bearer_ok for r in server.requests)


async def test_without_api_key_any_bearer_token_is_accepted(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeKlingServer() as server:
        api = Api(session, server)
        status, _, _ = await api.create(headers={"Authorization": "Bearer whatever"})
        assert status == 200
        status, doc, _ = await api.create(headers={})
        assert (status, doc["code"]) == (401, 1001)


# -- faults ----------------------------------------------------------------------------------


async def test_status_fault_with_retry_after(api: Api, server: FakeKlingServer) -> None:
    date = email.utils.formatdate(usegmt=True)
    server.add_fault(Fault.status(429, 1302, retry_after=7), route="create")
    server.add_fault(Fault.status(503, 5001, message="down", retry_after=date), route="create")

    status, doc, reply = await api.create()
    assert (status, doc["code"], reply.headers["Retry-After"]) == (429, 1302, "7")
    assert reply.headers["X-Request-Id"] == doc["request_id"]
    status, doc, reply = await api.create()
    assert (status, doc["code"], doc["message"]) == (503, 5001, "down")
    assert reply.headers["Retry-After"] == date
    status, _, reply = await api.create()
    assert status == 200
    assert "Retry-After" not in reply.headers
    assert server.create_count == 1
    assert server.pending_faults == 0


async def test_html_concatenated_and_generic_429_faults(
    session: aiohttp.ClientSession, server: FakeKlingServer
) -> None:
    server.add_fault(Fault.html(), route="get")
    server.add_fault(Fault.concatenated(), route="get")
    server.add_fault(Fault.generic_429(), route="get")
    url = f"{server.base_url}{CREATE}/x"

    async with session.get(url, headers=AUTH) as reply:
        text = await reply.text()
    assert reply.status == 502
    assert reply.content_type == "text/html"
    assert "<h1>502 Bad Gateway</h1>" in text

    async with session.get(url, headers=AUTH) as reply:
        text = await reply.text()
    assert reply.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    first, end = json.JSONDecoder().raw_decode(text)
    second, _ = json.JSONDecoder().raw_decode(text, end)
    assert first["code"] == second["code"] == 0

    async with session.get(url, headers=AUTH) as reply:
        assert (reply.status, await reply.json()) == (429, {"error": "too many requests"})


async def test_accept_then_drop_creates_the_task(api: Api, server: FakeKlingServer) -> None:
    server.auto_progress = False
    server.add_fault(Fault.accept_then_drop(), route="create")
    with pytest.raises(DISCONNECTED):
        await api.create(external_task_id="lost-reply", n=2)
    assert server.create_count == 1
    assert server.slots_in_use == 2
    status, doc, _ = await api.get("lost-reply")
    assert status == 200
    assert doc["data"]["task_status"] == "submitted"


async def test_drop_creates_nothing(api: Api, server: FakeKlingServer) -> None:
    server.add_fault(Fault.drop(), route="create")
    with pytest.raises(DISCONNECTED):
        await api.create(external_task_id="never")
    assert server.create_count == 0
    assert len(server.requests) == 1  # it was received, though
    status, _, _ = await api.get("never")
    assert status == 400


async def test_delay_still_handles_after_the_client_gave_up(
    api: Api, session: aiohttp.ClientSession, server: FakeKlingServer
) -> None:
    server.add_fault(Fault.delay(0.2), route="create")
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            server.base_url + CREATE,
            json=make_body(),
            headers=AUTH,
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    assert server.create_count == 0
    await wait_until(lambda: server.create_count == 1)


async def test_stop_cuts_a_delay_short(session: aiohttp.ClientSession) -> None:
    server = FakeKlingServer()
    await server.start()
    server.add_fault(Fault.delay(30), route="get")
    pending = asyncio.ensure_future(Api(session, server).get("x", headers={}))
    await wait_until(lambda: server.get_count == 1)
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.5
    with pytest.raises(DISCONNECTED):
        await pending


async def test_faults_are_fifo_per_route(api: Api, server: FakeKlingServer) -> None:
    server.add_fault(Fault.status(500, 5000), route="get", times=2)
    server.add_fault(Fault.status(503, 5001), route="any")
    server.add_fault(Fault.status(429, 1303), route="create")
    assert server.pending_faults == 4

    assert (await api.create())[1]["code"] == 5001  # the first fault matching "create"
    assert (await api.get("x"))[1]["code"] == 5000
    assert (await api.create())[1]["code"] == 1303
    assert (await api.get("x"))[1]["code"] == 5000
    assert (await api.get("x"))[1]["code"] == 1201  # faults used up: normal handling
    assert server.pending_faults == 0

    server.add_fault(Fault.drop(), route="image")
    server.clear_faults()
    assert server.pending_faults == 0
    with pytest.raises(ValueError, match="route"):
        server.add_fault(Fault.drop(), route="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="times"):
        server.add_fault(Fault.drop(), times=0)


# -- slots -----------------------------------------------------------------------------------


async def test_slot_limit_returns_1303_and_frees_slots_at_the_end(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeKlingServer(slot_limit=3, auto_progress=False) as server:
        api = Api(session, server)
        first = await api.task(n=2)
        status, doc, _ = await api.create(n=2)
        assert (status, doc["code"]) == (429, 1303)
        assert doc["message"] == "parallel task over resource pack limit"
        assert (server.count_1303, server.slots_in_use) == (1, 2)

        server.finish(first["task_id"])
        assert server.slots_in_use == 0
        await api.task(n=2)
        await api.task(n=1)
        assert (server.slots_in_use, server.peak_slots_in_use) == (3, 3)
        assert (await api.create(n=1))[0] == 429
        assert server.count_1303 == 2


async def test_finished_tasks_free_their_slots_without_being_looked_at(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeKlingServer(slot_limit=2, task_duration=0) as server:
        api = Api(session, server)
        for _ in range(5):
            await api.task(n=2)  # each one ended before the next create arrived
        assert server.count_1303 == 0
        assert server.peak_slots_in_use == 2
        assert server.slots_in_use == 0
        assert server.get_count == 0

    async with FakeKlingServer(slot_limit=2, task_duration=30) as server:
        api = Api(session, server)
        await api.task(n=2)
        assert (await api.create(n=1))[0] == 429


# -- images ----------------------------------------------------------------------------------


def png_info(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, first pixel) of an 8-bit RGB PNG."""
    assert data.startswith(PNG_MAGIC)
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour_type) == (8, 2)
    offset, idat = 8, b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunk = data[offset + 8 : offset + 8 + length]
        crc = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0]
        assert zlib.crc32(kind + chunk) == crc
        if kind == b"IDAT":
            idat += chunk
        offset += 12 + length
    pixels = zlib.decompress(idat)
    assert len(pixels) == height * (1 + 3 * width)
    return width, height, pixels[1:4]


async def test_generated_images_are_served(session: aiohttp.ClientSession) -> None:
    async with FakeKlingServer(image_size=(300, 200)) as server:
        api = Api(session, server)
        task = await api.task(n=2)
        _, doc, _ = await api.get(task["task_id"])
        pixels = []
        for image in doc["data"]["task_result"]["images"]:
            async with session.get(image["url"]) as reply:
                assert reply.status == 200
                assert reply.content_type == "image/png"
                width, height, pixel = png_info(await reply.read())
            assert (width, height) == (300, 200)
            pixels.append(pixel)
        assert pixels[0] != pixels[1]  # colour derived from task id and index
        assert len(server.image_requests) == 2
        assert not any(r.authorization_present for r in server.image_requests)
        async with session.get(doc["data"]["task_result"]["images"][0]["url"]) as reply:
            assert png_info(await reply.read())[2] == pixels[0]  # stable


async def test_image_host_gives_images_another_origin(session: aiohttp.ClientSession) -> None:
    async with FakeKlingServer(image_host="localhost") as server:
        api = Api(session, server)
        task = await api.task()
        _, doc, _ = await api.get(task["task_id"])
        (image,) = doc["data"]["task_result"]["images"]
        port = server.base_url.rsplit(":", 1)[1]
        assert image["url"].startswith(f"http://localhost:{port}/fake-images/")
        assert server.image_base_url == f"http://localhost:{port}"
        served = image["url"].replace("localhost", "127.0.0.1")
        async with session.get(served, headers=AUTH) as reply:
            assert reply.status == 200
        assert server.image_requests[0].authorization_present


async def test_image_faults_apply(session: aiohttp.ClientSession, server: FakeKlingServer) -> None:
    api = Api(session, server)
    task = await api.task()
    _, doc, _ = await api.get(task["task_id"])
    server.add_fault(Fault.status(500, 5000), route="any")
    async with session.get(doc["data"]["task_result"]["images"][0]["url"]) as reply:
        assert reply.status == 500


# -- quirks ----------------------------------------------------------------------------------


def unwrap(doc: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(envelope shape, Kling task object) of a quirky reply."""
    if doc.get("code") == "success" and "request_id" not in doc:
        return "router", doc["data"]["data"]
    if "code" not in doc:
        return "no-code", doc["data"]
    if doc["code"] == "success":
        return "code-string", doc["data"]
    assert doc["code"] == 0
    return "plain", doc["data"]


async def test_quirks_mode_uses_the_messy_shapes(session: aiohttp.ClientSession) -> None:
    async with FakeKlingServer(quirks=True, seed=3) as server:
        api = Api(session, server)
        _, created, _ = await api.create(n=2, external_task_id="q-1")
        task_id = unwrap(created)[1]["task_id"]
        shapes, words, stamps, items = set(), set(), set(), []
        for _ in range(12):
            status, doc, _ = await api.get(task_id)
            assert status == 200
            shape, task = unwrap(doc)
            shapes.add(shape)
            assert task["task_id"] == task_id
            assert task["task_info"]["external_task_id"] == "q-1"
            words.add(task["task_status"])
            stamps.add(task["created_at"] < 10**11)
            images = task["task_result"]["images"]
            assert len(images) == 2
            assert all(image["url"].endswith(".png") for image in images)
            items.extend(images)
            assert "task_type" in task  # unknown extra field
        assert shapes == {"router", "no-code", "code-string", "plain"}
        assert words <= {"succeed", "SUCCESS", "succeeded", "completed"}
        assert len(words) > 1
        assert stamps == {True, False}
        assert any("index" not in item and item["id"] == "" for item in items)
        assert any("watermark_url" in item for item in items)

        _, created, _ = await api.create(prompt="FAIL")
        failed = unwrap(created)[1]["task_id"]
        nothing_seen = set()
        for _ in range(8):
            _, doc, _ = await api.get(failed)
            task = unwrap(doc)[1]
            assert task["task_status"] in {"failed", "FAILURE"}
            assert task["task_status_msg"]
            assert doc.get("message", "SUCCEED") in {"SUCCEED", ""}
            nothing_seen.add(repr(task.get("task_info", "<missing>")))
        assert len(nothing_seen) > 1  # null, missing, {} ...


# -- callbacks -------------------------------------------------------------------------------


async def test_callbacks_follow_each_status_change(
    api: Api, server: FakeKlingServer, receiver: Receiver
) -> None:
    server.auto_progress = False
    task = await api.task(callback_url=receiver.url, external_task_id="cb-1")
    server.set_status(task["task_id"], "processing")
    server.finish(task["task_id"])
    await wait_until(lambda: len(receiver.bodies) == 3)

    assert receiver.statuses() == ["submitted", "processing", "succeed"]
    for body in receiver.bodies:  # the bare task object, no envelope
        assert "code" not in body
        assert body["task_id"] == task["task_id"]
        assert body["task_info"] == {"external_task_id": "cb-1"}
    assert len(receiver.bodies[-1]["task_result"]["images"]) == 1
    assert [d.status for d in server.callbacks_sent] == ["submitted", "processing", "succeed"]
    assert all(d.http_status == 200 and d.error is None for d in server.callbacks_sent)
    assert server.callback_failures == 0


async def test_callbacks_of_a_timed_task(
    session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    async with FakeKlingServer(task_duration=0.05) as server:
        await Api(session, server).task(callback_url=receiver.url, prompt="FAIL")
        await wait_until(lambda: len(receiver.bodies) == 3)
    assert receiver.statuses() == ["submitted", "processing", "failed"]
    assert receiver.bodies[-1]["task_status_msg"]


async def test_duplicate_and_delayed_callbacks(
    api: Api, server: FakeKlingServer, receiver: Receiver
) -> None:
    server.callback_duplicate = True
    server.callback_delay = 0.02
    started = time.time()
    await api.task(callback_url=receiver.url)
    await wait_until(lambda: len(receiver.bodies) == 6)
    statuses = receiver.statuses()
    assert statuses == ["submitted"] * 2 + ["processing"] * 2 + ["succeed"] * 2
    assert server.callbacks_sent[0].sent_at - started >= 0.02


async def test_out_of_order_callbacks_end_first(
    api: Api, server: FakeKlingServer, receiver: Receiver
) -> None:
    server.auto_progress = False
    server.callback_out_of_order = True
    task = await api.task(callback_url=receiver.url)
    server.set_status(task["task_id"], "processing")
    assert server.callbacks_pending == 2
    assert not server.callbacks_sent
    server.finish(task["task_id"], ok=False)
    await wait_until(lambda: len(receiver.bodies) == 3)
    assert receiver.statuses() == ["failed", "processing", "submitted"]


async def test_dropped_callbacks(session: aiohttp.ClientSession, receiver: Receiver) -> None:
    async with FakeKlingServer(callback_drop=True, auto_progress=False) as server:
        api = Api(session, server)
        task = await api.task(callback_url=receiver.url)
        server.finish(task["task_id"])
        assert server.callbacks_dropped == 2
        assert server.callbacks_pending == 0
        assert server.callbacks_sent == []

    async with FakeKlingServer(callback_drop=0.5, seed=11) as server:
        api = Api(session, server)
        for _ in range(10):
            await api.task(callback_url=receiver.url)
        # Every one of the 30 status changes is either attempted or dropped.
        await wait_until(lambda: len(server.callbacks_sent) + server.callbacks_dropped == 30)
        await wait_until(lambda: len(receiver.bodies) == len(server.callbacks_sent))
        assert 0 < server.callbacks_dropped < 30
        assert server.callbacks_pending == 0


async def test_callback_failures_are_counted_not_raised(
    api: Api, server: FakeKlingServer, receiver: Receiver
) -> None:
    async with FakeKlingServer() as closed:
        nowhere = closed.base_url + "/hook"
    await api.task(callback_url=nowhere)
    receiver.reply_status = 500
    await api.task(callback_url=receiver.url)
    await wait_until(lambda: len(server.callbacks_sent) == 6)
    assert server.callback_failures == 6
    refused = [d for d in server.callbacks_sent if d.url == nowhere]
    assert all(d.http_status is None and d.error for d in refused)
    assert {d.http_status for d in server.callbacks_sent if d.url == receiver.url} == {500}
    assert (await api.create())[0] == 200  # still serving


# -- lifecycle and command line --------------------------------------------------------------


async def test_lifecycle(session: aiohttp.ClientSession) -> None:
    server = FakeKlingServer()
    with pytest.raises(RuntimeError, match="not started"):
        server.base_url  # noqa: B018
    await server.start()
    with pytest.raises(RuntimeError, match="once"):
        await server.start()
    assert server.base_url.startswith("http://127.0.0.1:")
    assert "running" in repr(server)
    await server.stop()
    await server.stop()  # idempotent
    with pytest.raises(aiohttp.ClientConnectionError):
        await Api(session, server).get("x")


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGTERM")
async def test_command_line_serves_until_terminated(session: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kling_async.testing", "--port", "0", "--slot-limit", "1",
        "--api-key", KEY, stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        async with session.post(base_url + CREATE, json=make_body(), headers=AUTH) as reply:
            assert reply.status == 200
        async with session.post(base_url + CREATE, json=make_body(), headers=AUTH) as reply:
            assert reply.status == 200  # duration 0: the first task already ended
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
