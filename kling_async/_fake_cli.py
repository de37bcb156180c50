"""Command line of ``python -m kling_async.testing``: options, and serving until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import signal
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class _Server(Protocol):
    @property
    def base_url(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _duration(text: str) -> float | Callable[[], float]:
    low, sep, high = text.partition(":")
    if sep:
        return functools.partial(random.uniform, float(low), float(high))
    return float(text)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def parse_options(argv: Sequence[str] | None) -> dict[str, Any]:
    """Parse the command line into FakeKlingServer keyword arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m kling_async.testing",
        description="Serve a fake Kling image API (FakeKlingServer) until interrupted.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add("--port", type=int, default=8765, help="port, 0 = any free one (default 8765)")
    add("--api-key", help="require this Bearer key (default: accept any)")
    add(
        "--task-duration",
        type=_duration,
        default=0.0,
        metavar="SECONDS|MIN:MAX",
        help="time for a task to finish; MIN:MAX draws uniformly per task (default 0)",
    )
    add("--slot-limit", type=int, help="account parallel-slot limit (default: none)")
    add("--image-host", help="host name in image URLs (default: --host)")
    add("--image-size", type=_size, default=(320, 320), metavar="WxH", help="(default 320x320)")
    add("--quirks", action="store_true", help="reply with messy real-world shapes")
    add("--seed", type=int, default=0, help="seed of the random choices (default 0)")
    add("--record", dest="record_requests", action="store_true", help="record requests")
    return vars(parser.parse_args(argv))


async def _serve(server: _Server) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises
            loop.add_signal_handler(signum, stop.set)
    await server.start()
    try:
        print(server.base_url, flush=True)
        await stop.wait()
    finally:
        await server.stop()


def serve_forever(server: _Server) -> int:
    """Run `server` in a new event loop until SIGINT/SIGTERM; return the exit status."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server))
    return 0
