"""Start FakeKlingServer in its own process for a benchmark, and stop it afterwards."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """Run ``python -m kling_async.testing`` with ``args``; yield its base URL."""
    command = [sys.executable, "-m", "kling_async.testing", "--port", str(_free_port()), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError(f"the fake server did not start: {base_url!r}")
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)
