"""Integration tests of the core client against FakeKlingServer."""

from __future__ import annotations

import asyncio
import base64
import logging
import pathlib

import aiohttp
import pytest

import kling_async as ka
from kling_async.testing import FakeKlingServer, Fault
from tests._images import make_png

KEY = "sk-test-secret-0123456789"
FAST_POLL = ka.PollPolicy(initial_delay=0.005, max_interval=0.01, timeout=10)
NO_WAIT_RETRY = ka.RetryPolicy(base_delay=0)
URL_A = "https://img.example.com/a.png"
URL_B = "https://img.example.com/b.png"


def request(**overrides: object) -> ka.GenerationRequest:
    fields: dict[str, object] = {"subject_images": [URL_A, URL_B], "prompt": "two cats"}
    fields.update(overrides)
    return ka.GenerationRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def server():
    async with FakeKlingServer(api_key=KEY) as fake:
        yield fake


@pytest.fixture
async def client(server: FakeKlingServer):
    async with ka.KlingClient(
        KEY, base_url=server.base_url, poll=FAST_POLL, retry=NO_WAIT_RETRY
    ) as kling:
        yield kling


def creates(server: FakeKlingServer) -> list:
    return [r for r in server.requests if r.method == "POST"]


async def test_generate_end_to_end_downloads_pngs(
    server: FakeKlingServer, client: ka.KlingClient, tmp_path: pathlib.Path
) -> None:
    done = await client.generate(request(n=2, aspect_ratio="1:1"))

    assert done.status is ka.TaskStatus.SUCCEED
    assert [image.index for image in done.images] == [0, 1]
    paths = await client.download(done, tmp_path / "out")
    assert [p.name for p in paths] == [f"{done.task_id}-0.png", f"{done.task_id}-1.png"]
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list((tmp_path / "out").glob("*.part"))
    assert server.create_count == 1


async def test_create_body_uses_wire_names_and_plain_base64(
    server: FakeKlingServer, client: ka.KlingClient, tmp_path: pathlib.Path
) -> None:
    png = make_png(400, 300)
    path = tmp_path / "b.png"
    path.write_bytes(png)
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()

    await client.submit(
        request(
            subject_images=[png, path, data_url],
            scene_image=URL_A,
            style_image=URL_B,
            external_task_id="job-1",
        )
    )

    (create,) = creates(server)
    body = create.json
    subjects = [item["subject_image"] for item in body["subject_image_list"]]
    assert subjects == [base64.b64encode(png).decode()] * 3
    assert body["scence_image"] == URL_A
    assert body["style_image"] == URL_B
    assert body["external_task_id"] == "job-1"
    assert body["n"] == 1
    assert body["aspect_ratio"] == "16:9"
    assert body["model_name"] == "kling-v2"
    assert "callback_url" not in body
    assert "scene_image" not in body


async def test_every_submission_carries_an_external_task_id(
    server: FakeKlingServer, client: ka.KlingClient
) -> None:
    first = await client.submit(request())
    second = await client.submit(request())

    ids = [r.json["external_task_id"] for r in creates(server)]
    assert len(set(ids)) == 2
    assert [first.external_task_id, second.external_task_id] == ids


