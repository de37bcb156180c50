"""Safe submission (DESIGN §4) and retries against FakeKlingServer's scripted faults."""

from __future__ import annotations

import email.utils
import time

import pytest

import kling_async as ka
from kling_async.testing import FakeKlingServer, Fault

KEY = "sk-test-secret"
FAST_POLL = ka.PollPolicy(initial_delay=0.005, max_interval=0.01, timeout=10)
NO_WAIT_RETRY = ka.RetryPolicy(base_delay=0)
REQUEST = ka.GenerationRequest(
    subject_images=["https://img.example.com/a.png", "https://img.example.com/b.png"],
    prompt="two cats",
)


@pytest.fixture
async def server():
    async with FakeKlingServer(api_key=KEY) as fake:
        yield fake


def make_client(server: FakeKlingServer, **kwargs: object) -> ka.KlingClient:
    options: dict[str, object] = {"poll": FAST_POLL, "retry": NO_WAIT_RETRY, "timeout": 5.0}
    options.update(kwargs)
    return ka.KlingClient(KEY, base_url=server.base_url, **options)  # type: ignore[arg-type]


def count(server: FakeKlingServer, method: str) -> int:
    return sum(1 for r in server.requests if r.method == method)


async def test_accept_then_drop_ends_with_exactly_one_task(server: FakeKlingServer) -> None:
    server.add_fault(Fault.accept_then_drop(), route="create")
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
        done = await client.wait(task)

    assert server.create_count == 1
    assert len(server.tasks) == 1
    assert task.task_id in server.tasks
    assert done.status is ka.TaskStatus.SUCCEED
    assert count(server, "POST") == 1  # found by lookup, never re-sent


async def test_drop_before_creating_is_looked_up_then_resent(server: FakeKlingServer) -> None:
    server.add_fault(Fault.drop(), route="create")
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
    assert server.create_count == 1
    assert count(server, "POST") == 2
    (lookup,) = [r for r in server.requests if r.method == "GET"]
    assert lookup.path.endswith(task.external_task_id or "?")


async def test_gateway_html_on_create_is_reconciled(server: FakeKlingServer) -> None:
    server.add_fault(Fault.html(502), route="create")
    async with make_client(server) as client:
        await client.submit(REQUEST)
    assert server.create_count == 1
    assert count(server, "GET") == 1


async def test_read_timeout_on_create_is_reconciled(server: FakeKlingServer) -> None:
    server.add_fault(Fault.delay(1.0), route="create")
    async with make_client(server, timeout=0.2) as client:
        task = await client.submit(REQUEST)
    assert server.create_count == 1
    assert task.task_id in server.tasks


@pytest.mark.parametrize(
    "fault",
    [Fault.status(500, 5000), Fault.status(503, 5001), Fault.status(429, 1302)],
    ids=["5000", "5001", "1302"],
)
async def test_refusals_are_resent_without_lookup(server: FakeKlingServer, fault: Fault) -> None:
    server.add_fault(fault, route="create", times=2)
    async with make_client(server) as client:
        await client.submit(REQUEST)
    assert server.create_count == 1
    assert count(server, "POST") == 3
    assert count(server, "GET") == 0


async def test_lookup_impossible_raises_submission_unknown(server: FakeKlingServer) -> None:
    server.add_fault(Fault.accept_then_drop(), route="create")
    server.add_fault(Fault.drop(), route="get", times=10)
    async with make_client(server, retry=ka.RetryPolicy(base_delay=0, max_attempts=3)) as client:
        with pytest.raises(ka.SubmissionUnknownError) as info:
            await client.submit(
                REQUEST.__class__(subject_images=REQUEST.subject_images, external_task_id="job-42")
            )
    assert info.value.external_task_id == "job-42"
    assert "job-42" in str(info.value)
    assert server.create_count == 1
    assert count(server, "POST") == 1  # never re-sent blindly
    assert client.slots_in_use == 0


async def test_quota_errors_are_never_retried(server: FakeKlingServer) -> None:
    server.add_fault(Fault.status(429, 1101, message="arrears"), route="create", times=3)
    async with make_client(server) as client:
        with pytest.raises(ka.QuotaExceededError) as info:
            await client.submit(REQUEST)
    assert info.value.code == 1101
    assert count(server, "POST") == 1


