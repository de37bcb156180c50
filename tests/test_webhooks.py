"""Webhooks: the callback receiver, ``parse_callback`` and push-first waiting (DESIGN §6)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

import kling_async as ka
from kling_async.testing import FakeKlingServer, Fault
from kling_async.webhooks import CallbackReceiver, parse_callback

SECRET = b"webhook-secret-0123456789"
PATH = "/kling/callback"
EXT = "job-1"
SUBMITTED, PROCESSING, SUCCEED = (
    ka.TaskStatus.SUBMITTED,
    ka.TaskStatus.PROCESSING,
    ka.TaskStatus.SUCCEED,
)


def body(
    status: str = "processing",
    *,
    task_id: str = "8000000001",
    updated_at: int = 1_700_000_001_000,
    external_task_id: str | None = EXT,
    images: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status,
        "task_status_msg": "",
        "created_at": 1_700_000_000_000,
        "updated_at": updated_at,
    }
    if external_task_id is not None:
        data["task_info"] = {"external_task_id": external_task_id}
    if images is not None:
        data["task_result"] = {"images": images}
    return data


def statuses(tasks: list[ka.Task]) -> list[ka.TaskStatus]:
    return [task.status for task in tasks]


def token(external_task_id: str, secret: bytes = SECRET) -> str:
    return hmac.new(secret, external_task_id.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    hook = CallbackReceiver(public_url=f"http://127.0.0.1:0{PATH}", secret=SECRET)
    await hook.start("127.0.0.1", 0)
    yield hook
    await hook.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def pushed(receiver: CallbackReceiver) -> list[ka.Task]:
    seen: list[ka.Task] = []
    receiver.subscribe(seen.append)
    return seen


async def post(
    http: aiohttp.ClientSession, url: str, payload: Any, **kwargs: Any
) -> tuple[int, str]:
    data = payload if isinstance(payload, (bytes, str, AsyncIterator)) else json.dumps(payload)
    async with http.post(url, data=data, **kwargs) as reply:
        return reply.status, await reply.text()


# -- parse_callback ---------------------------------------------------------------------------


def test_parse_callback_reads_bytes_text_and_mappings_alike() -> None:
    data = body("succeed", images=[{"index": 0, "url": "https://img.example.com/0.png"}])

    tasks = [
        parse_callback(json.dumps(data).encode()),
        parse_callback(json.dumps(data)),
        parse_callback(data),
    ]

    assert tasks[0] == tasks[1] == tasks[2]
    task = tasks[0]
    assert task.task_id == "8000000001"
    assert task.status is ka.TaskStatus.SUCCEED
    assert task.external_task_id == EXT
    assert [image.url for image in task.images] == ["https://img.example.com/0.png"]
    assert task.request_id is None


def test_parse_callback_tolerates_real_world_quirks() -> None:
    quirky = {
        "task_id": 7_000_000_000_000_000_001,
        "task_status": "SUCCESS",
        "task_status_msg": None,
        "task_info": {},
        "updated_at": 1_700_000_001,  # seconds
        "task_result": {"images": [{"id": "", "url": "u0", "watermark_url": "w"}]},
        "extra": {"nested": True},
    }

    task = parse_callback(quirky)

    assert task.task_id == "7000000000000000001"
    assert task.status is ka.TaskStatus.SUCCEED
    assert task.external_task_id is None
    assert task.updated_at is not None
    assert task.updated_at.year == 2023
    assert task.images[0].index == 0


def test_parse_callback_unwraps_a_router_envelope() -> None:
    wrapped = {"code": 0, "message": "SUCCEED", "request_id": "r-1", "data": body("failed")}

    task = parse_callback(wrapped)

    assert task.status is ka.TaskStatus.FAILED
    assert task.request_id is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"<html>502 Bad Gateway</html>",
        b'{"task_id": "1", "task_status": "succeed"',
        b'{"task_id": "1"}{"task_id": "2"}',
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"task_status": "succeed"}',
        b'{"task_id": "1", "task_status": ""}',
        b'{"task_id": "1", "task_status": "succeed", "updated_at": "yesterday"}',
    ],
    ids=lambda raw: raw[:20].decode("utf-8", "replace"),
)
def test_parse_callback_rejects_malformed_bodies_with_a_typed_error(raw: bytes) -> None:
    with pytest.raises(ka.InvalidCallbackError) as caught:
        parse_callback(raw)

    assert isinstance(caught.value, ka.KlingError)
    assert isinstance(caught.value, ValueError)


# -- configuration and tokens -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"public_url": "ftp://example.com/cb"},
        {"public_url": "/kling/callback"},
        {"public_url": "https://example.com/cb#frag"},
        {"secret": b""},
        {"secret": ""},
        {"max_body": 0},
        {"fallback_factor": 0.5},
    ],
)
def test_bad_configuration_is_refused(options: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"public_url": "https://svc.example.com/cb", "secret": SECRET}
    settings.update(options)

    with pytest.raises(ka.ConfigurationError):
        CallbackReceiver(**settings)


def test_callback_url_carries_the_external_task_id_and_its_hmac() -> None:
    hook = CallbackReceiver(public_url="https://svc.example.com/kling/cb?tenant=7", secret=SECRET)

    url = URL(hook.callback_url_for("job 1/ä&x=y"))

    assert (url.scheme, url.host, url.path) == ("https", "svc.example.com", "/kling/cb")
    assert url.query["tenant"] == "7"
    assert url.query["external_task_id"] == "job 1/ä&x=y"
    assert url.query["token"] == token("job 1/ä&x=y")
    assert hook.public_url == "https://svc.example.com/kling/cb?tenant=7"
    assert hook.fallback_factor == 5.0
    assert hook.max_body == 1024 * 1024


def test_a_str_secret_is_its_utf8_bytes_and_never_shown() -> None:
    hook = CallbackReceiver(public_url="https://svc.example.com/cb", secret="pässword")

    assert URL(hook.callback_url_for("a")).query["token"] == token("a", "pässword".encode())
    assert "pässword" not in repr(hook)
    with pytest.raises(ka.RequestValidationError):
        hook.callback_url_for("")


# -- the HTTP handler -------------------------------------------------------------------------


async def test_an_authentic_callback_is_accepted_and_delivered(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    status, _ = await post(http, receiver.callback_url_for(EXT), body("processing"))

    assert status == 200
    (task,) = pushed
    assert task.status is ka.TaskStatus.PROCESSING
    assert task.external_task_id == EXT
    assert task.request_id is None
    assert receiver.latest("8000000001") == task
    assert receiver.port is not None
    assert URL(receiver.public_url).port == receiver.port


async def test_a_callback_without_task_info_is_matched_through_the_url(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    ext = "odd id/ä?&="
    status, _ = await post(http, receiver.callback_url_for(ext), body(external_task_id=None))

    assert status == 200
    assert pushed[0].external_task_id == ext


def forged_urls(receiver: CallbackReceiver) -> dict[str, str]:
    base = URL(receiver.public_url)
    good = token(EXT)
    return {
        "no query": str(base),
        "no token": str(base.with_query(external_task_id=EXT)),
        "no task id": str(base.with_query(token=good)),
        "empty token": str(base.with_query(external_task_id=EXT, token="")),
        "wrong token": str(base.with_query(external_task_id=EXT, token="0" * 64)),
        "other secret": str(base.with_query(external_task_id=EXT, token=token(EXT, b"guess"))),
        "other task's token": str(base.with_query(external_task_id=EXT, token=token("job-2"))),
        "upper-case token": str(base.with_query(external_task_id=EXT, token=good.upper())),
        "truncated token": str(base.with_query(external_task_id=EXT, token=good[:-1])),
        "non-ascii token": str(base.with_query(external_task_id=EXT, token="é" * 64)),
        "two tokens": str(
            base.with_query([("external_task_id", EXT), ("token", "x"), ("token", good)])
        ),
        "two task ids": str(
            base.with_query([("external_task_id", "x"), ("external_task_id", EXT), ("token", good)])
        ),
    }


async def test_forged_tokens_are_refused_and_change_nothing(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    for name, url in forged_urls(receiver).items():
        status, _ = await post(http, url, body("succeed"))
        assert status == 403, name

    assert pushed == []
    assert receiver.latest("8000000001") is None
    status, _ = await post(http, receiver.callback_url_for(EXT), body("processing"))
    assert status == 200


async def test_a_body_about_another_task_is_refused(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    url = receiver.callback_url_for("job-mine")

    status, _ = await post(http, url, body("succeed", external_task_id="job-theirs"))

    assert status == 403
    assert pushed == []


async def test_bodies_over_the_cap_are_refused_with_413(http: aiohttp.ClientSession) -> None:
    hook = CallbackReceiver(public_url=f"http://127.0.0.1:0{PATH}", secret=SECRET, max_body=512)
    seen: list[ka.Task] = []
    hook.subscribe(seen.append)
    await hook.start("127.0.0.1", 0)
    try:
        url = hook.callback_url_for(EXT)
        exact = json.dumps(body()).encode()
        exact += b" " * (512 - len(exact))

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield exact

        assert (await post(http, url, exact + b" "))[0] == 413
        assert (await post(http, url, chunked()))[0] == 413  # no Content-Length to trust
        assert seen == []
        assert (await post(http, url, exact))[0] == 200
        assert len(seen) == 1
    finally:
        await hook.stop()


async def test_the_cap_holds_when_mounted_in_an_app_that_allows_more(
    http: aiohttp.ClientSession,
) -> None:
    # Mounted behind a proxy: the public URL is not the local address.
    hook = CallbackReceiver(
        public_url=f"https://svc.example.com{PATH}", secret=SECRET, max_body=1024
    )
    seen: list[ka.Task] = []
    hook.subscribe(seen.append)
    app = web.Application(client_max_size=100 * 1024 * 1024)
    app.router.add_post(PATH, hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        query = URL(hook.callback_url_for(EXT)).query_string
        local = f"http://127.0.0.1:{port}{PATH}?{query}"
        big = body(images=[{"index": 0, "url": "https://x/" + "a" * 5000}])

        assert (await post(http, local, big))[0] == 413
        assert (await post(http, local, body()))[0] == 200
        assert [task.status for task in seen] == [ka.TaskStatus.PROCESSING]
    finally:
        await runner.cleanup()


async def test_malformed_bodies_get_400_and_change_nothing(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    url = receiver.callback_url_for(EXT)
    assert (await post(http, url, body("processing")))[0] == 200

    for raw in [b"", b"not json", b'{"task_id": ', b"[" * 50_000, b"\xff\xfe", b'{"x": 1}']:
        status, _ = await post(http, url, raw)
        assert status == 400, raw[:10]

    assert [task.status for task in pushed] == [ka.TaskStatus.PROCESSING]
    assert receiver.latest("8000000001") == pushed[0]
    assert (await post(http, url, body("succeed", updated_at=1_700_000_009_000)))[0] == 200


async def test_an_upload_cut_short_changes_nothing(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    url = URL(receiver.callback_url_for(EXT))
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
    head = f"POST {url.raw_path_qs} HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    writer.write(head.encode() + json.dumps(body("succeed")).encode()[:40])
    await writer.drain()
    writer.write_eof()
    assert await reader.read() == b""  # the server hung up without answering
    writer.close()
    await writer.wait_closed()

    assert (await post(http, str(url), body("processing")))[0] == 200
    assert statuses(pushed) == [PROCESSING]


async def test_only_post_on_the_public_path_is_served(
    receiver: CallbackReceiver, http: aiohttp.ClientSession
) -> None:
    url = URL(receiver.callback_url_for(EXT))

    async with http.get(url) as reply:
        assert reply.status == 405
    assert (await post(http, str(url.with_path("/elsewhere")), body()))[0] == 404


async def test_duplicates_and_stale_states_are_not_delivered(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    url = receiver.callback_url_for(EXT)
    deliveries = [
        body("processing", updated_at=2_000),
        body("processing", updated_at=2_000),  # duplicate
        body("submitted", updated_at=1_000),  # late, older
        body("succeed", updated_at=3_000, images=[{"index": 0, "url": "u"}]),
        body("processing", updated_at=4_000),  # after a terminal state
        body("failed", updated_at=5_000),  # another terminal state
        body("succeed", updated_at=3_000, images=[{"index": 0, "url": "u"}]),  # duplicate
    ]

    for delivery in deliveries:
        assert (await post(http, url, delivery))[0] == 200

    assert [task.status for task in pushed] == [ka.TaskStatus.PROCESSING, ka.TaskStatus.SUCCEED]
    latest = receiver.latest("8000000001")
    assert latest is not None
    assert latest.status is ka.TaskStatus.SUCCEED


async def test_states_stamped_alike_do_not_step_back(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, pushed: list[ka.Task]
) -> None:
    url = receiver.callback_url_for(EXT)
    same_second = 1_700_000_001  # timestamps in whole seconds: both changes in one second
    unstamped = body("submitted", task_id="8000000002")
    del unstamped["updated_at"]

    for delivery in [
        body("processing", updated_at=same_second),
        body("submitted", updated_at=same_second),
        body("processing", task_id="8000000002", updated_at=same_second),
        unstamped,
    ]:
        assert (await post(http, url, delivery))[0] == 200

    assert statuses(pushed) == [PROCESSING, PROCESSING]


async def test_a_failing_listener_neither_crashes_the_receiver_nor_starves_others(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    delivered: list[str] = []

    def broken(task: ka.Task) -> None:
        raise RuntimeError("listener bug")

    async def slow(task: ka.Task) -> None:
        await asyncio.sleep(0)
        delivered.append(task.task_id)

    receiver.subscribe(broken)
    receiver.subscribe(slow)
    caplog.set_level(logging.DEBUG)

    status, _ = await post(http, receiver.callback_url_for(EXT), body())

    assert status == 200
    assert delivered == ["8000000001"]
    assert "listener bug" in caplog.text
    receiver.unsubscribe(broken)
    receiver.unsubscribe(slow)
    receiver.unsubscribe(slow)  # not subscribed any more: no error
    assert (await post(http, receiver.callback_url_for(EXT), body(updated_at=9**12)))[0] == 200
    assert delivered == ["8000000001"]


async def test_secrets_and_tokens_never_reach_the_logs(
    receiver: CallbackReceiver, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = receiver.callback_url_for(EXT)
    await post(http, url, body())
    await post(http, url, b"junk")
    await post(http, url, body(external_task_id="other"))
    for forged in forged_urls(receiver).values():
        await post(http, forged, body())

    assert caplog.records  # rejections are logged, at debug level
    assert token(EXT) not in caplog.text
    assert SECRET.decode() not in caplog.text
    assert all(record.levelno <= logging.DEBUG for record in caplog.records)


async def test_receive_serves_other_frameworks() -> None:
    hook = CallbackReceiver(public_url="https://svc.example.com/cb", secret=SECRET, max_body=600)
    seen: list[ka.Task] = []
    hook.subscribe(seen.append)
    good = token(EXT)

    assert await hook.receive(b"{}", external_task_id=EXT, token="bad") == 403
    assert await hook.receive(b"{}", external_task_id=None, token=good) == 403
    assert await hook.receive(b" " * 601, external_task_id=EXT, token=good) == 413
    assert await hook.receive("é" * 301, external_task_id=EXT, token=good) == 413  # 602 bytes
    assert await hook.receive(b"nope", external_task_id=EXT, token=good) == 400
    assert await hook.receive(body(external_task_id="x"), external_task_id=EXT, token=good) == 403
    assert await hook.receive(json.dumps(body()), external_task_id=EXT, token=good) == 200
    assert [task.status for task in seen] == [ka.TaskStatus.PROCESSING]


async def test_the_receiver_forgets_the_oldest_tasks_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ka.webhooks, "_REMEMBERED_TASKS", 2)
    hook = CallbackReceiver(public_url="https://svc.example.com/cb", secret=SECRET)
    for number in range(3):
        ext = f"job-{number}"
        task = body(task_id=f"t-{number}", external_task_id=ext)
        assert await hook.receive(task, external_task_id=ext, token=token(ext)) == 200

    assert hook.latest("t-0") is None
    assert hook.latest("t-1") is not None
    assert hook.latest("t-2") is not None


async def test_a_port_in_use_is_reported_and_the_receiver_can_start_later(
    receiver: CallbackReceiver,
) -> None:
    other = CallbackReceiver(public_url=f"http://127.0.0.1:0{PATH}", secret=SECRET)
    assert receiver.port is not None

    with pytest.raises(OSError, match=r"(?i)in use"):
        await other.start("127.0.0.1", receiver.port)

    assert other.port is None
    await other.start("127.0.0.1", 0)
    assert other.port not in (None, receiver.port)
    await other.stop()


async def test_start_and_stop_lifecycle(http: aiohttp.ClientSession) -> None:
    hook = CallbackReceiver(public_url=f"http://127.0.0.1:0{PATH}", secret=SECRET)
    await hook.stop()  # not running: nothing to do
    await hook.start("127.0.0.1", 0)
    url = hook.callback_url_for(EXT)
    with pytest.raises(RuntimeError):
        await hook.start("127.0.0.1", 0)
    assert "serving" in repr(hook)

    await hook.stop()

    assert hook.port is None
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, url, body())


def test_the_module_is_reachable_from_the_package() -> None:
    assert ka.webhooks.CallbackReceiver is CallbackReceiver
    assert ka.webhooks.parse_callback is parse_callback
    assert sorted(ka.webhooks.__all__) == ka.webhooks.__all__


# -- push-first waiting against FakeKlingServer -------------------------------------------------

KEY = "sk-test-webhooks"
URL_A = "https://img.example.com/a.png"
URL_B = "https://img.example.com/b.png"
#: Tasks that are not pushed poll every 10 ms; pushed ones 1000x slower (10 s), after the 5 s
#: deadline: what completes with this policy and the hook's fallback completed on a callback.
POLL = ka.PollPolicy(initial_delay=0.01, max_interval=0.01, timeout=5)
NO_WAIT_RETRY = ka.RetryPolicy(base_delay=0)


def request(**overrides: Any) -> ka.GenerationRequest:
    fields: dict[str, Any] = {"subject_images": [URL_A, URL_B], "prompt": "two cats"}
    fields.update(overrides)
    return ka.GenerationRequest(**fields)


class Mounted:
    """A receiver mounted in an aiohttp app that counts the callbacks it answered."""

    def __init__(self) -> None:
        self.receiver: CallbackReceiver
        self.answers: list[int] = []
        self.pushed: list[ka.Task] = []
        self._answered = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await self.receiver.handle(request)
        self.answers.append(response.status)
        async with self._answered:
            self._answered.notify_all()
        return response

    async def until_answered(self, count: int) -> None:
        async with self._answered:
            await asyncio.wait_for(
                self._answered.wait_for(lambda: len(self.answers) >= count), timeout=5
            )


@pytest.fixture
async def hook() -> AsyncIterator[Mounted]:
    mounted = Mounted()
    app = web.Application()
    app.router.add_post(PATH, mounted.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    mounted.receiver = CallbackReceiver(
        public_url=f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}",
        secret=SECRET,
        fallback_factor=1000,
    )
    mounted.receiver.subscribe(mounted.pushed.append)
    yield mounted
    await runner.cleanup()


def client_for(
    server: FakeKlingServer, hook: Mounted | None, poll: ka.PollPolicy = POLL
) -> ka.KlingClient:
    return ka.KlingClient(
        KEY,
        base_url=server.base_url,
        poll=poll,
        retry=NO_WAIT_RETRY,
        callbacks=hook.receiver if hook else None,
    )


def delivered(server: FakeKlingServer) -> list[str]:
    return [delivery.status for delivery in server.callbacks_sent]


async def test_generate_completes_on_the_callback_without_polling(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.02) as server,
        client_for(server, hook) as client,
    ):
        done = await client.generate(request(n=2, external_task_id="job-42"))

        assert done.status is SUCCEED
        assert [image.index for image in done.images] == [0, 1]
        assert server.get_count == 0
        (create,) = [r for r in server.requests if r.route == "create"]
        assert create.json["callback_url"] == hook.receiver.callback_url_for("job-42")
        assert client.slots_in_use == 0


async def test_watch_yields_each_pushed_state_once_in_order(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, auto_progress=False) as server,
        client_for(server, hook) as client,
    ):
        task = await client.submit(request())
        seen = []
        async for update in client.watch(task):
            seen.append(update)
            if update.status is SUBMITTED:
                server.set_status(task.task_id, "processing")
            elif update.status is PROCESSING:
                server.finish(task.task_id)

    assert statuses(seen) == [SUBMITTED, PROCESSING, SUCCEED]
    assert seen[-1].images
    assert seen[-1].request_id is None  # pushed, not polled
    assert server.get_count == 0


async def test_duplicate_callbacks_change_nothing(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.02, callback_duplicate=True) as server,
        client_for(server, hook) as client,
    ):
        seen = [update async for update in client.watch(await client.submit(request()))]
        await hook.until_answered(6)

    twice = ["submitted", "processing", "succeed"]
    assert delivered(server) == [status for status in twice for _ in range(2)]
    assert hook.answers == [200] * 6
    assert statuses(seen) == [SUBMITTED, PROCESSING, SUCCEED]
    assert statuses(hook.pushed) == [SUBMITTED, PROCESSING, SUCCEED]  # each passed on once
    assert server.get_count == 0


async def test_out_of_order_callbacks_never_move_a_task_backwards(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.02, callback_out_of_order=True) as server,
        client_for(server, hook) as client,
    ):
        seen = [update async for update in client.watch(await client.submit(request()))]
        await hook.until_answered(3)

    assert delivered(server) == ["succeed", "processing", "submitted"]
    assert hook.answers == [200] * 3
    assert statuses(seen) == [SUBMITTED, SUCCEED]
    assert statuses(hook.pushed) == [SUCCEED]
    assert server.get_count == 0


async def test_delayed_callbacks_arrive_after_polling_found_the_result(hook: Mounted) -> None:
    hook.receiver.fallback_factor = 1.0
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0, callback_delay=0.2) as server,
        client_for(server, hook) as client,
    ):
        done = await client.generate(request())
        assert server.get_count >= 1  # polling found it; no callback had arrived yet
        assert hook.answers == []
        await hook.until_answered(3)

        assert done.status is SUCCEED
        assert done.request_id is not None
        assert hook.answers == [200] * 3
        assert client.slots_in_use == 0
        again = await client.wait(done.task_id)
        assert again.images == done.images


async def test_a_dropped_callback_falls_back_to_polling(hook: Mounted) -> None:
    hook.receiver.fallback_factor = 5.0
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.02, callback_drop=True) as server,
        client_for(server, hook) as client,
    ):
        done = await client.generate(request(n=2))

    assert done.status is SUCCEED
    assert len(done.images) == 2
    assert server.callbacks_dropped == 3
    assert server.callbacks_sent == []
    assert server.get_count >= 1
    assert hook.receiver.latest(done.task_id) is None


async def test_some_dropped_callbacks_cost_no_result(hook: Mounted) -> None:
    hook.receiver.fallback_factor = 5.0
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.03, callback_drop=0.5, seed=7) as server,
        client_for(server, hook) as client,
    ):
        outcomes = [o async for o in client.generate_many([request() for _ in range(20)])]

    assert all(outcome.ok for outcome in outcomes)
    assert server.callbacks_dropped > 0


async def test_generate_many_completes_on_callbacks(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, task_duration=lambda: 0.05) as server,
        client_for(server, hook) as client,
    ):
        batch = [request(prompt=f"cat {i}") for i in range(25)]
        outcomes = [o async for o in client.generate_many(batch, concurrency=25)]

    assert len(outcomes) == 25
    assert all(outcome.ok for outcome in outcomes)
    assert {outcome.request for outcome in outcomes} == set(batch)
    assert server.get_count == 0


async def test_a_request_with_its_own_callback_url_keeps_it_and_is_polled(
    hook: Mounted,
) -> None:
    own = "http://127.0.0.1:9/elsewhere"  # the user's own endpoint: not our receiver
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.02) as server,
        client_for(server, hook) as client,
    ):
        done = await client.generate(request(callback_url=own))

    assert done.status is SUCCEED
    (create,) = [r for r in server.requests if r.route == "create"]
    assert create.json["callback_url"] == own
    assert server.get_count >= 1  # polled at normal speed: the 1000x fallback would time out
    assert hook.answers == []


async def test_a_callback_that_beats_the_create_reply_is_not_lost(hook: Mounted) -> None:
    ended = asyncio.Event()
    hook.receiver.subscribe(lambda task: ended.set() if task.status.is_terminal else None)

    async def hold_create_reply(
        session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams
    ) -> None:
        if params.method == "POST":
            await asyncio.wait_for(ended.wait(), 5)  # the task ends before we hear of it

    tracing = aiohttp.TraceConfig()
    tracing.on_request_end.append(hold_create_reply)
    async with (
        aiohttp.ClientSession(trace_configs=[tracing]) as session,
        FakeKlingServer(api_key=KEY, task_duration=0.01) as server,
        ka.KlingClient(
            KEY,
            base_url=server.base_url,
            session=session,
            poll=POLL,
            callbacks=hook.receiver,
        ) as client,
    ):
        task = await client.submit(request())
        assert task.status is SUBMITTED  # the create reply is older than the pushes
        assert client.slots_in_use == 0  # the pushed end was picked up at once
        done = await client.wait(task)

    assert done.status is SUCCEED
    assert server.get_count == 0


async def test_a_task_that_ended_before_the_wait_began_returns_at_once(hook: Mounted) -> None:
    ended = asyncio.Event()
    hook.receiver.subscribe(lambda task: ended.set() if task.status.is_terminal else None)
    async with (
        FakeKlingServer(api_key=KEY, task_duration=0.01) as server,
        client_for(server, hook) as client,
    ):
        task = await client.submit(request())
        await asyncio.wait_for(ended.wait(), 5)
        assert client.slots_in_use == 0

        done = await client.wait(task)

    assert done.status is SUCCEED
    assert server.get_count == 0


async def test_a_trimmed_success_callback_is_confirmed_by_one_get(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, auto_progress=False, callback_drop=True) as server,
        client_for(server, hook) as client,
    ):
        task = await client.submit(request(external_task_id="job-trim"))
        waiting = asyncio.ensure_future(client.wait(task))
        server.finish(task.task_id)
        trimmed = body("succeed", task_id=task.task_id, external_task_id=None, updated_at=9**12)
        async with aiohttp.ClientSession() as http:
            assert (await post(http, hook.receiver.callback_url_for("job-trim"), trimmed))[0] == 200
        done = await waiting

    assert done.status is SUCCEED
    assert len(done.images) == 1
    assert done.request_id is not None  # the confirming GET's
    assert server.get_count == 1


async def test_a_trimmed_success_stands_when_it_cannot_be_confirmed(hook: Mounted) -> None:
    async with (
        FakeKlingServer(api_key=KEY, auto_progress=False, callback_drop=True) as server,
        client_for(server, hook) as client,
    ):
        task = await client.submit(request(external_task_id="job-trim"))
        waiting = asyncio.ensure_future(client.wait(task))
        server.add_fault(Fault.status(500, 5000), route="get", times=10)
        trimmed = body("succeed", task_id=task.task_id, external_task_id=None, updated_at=9**12)
        async with aiohttp.ClientSession() as http:
            assert (await post(http, hook.receiver.callback_url_for("job-trim"), trimmed))[0] == 200
        done = await waiting

    assert done.status is SUCCEED
    assert done.images == ()
    assert done.request_id is None


async def test_forged_states_never_reach_a_wait(hook: Mounted) -> None:
    hook.receiver.fallback_factor = 5.0
    async with (
        FakeKlingServer(api_key=KEY, auto_progress=False, callback_drop=True) as server,
        client_for(server, hook) as client,
        aiohttp.ClientSession() as http,
    ):
        task = await client.submit(request(external_task_id="job-real"))
        updates = client.watch(task)
        assert (await updates.__anext__()).status is SUBMITTED
        forged = body(
            "succeed",
            task_id=task.task_id,
            external_task_id=None,
            updated_at=9**12,
            images=[{"index": 0, "url": "https://evil.example.com/x.png"}],
        )
        wrong_token = str(
            URL(hook.receiver.public_url).with_query(external_task_id="job-real", token="f" * 64)
        )
        assert (await post(http, wrong_token, forged))[0] == 403
        # A genuine token for another task, with a body naming our task: passed on by the
        # receiver (it has never seen our task), refused by the client's record.
        assert (await post(http, hook.receiver.callback_url_for("job-other"), forged))[0] == 200
        server.finish(task.task_id)
        rest = [update async for update in updates]

    assert statuses(rest) == [SUCCEED]
    assert rest[0].external_task_id == "job-real"
    assert "evil" not in rest[0].images[0].url
    assert server.get_count >= 1


async def test_a_task_keeps_the_token_it_was_first_seen_with(hook: Mounted) -> None:
    async with aiohttp.ClientSession() as http:
        first = body("processing", external_task_id=None)
        assert (await post(http, hook.receiver.callback_url_for("job-a"), first))[0] == 200
        later = body("succeed", external_task_id=None, updated_at=9**12)
        assert (await post(http, hook.receiver.callback_url_for("job-b"), later))[0] == 403

    assert statuses(hook.pushed) == [PROCESSING]


async def test_one_receiver_serves_several_clients_and_outlives_them(hook: Mounted) -> None:
    async with FakeKlingServer(api_key=KEY, task_duration=0.02) as server:
        async with client_for(server, hook) as first, client_for(server, hook) as second:
            done = await asyncio.gather(
                first.generate(request(prompt="one")), second.generate(request(prompt="two"))
            )
        async with client_for(server, hook) as third:
            done.append(await third.generate(request(prompt="three")))

    assert statuses(done) == [SUCCEED] * 3
    assert server.get_count == 0
    assert set(hook.answers) == {200}