async def test_key_from_environment(
    server: FakeKlingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEERAPI_KEY", KEY)
    monkeypatch.setenv("DEERAPI_BASE_URL", server.base_url)
    async with ka.KlingClient(poll=FAST_POLL) as client:
        task = await client.submit(request())
    assert client.base_url == server.base_url
    assert task.task_id in server.tasks


def test_missing_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEERAPI_KEY", raising=False)
    with pytest.raises(ka.ConfigurationError, match="DEERAPI_KEY"):
        ka.KlingClient()


@pytest.mark.parametrize("base_url", ["ftp://x", "not a url", "http://"])
def test_bad_base_url_is_a_configuration_error(base_url: str) -> None:
    with pytest.raises(ka.ConfigurationError):
        ka.KlingClient(KEY, base_url=base_url)


async def test_wrong_key_is_an_authentication_error(server: FakeKlingServer) -> None:
    async with ka.KlingClient("sk-wrong", base_url=server.base_url, retry=NO_WAIT_RETRY) as c:
        with pytest.raises(ka.AuthenticationError) as info:
            await c.submit(request())
    assert info.value.http_status == 401
    assert info.value.code == 1002
    assert "sk-wrong" not in str(info.value)
    assert "sk-wrong" not in repr(info.value)
    assert server.create_count == 0


async def test_watch_yields_each_status_change_once(server: FakeKlingServer) -> None:
    server.auto_progress = False
    async with ka.KlingClient(KEY, base_url=server.base_url, poll=FAST_POLL) as client:
        task = await client.submit(request())
        seen = []
        async for update in client.watch(task):
            seen.append(update.status)
            if len(seen) == 1:
                server.set_status(task.task_id, "processing")
            elif update.status is ka.TaskStatus.PROCESSING:
                server.set_status(task.task_id, "succeed")
    assert seen == [ka.TaskStatus.SUBMITTED, ka.TaskStatus.PROCESSING, ka.TaskStatus.SUCCEED]


async def test_watch_by_external_task_id(server: FakeKlingServer, client: ka.KlingClient) -> None:
    task = await client.submit(request(external_task_id="mine-7"))
    updates = [update async for update in client.watch("mine-7")]
    assert updates[-1].status is ka.TaskStatus.SUCCEED
    assert updates[-1].task_id == task.task_id


async def test_failed_task_raises_with_the_server_reason(client: ka.KlingClient) -> None:
    with pytest.raises(ka.TaskFailedError) as info:
        await client.generate(request(prompt="please FAIL"))
    error = info.value
    assert error.task.status is ka.TaskStatus.FAILED
    assert error.task.status_message
    assert error.task.status_message in str(error)
    assert error.task_id == error.task.task_id
    assert f"task_id={error.task_id}" in str(error)


async def test_wait_times_out_with_the_task_id(server: FakeKlingServer) -> None:
    server.auto_progress = False
    poll = ka.PollPolicy(initial_delay=0.005, max_interval=0.01, timeout=0.05)
    async with ka.KlingClient(KEY, base_url=server.base_url, poll=poll) as client:
        task = await client.submit(request())
        with pytest.raises(ka.WaitTimeoutError) as info:
            await client.wait(task)
    assert info.value.task_id == task.task_id
    assert info.value.last_task is not None
    assert info.value.last_task.status is ka.TaskStatus.SUBMITTED
    # The task keeps running server-side: nothing was cancelled there.
    assert server.tasks[task.task_id].status == "submitted"


def counting_session(gets_seen: asyncio.Event, after: int) -> aiohttp.ClientSession:
    """A session whose trace sets ``gets_seen`` once ``after`` GET replies have arrived."""
    count = 0

    async def on_request_end(*_: object) -> None:
        nonlocal count
        count += 1
        if count >= after:
            gets_seen.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return aiohttp.ClientSession(trace_configs=[trace])


async def test_cancelling_wait_leaves_nothing_running(server: FakeKlingServer) -> None:
    server.auto_progress = False
    polled = asyncio.Event()
    async with (
        counting_session(polled, after=3) as session,
        ka.KlingClient(KEY, base_url=server.base_url, poll=FAST_POLL, session=session) as client,
    ):
        task = await client.submit(request(n=2))
        assert client.slots_in_use == 2
        waiter = asyncio.ensure_future(client.wait(task))
        await asyncio.wait_for(polled.wait(), 5)  # the create and two polls are done
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert client.slots_in_use == 0
        gets = server.get_count
        # Let any stray poller run: nothing may reach the server any more.
        for _ in range(20):
            await asyncio.sleep(0)
        assert server.get_count == gets
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not [t for t in leftovers if "kling_async" in repr(t.get_coro())]


async def test_get_task_of_unknown_id_is_not_found(client: ka.KlingClient) -> None:
    with pytest.raises(ka.NotFoundError) as info:
        await client.get_task("no-such-task")
    assert info.value.request_id
    assert info.value.task_id == "no-such-task"


async def test_server_side_validation_error_is_typed(
    server: FakeKlingServer, client: ka.KlingClient
) -> None:
    await client.submit(request(external_task_id="dup"))
    with pytest.raises(ka.InvalidRequestError) as info:
        await client.submit(request(external_task_id="dup"))
    assert info.value.code == 1201
    assert info.value.http_status == 400
    assert info.value.request_id
    assert f"request_id={info.value.request_id}" in str(info.value)
    assert server.create_count == 1


async def test_closed_client_refuses_work(server: FakeKlingServer) -> None:
    client = ka.KlingClient(KEY, base_url=server.base_url)
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.submit(request())
    assert "closed" in repr(client)


async def test_borrowed_session_is_not_closed(server: FakeKlingServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with ka.KlingClient(KEY, base_url=server.base_url, session=session) as client:
            await client.submit(request())
        assert not session.closed
        async with session.get(server.base_url + "/kling/v1/images/generations/x") as reply:
            assert reply.status in (400, 401)


async def test_quirky_payloads_still_work_end_to_end(tmp_path: pathlib.Path) -> None:
    async with (
        FakeKlingServer(api_key=KEY, quirks=True) as server,
        ka.KlingClient(
            KEY, base_url=server.base_url, poll=FAST_POLL, retry=NO_WAIT_RETRY
        ) as client,
    ):
        for _ in range(4):
            done = await client.generate(request(n=2))
            assert done.status is ka.TaskStatus.SUCCEED
            assert len(done.images) == 2
            paths = await client.download(done, tmp_path)
            assert len(paths) == 2
        with pytest.raises(ka.TaskFailedError):
            await client.generate(request(prompt="FAIL please"))


async def test_download_sends_the_key_only_to_the_api_origin(tmp_path: pathlib.Path) -> None:
    async with (
        FakeKlingServer(api_key=KEY, image_host="localhost") as server,
        ka.KlingClient(KEY, base_url=server.base_url, poll=FAST_POLL) as client,
    ):
        done = await client.generate(request())
        assert all("localhost" in image.url for image in done.images)
        await client.download(done, tmp_path)
    assert server.image_requests
    assert not any(r.authorization_present for r in server.image_requests)
    api_calls = [r for r in server.requests if r.path.startswith("/kling/")]
    assert api_calls
    assert all(r.authorization_present for r in api_calls)


async def test_download_refuses_unfinished_and_failed_tasks(
    server: FakeKlingServer, client: ka.KlingClient, tmp_path: pathlib.Path
) -> None:
    server.auto_progress = False
    task = await client.submit(request())
    with pytest.raises(ka.KlingError, match="not succeeded"):
        await client.download(task, tmp_path)
    server.set_status(task.task_id, "failed", message="nope")
    with pytest.raises(ka.TaskFailedError, match="nope"):
        await client.download(task.task_id, tmp_path)


async def test_download_by_task_id(
    server: FakeKlingServer, client: ka.KlingClient, tmp_path: pathlib.Path
) -> None:
    done = await client.generate(request())
    paths = await client.download(done.task_id, tmp_path / "nested" / "dir")
    assert paths == [tmp_path / "nested" / "dir" / f"{done.task_id}-0.png"]


async def test_api_key_never_reaches_logs_or_errors(
    server: FakeKlingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.add_fault(Fault.status(500, 5000), route="get", times=2)
    server.add_fault(Fault.status(429, 1102, message="resource pack depleted"), route="create")
    async with ka.KlingClient(
        KEY, base_url=server.base_url, poll=FAST_POLL, retry=NO_WAIT_RETRY
    ) as client:
        assert KEY not in repr(client)
        with pytest.raises(ka.QuotaExceededError) as info:
            await client.submit(request())
        assert KEY not in str(info.value)
        assert KEY not in repr(info.value)
        await client.generate(request())
    assert caplog.records
    assert KEY not in caplog.text