async def test_content_policy_is_not_retried(server: FakeKlingServer) -> None:
    server.add_fault(Fault.status(400, 1301, message="unsafe"), route="create", times=3)
    async with make_client(server) as client:
        with pytest.raises(ka.ContentPolicyError):
            await client.submit(REQUEST)
    assert count(server, "POST") == 1


async def test_get_retries_server_errors_then_succeeds(server: FakeKlingServer) -> None:
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
        server.add_fault(Fault.status(500, 5000), route="get")
        server.add_fault(Fault.html(502), route="get")
        server.add_fault(Fault.drop(), route="get")
        fetched = await client.get_task(task.task_id)
    assert fetched.task_id == task.task_id
    assert count(server, "GET") == 4


async def test_retries_give_up_after_max_attempts(server: FakeKlingServer) -> None:
    server.add_fault(Fault.status(503, 5001), route="get", times=5)
    async with make_client(server, retry=ka.RetryPolicy(base_delay=0, max_attempts=3)) as client:
        with pytest.raises(ka.ServerError) as info:
            await client.get_task("anything")
    assert info.value.code == 5001
    assert count(server, "GET") == 3


async def test_retry_after_above_the_cap_is_raised_at_once(server: FakeKlingServer) -> None:
    server.add_fault(Fault.status(429, 1302, retry_after=600), route="get", times=3)
    async with make_client(server) as client:
        with pytest.raises(ka.RateLimitError) as info:
            await client.get_task("anything")
    assert info.value.retry_after == 600
    assert count(server, "GET") == 1


async def test_retry_after_is_honoured(server: FakeKlingServer) -> None:
    date = email.utils.formatdate(time.time() + 0.3, usegmt=True)
    server.add_fault(Fault.status(429, 1302, retry_after=date), route="get")
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
        started = time.monotonic()
        await client.get_task(task.task_id)
    # An HTTP-date has one-second resolution: the wait is between 0 and ~1.3 s, never skipped
    # entirely unless the date is already past.
    assert count(server, "GET") == 2
    assert time.monotonic() - started < 2.5


async def test_non_json_reply_quotes_the_body(server: FakeKlingServer) -> None:
    server.add_fault(Fault.concatenated(), route="get")
    async with make_client(server, retry=ka.RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(ka.UnexpectedResponseError) as info:
            await client.get_task("anything")
    assert info.value.http_status == 200
    assert isinstance(info.value.body, str)
    assert len(info.value.body) <= 200
    assert "{" in str(info.value)


async def test_html_5xx_is_retried_for_queries(server: FakeKlingServer) -> None:
    server.add_fault(Fault.html(502), route="get", times=2)
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
        await client.get_task(task.task_id)
    assert count(server, "GET") == 3


async def test_connection_refused_is_a_transport_error() -> None:
    async with FakeKlingServer() as server:
        base_url = server.base_url
    async with ka.KlingClient(
        KEY, base_url=base_url, retry=ka.RetryPolicy(base_delay=0, max_attempts=2)
    ) as client:
        with pytest.raises(ka.TransportError) as info:
            await client.submit(REQUEST)
    assert info.value.maybe_delivered is False
    assert client.slots_in_use == 0


async def test_generic_429_on_create_is_a_concurrency_signal(server: FakeKlingServer) -> None:
    server.add_fault(Fault.generic_429(), route="create")
    async with make_client(server) as client:
        task = await client.submit(REQUEST)
        # The router hid the 1303: the budget shrank as if it had been one.
        assert client.slot_limit == 1
    assert task.task_id in server.tasks
    assert count(server, "POST") == 2


async def test_generic_429_on_query_is_a_rate_limit_without_code(server: FakeKlingServer) -> None:
    server.add_fault(Fault.generic_429(), route="get", times=5)
    async with make_client(server, retry=ka.RetryPolicy(base_delay=0, max_attempts=2)) as client:
        with pytest.raises(ka.RateLimitError) as info:
            await client.get_task("anything")
    assert info.value.code is None
    assert info.value.http_status == 429
