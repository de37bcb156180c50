"""Fan-out benchmark against FakeKlingServer running in a separate process.

Reports, measured in the same run:

1. client CPU time per status request, next to a minimal raw-aiohttp loop doing the same
   requests (the physical limit)                                   target: ratio <= 1.3
2. peak RSS of the client process with N tasks in flight              target: <= 200 MB
3. event-loop lag p99 while they are followed                         target: <= 50 ms
4. status GETs per task for a 30 s task with the default PollPolicy   target: <= 8,
   and how long after the task ended its completion was seen          target: <= 10 s

    python benchmarks/bench_fanout.py            # 10,000 tasks of 30 s (about 1 minute)
    python benchmarks/bench_fanout.py --quick    # 2,000 tasks, fewer requests
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp

import kling_async as ka

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _server import fake_server

KEY = "sk-bench"
SUBJECTS = ["https://img.example.com/a.png", "https://img.example.com/b.png"]
TASK_SECONDS = 30.0
#: The collector setting the docs recommend for services with thousands of tasks in flight.
GC_THRESHOLDS = (100_000, 20, 100)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _raw_gets(url: str, count: int, concurrency: int) -> float:
    """CPU seconds for ``count`` GETs decoded with plain aiohttp + json."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                async with session.get(url) as reply:
                    body = await reply.json()
                    assert body["code"] == 0

        start = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.process_time() - start


async def _client_gets(base_url: str, task_id: str, count: int, concurrency: int) -> float:
    """CPU seconds for ``count`` ``get_task`` calls through KlingClient."""
    async with ka.KlingClient(KEY, base_url=base_url) as client:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                task = await client.get_task(task_id)
                assert task.task_id == task_id

        start = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.process_time() - start


async def cpu_per_request(base_url: str, requests: int, concurrency: int) -> dict[str, float]:
    async with ka.KlingClient(KEY, base_url=base_url) as client:
        task = await client.submit(ka.GenerationRequest(subject_images=SUBJECTS, prompt="x"))
    url = f"{base_url}/kling/v1/images/generations/{task.task_id}"
    await _raw_gets(url, 200, concurrency)  # warm up both paths
    await _client_gets(base_url, task.task_id, 200, concurrency)
    raw, ours = [], []
    for _ in range(5):  # interleaved rounds, best of each
        raw.append(await _raw_gets(url, requests, concurrency))
        ours.append(await _client_gets(base_url, task.task_id, requests, concurrency))
    raw_us = min(raw) / requests * 1e6
    ours_us = min(ours) / requests * 1e6
    return {"raw_us": raw_us, "client_us": ours_us, "ratio": ours_us / raw_us}


async def _lag_probe(samples: list[float], stop: asyncio.Event, period: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(period)
        samples.append(loop.time() - start - period)


async def in_flight(base_url: str, tasks: int) -> dict[str, Any]:
    """Follow ``tasks`` tasks of TASK_SECONDS each with the default policies."""
    gets = 0
    lag: list[float] = []
    stop = asyncio.Event()
    probe = asyncio.ensure_future(_lag_probe(lag, stop))
    late: list[float] = []
    failures = 0
    started = time.monotonic()
    async with ka.KlingClient(KEY, base_url=base_url) as client:
        get_task = client.get_task

        async def counting_get_task(task_id: str) -> ka.Task:
            nonlocal gets
            gets += 1
            return await get_task(task_id)

        client.get_task = counting_get_task  # type: ignore[method-assign]
        requests = (ka.GenerationRequest(subject_images=SUBJECTS, prompt="x") for _ in range(tasks))
        async for outcome in client.generate_many(requests, concurrency=tasks):
            if not outcome.ok or outcome.task is None or outcome.task.created_at is None:
                failures += 1
                continue
            ended = outcome.task.created_at.timestamp() + TASK_SECONDS
            late.append(time.time() - ended)
    stop.set()
    await probe
    return {
        "tasks": tasks,
        "failures": failures,
        "wall_s": time.monotonic() - started,
        "gets_per_task": gets / tasks,
        "seen_after_end_p50_s": statistics.median(late) if late else float("nan"),
        "seen_after_end_max_s": max(late) if late else float("nan"),
        "loop_lag_p99_ms": quantile(lag, 0.99) * 1000,
        "loop_lag_max_ms": max(lag) * 1000 if lag else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(mode: str, base_url: str, amount: int) -> None:
    """Run one measurement in this (fresh) process and print it as JSON."""
    if mode == "cpu":
        result: dict[str, Any] = asyncio.run(cpu_per_request(base_url, amount, 50))
    else:
        if mode == "flight-gc":
            gc.set_threshold(*GC_THRESHOLDS)
        result = asyncio.run(in_flight(base_url, amount))
    print(json.dumps(result))


def _measure(mode: str, amount: int, *server_args: str) -> dict[str, Any]:
    with fake_server(*server_args) as base_url:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, base_url, str(amount)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 tasks, fewer requests")
    parser.add_argument("--tasks", type=int, help="tasks in flight (default 10,000)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, base_url, amount = args.child
        _child(mode, base_url, int(amount))
        return
    tasks = args.tasks or (2_000 if args.quick else 10_000)
    requests = 1_000 if args.quick else 3_000

    cpu = _measure("cpu", requests)
    print(f"CPU per status request (best of 5 x {requests} GETs, 50 concurrent):")
    print(f"  raw aiohttp loop   {cpu['raw_us']:8.1f} us")
    print(f"  KlingClient        {cpu['client_us']:8.1f} us")
    print(f"  ratio              {cpu['ratio']:8.2f} x   (target <= 1.3)")

    for mode, label in (("flight", "default gc"), ("flight-gc", f"gc thresholds {GC_THRESHOLDS}")):
        flight = _measure(mode, tasks, "--task-duration", str(TASK_SECONDS))
        print(
            f"{flight['tasks']:,} tasks of {TASK_SECONDS:g} s in flight, "
            f"default PollPolicy, {label}:"
        )
        print(f"  failures           {flight['failures']:8d}")
        print(f"  wall time          {flight['wall_s']:8.1f} s")
        print(f"  peak RSS           {flight['peak_rss_mb']:8.1f} MB  (target <= 200)")
        print(f"  loop lag p99       {flight['loop_lag_p99_ms']:8.1f} ms  (target <= 50)")
        print(f"  loop lag max       {flight['loop_lag_max_ms']:8.1f} ms")
        print(f"  status GETs/task   {flight['gets_per_task']:8.2f}     (target <= 8)")
        print(f"  seen after end p50 {flight['seen_after_end_p50_s']:8.2f} s")
        print(f"  seen after end max {flight['seen_after_end_max_s']:8.2f} s   (target <= 10)")


if __name__ == "__main__":
    main()
