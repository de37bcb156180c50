"""Status requests per task: polling only vs. push-first waiting with a callback receiver.

Runs the same batch against FakeKlingServer several times in one process and prints, per mode,
the status GETs per task and how long after a task ended its result was in hand.

Time is scaled: one second of the real API is ``--scale`` seconds here (default 0.05), and the
poll policy is the default one scaled alike (first check after 1 s, growing by 1.5x to 10 s).
Task durations are drawn uniformly from ``--min``..``--max`` API seconds (default 15..45).

    python benchmarks/bench_webhooks.py [--tasks 200] [--scale 0.05] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

import kling_async as ka
from kling_async.testing import FakeKlingServer
from kling_async.webhooks import CallbackReceiver

KEY = "sk-bench"
SUBJECTS = ["https://img.example.com/a.png", "https://img.example.com/b.png"]
#: (label, fallback_factor (None: no receiver), share of callbacks dropped)
MODES = [
    ("polling only", None, 0.0),
    ("webhooks", 5.0, 0.0),
    ("webhooks, 10 % of callbacks lost", 5.0, 0.1),
    ("webhooks, every callback lost", 5.0, 1.0),
    ("webhooks, fallback_factor 10", 10.0, 0.0),
]


async def run_mode(
    *,
    tasks: int,
    scale: float,
    seed: int,
    low: float,
    high: float,
    fallback_factor: float | None,
    drop: float,
) -> dict[str, Any]:
    durations = random.Random(seed)
    server = FakeKlingServer(
        api_key=KEY,
        task_duration=lambda: durations.uniform(low, high) * scale,
        callback_delay=0.2 * scale,  # network time of one callback
        callback_drop=drop,
        seed=seed,
        record_requests=False,
    )
    receiver = CallbackReceiver(
        public_url="http://127.0.0.1:0/kling/callback",
        secret=b"bench",
        fallback_factor=fallback_factor or 1.0,
    )
    default = ka.PollPolicy()
    poll = ka.PollPolicy(
        initial_delay=default.initial_delay * scale,
        max_interval=default.max_interval * scale,
        backoff=default.backoff,
        timeout=None if default.timeout is None else default.timeout * scale,
    )
    latencies: list[float] = []
    failures = 0
    async with server:
        await receiver.start("127.0.0.1", 0)
        try:
            async with ka.KlingClient(
                KEY,
                base_url=server.base_url,
                poll=poll,
                callbacks=receiver if fallback_factor else None,
            ) as client:
                requests = [
                    ka.GenerationRequest(subject_images=SUBJECTS, prompt=f"job {i}")
                    for i in range(tasks)
                ]
                started = time.perf_counter()
                async for outcome in client.generate_many(requests, concurrency=tasks):
                    if not outcome.ok or outcome.task is None or outcome.task.updated_at is None:
                        failures += 1
                        continue
                    ended = outcome.task.updated_at.timestamp()
                    latencies.append(max(0.0, time.time() - ended) / scale)
                wall = time.perf_counter() - started
        finally:
            await receiver.stop()
    latencies.sort()
    return {
        "gets": server.get_count / tasks,
        "creates": server.create_count,
        "callbacks": len(server.callbacks_sent),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p95": latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan"),
        "wall": wall,
        "failures": failures,
    }


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min", dest="low", type=float, default=15.0)
    parser.add_argument("--max", dest="high", type=float, default=45.0)
    args = parser.parse_args(argv)
    print(
        f"{args.tasks} tasks of {args.low:g}-{args.high:g} API seconds, default PollPolicy, "
        f"fallback_factor {ka.webhooks.DEFAULT_FALLBACK_FACTOR:g} unless said; 1 API second = "
        f"{args.scale:g} s here; latency = result in hand after the task ended (API seconds)"
    )
    print(
        f"{'mode':34} {'GETs/task':>9} {'callbacks':>9} {'p50 lat':>8} {'p95 lat':>8} "
        f"{'failed':>6} {'wall s':>7}"
    )
    for label, fallback_factor, drop in MODES:
        figures = await run_mode(
            tasks=args.tasks,
            scale=args.scale,
            seed=args.seed,
            low=args.low,
            high=args.high,
            fallback_factor=fallback_factor,
            drop=drop,
        )
        print(
            f"{label:34} {figures['gets']:9.2f} {figures['callbacks']:9d} "
            f"{figures['p50']:8.2f} {figures['p95']:8.2f} {figures['failures']:6d} "
            f"{figures['wall']:7.2f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
