"""generate_many and the shared slot budget, against FakeKlingServer."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

import kling_async as ka
from kling_async.testing import FakeKlingServer

KEY = "sk-fanout"
FAST_POLL = ka.PollPolicy(initial_delay=0.005, max_interval=0.01, timeout=20)
NO_WAIT_RETRY = ka.RetryPolicy(base_delay=0)
IMAGES = ["https://img.example.com/a.png", "https://img.example.com/b.png"]


def request(prompt: str = "cats", **fields: object) -> ka.GenerationRequest:
    return ka.GenerationRequest(subject_images=IMAGES, prompt=prompt, **fields)  # type: ignore[arg-type]


def make_client(server: FakeKlingServer, **options: object) -> ka.KlingClient:
    settings: dict[str, object] = {"poll": FAST_POLL, "retry": NO_WAIT_RETRY}
    settings.update(options)
    return ka.KlingClient(KEY, base_url=server.base_url, **settings)  # type: ignore[arg-type]


def create_counter(target: int) -> tuple[aiohttp.ClientSession, asyncio.Event]:
    """A session whose trace sets the event once ``target`` create replies have arrived."""
    reached = asyncio.Event()
    seen = 0

    async def on_end(_: object, __: object, params: aiohttp.TraceRequestEndParams) -> None:
        nonlocal seen
        if params.method == "POST":
            seen += 1
            if seen >= target:
                reached.set()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(trace_configs=[trace]), reached


@pytest.fixture
async def server():
    async with FakeKlingServer(api_key=KEY) as fake:
        yield fake


async def test_every_request_gets_one_outcome_in_completion_order(
    server: FakeKlingServer,
) -> None:
    requests = [request(f"job {i}") for i in range(12)]
    async with make_client(server) as client:
        outcomes = [o async for o in client.generate_many(requests, concurrency=4)]
    assert len(outcomes) == 12
    assert {id(o.request) for o in outcomes} == {id(r) for r in requests}  # the very objects
    assert all(o.ok and o.task is not None for o in outcomes)
    assert len({o.task_id for o in outcomes}) == 12
    assert server.create_count == 12


async def test_one_failure_never_stops_the_rest(server: FakeKlingServer) -> None:
    requests = [request("FAIL this one" if i % 3 == 0 else f"ok {i}") for i in range(9)]
    async with make_client(server) as client:
        outcomes = [o async for o in client.generate_many(requests, concurrency=3)]
    failed = [o for o in outcomes if not o.ok]
    assert len(outcomes) == 9
    assert len(failed) == 3
    for outcome in failed:
        assert isinstance(outcome.error, ka.TaskFailedError)
        assert outcome.task_id is not None
        assert outcome.task is not None
        assert outcome.task.status is ka.TaskStatus.FAILED
        with pytest.raises(ka.TaskFailedError):
            outcome.unwrap()


async def test_requests_are_consumed_lazily(server: FakeKlingServer) -> None:
    pulled = 0

    def endless() -> Iterator[ka.GenerationRequest]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield request(f"job {i}")

    async with (
        make_client(server) as client,
        client.generate_many(endless(), concurrency=3) as stream,
    ):
        taken = 0
        async for _ in stream:
            taken += 1
            if taken == 5:
                break
    assert pulled <= 5 + 3
    assert server.create_count <= 5 + 3


async def test_async_iterables_are_accepted(server: FakeKlingServer) -> None:
    async def source() -> AsyncIterator[ka.GenerationRequest]:
        for i in range(4):
            await asyncio.sleep(0)
            yield request(f"job {i}")

    async with make_client(server) as client:
        outcomes = [o async for o in client.generate_many(source(), concurrency=2)]
    assert [o.ok for o in outcomes] == [True] * 4


async def test_errors_before_submission_become_outcomes(
    server: FakeKlingServer, tmp_path: object
) -> None:
    import pathlib

    from tests._images import make_png

    path = pathlib.Path(str(tmp_path)) / "a.png"
    path.write_bytes(make_png(400, 400))
    doomed = ka.GenerationRequest(subject_images=[path, IMAGES[0]], prompt="x")
    path.unlink()  # unreadable by the time it is submitted
    async with make_client(server) as client:
        outcomes = [o async for o in client.generate_many([doomed, request()], concurrency=2)]
    by_request = {id(o.request): o for o in outcomes}
    bad = by_request[id(doomed)]
    assert isinstance(bad.error, ka.RequestValidationError)
    assert bad.task_id is None
    assert server.create_count == 1


async def test_leaving_early_reports_what_was_still_running(server: FakeKlingServer) -> None:
    server.auto_progress = False
    requests = [request(f"job {i}") for i in range(5)]
    session, all_created = create_counter(5)
    async with session, make_client(server, session=session) as client:
        async with client.generate_many(requests, concurrency=5) as stream:
            first = asyncio.ensure_future(stream.__anext__())  # starts the submissions
            await asyncio.wait_for(all_created.wait(), 5)
            first_task = next(iter(server.tasks))
            server.finish(first_task)
            outcome = await first
            assert outcome.task_id == first_task
        remaining = stream.remaining
        assert client.slots_in_use == 0
    assert len(remaining) == 4
    assert {o.task_id for o in remaining} == set(server.tasks) - {first_task}
    assert all(o.error is not None and not o.ok for o in remaining)
    assert {id(o.request) for o in remaining} <= {id(r) for r in requests}
    # Nothing was cancelled on the server: the tasks keep running there.
    assert all(server.tasks[o.task_id or ""].status == "submitted" for o in remaining)


async def test_cancelling_the_consumer_stops_everything(server: FakeKlingServer) -> None:
    server.auto_progress = False
    session, created = create_counter(3)
    async with session, make_client(server, session=session) as client:
        stream = client.generate_many([request() for _ in range(10)], concurrency=3)

        async def consume() -> None:
            async for _ in stream:
                pass

        consumer = asyncio.ensure_future(consume())
        await asyncio.wait_for(created.wait(), 5)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert len(stream.remaining) == 3
        assert all(o.task_id in server.tasks for o in stream.remaining)
        assert client.slots_in_use == 0
        assert server.create_count == 3  # no new submissions after the stop
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not [t for t in leftovers if "kling_async" in repr(t.get_coro())]


async def test_plain_break_cleans_up_without_warnings(server: FakeKlingServer) -> None:
    server.auto_progress = False
    session, created = create_counter(2)
    async with session, make_client(server, session=session) as client:

        async def run() -> None:
            async for _ in client.generate_many([request() for _ in range(2)], concurrency=2):
                break

        await asyncio.wait_for(asyncio.gather(run(), _finish_first(server, created)), 5)
        gc.collect()
        for _ in range(10):  # let the loop run the async generator finaliser
            await asyncio.sleep(0)
        assert client.slots_in_use == 0


async def _finish_first(server: FakeKlingServer, created: asyncio.Event) -> None:
    await created.wait()
    server.finish(next(iter(server.tasks)))


async def test_all_submission_paths_share_the_budget(server: FakeKlingServer) -> None:
    server.task_duration = 0.02
    async with make_client(server, max_in_flight=2) as client:
        stream = client.generate_many([request() for _ in range(8)], concurrency=8)
        single = asyncio.ensure_future(client.generate(request()))
        outcomes = [o async for o in stream]
        await single
    assert all(o.ok for o in outcomes)
    assert server.peak_slots_in_use <= 2
    assert server.count_1303 == 0


async def test_a_request_larger_than_the_budget_runs_alone(server: FakeKlingServer) -> None:
    server.task_duration = 0.02
    async with make_client(server, max_in_flight=2) as client:
        requests = [request(n=1), request(n=3), request(n=1)]
        outcomes = [o async for o in client.generate_many(requests, concurrency=3)]
    assert all(o.ok for o in outcomes)
    assert server.peak_slots_in_use == 3  # the big one, and nothing beside it


async def test_budget_adapts_when_the_server_limit_is_below_concurrency() -> None:
    rng = random.Random(7)
    async with (
        FakeKlingServer(
            api_key=KEY, slot_limit=4, task_duration=lambda: rng.uniform(0.01, 0.04)
        ) as server,
        make_client(server) as client,
    ):  # max_in_flight=None: unbounded until 1303
        outcomes = [
            o async for o in client.generate_many([request() for _ in range(60)], concurrency=12)
        ]
        limit = client.slot_limit
    assert len(outcomes) == 60
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if o.error]
    assert server.create_count == 60
    assert server.peak_slots_in_use <= 4
    assert limit < 6  # back near the server limit (it probes upwards slowly)
    # The first burst hits the limit once per extra request; afterwards only rare probes.
    assert server.count_1303 <= 12 + 60 // 8, server.count_1303


def test_concurrency_must_be_positive() -> None:
    client = ka.KlingClient(KEY, base_url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="concurrency"):
        client.generate_many([], concurrency=0)
