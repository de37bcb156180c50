"""``kling-async demo`` (the whole flow offline) and ``kling-async fake-server``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
from typing import Any, Final

import click
from rich.console import Console

from kling_async._cli_common import (
    EXIT_TASK_FAILED,
    Failure,
    common_options,
    describe,
    emit_json,
    files_json,
    follow,
    note,
    poll_policy,
    run,
    stderr_console,
)
from kling_async._client import KlingClient
from kling_async._constants import ENV_API_KEY
from kling_async._errors import TaskFailedError
from kling_async._fake_png import make_png
from kling_async._models import GenerationRequest, TaskStatus

DEMO_DIR: Final = pathlib.Path("kling-demo")
#: How long the demo's tasks take on the in-process fake server, and how often they are polled.
DEMO_TASK_SECONDS: Final = 1.0
DEMO_POLL_SECONDS: Final = 0.25
DEMO_PROMPT: Final = "the two characters having tea in a sunny garden"
#: The demo's two subject images: solid-colour PNGs, big enough for the API's 300 px minimum.
SUBJECT_SIZE: Final = 384
_SUBJECT_COLOURS: Final = ((235, 120, 70), (70, 130, 220))


def _write_subjects(out: pathlib.Path) -> list[pathlib.Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, colour in enumerate(_SUBJECT_COLOURS, start=1):
        path = out / f"subject-{number}.png"
        path.write_bytes(make_png(SUBJECT_SIZE, SUBJECT_SIZE, colour))
        paths.append(path)
    return paths


async def _demo(
    out: pathlib.Path, base_url: str | None, poll_interval: float, console: Console
) -> dict[str, Any]:
    from kling_async.testing import FakeKlingServer

    subjects = await asyncio.to_thread(_write_subjects, out)
    note(console, f"wrote subject images {subjects[0]} and {subjects[1]}")
    request = GenerationRequest(
        subject_images=subjects, prompt=DEMO_PROMPT, n=2, aspect_ratio="1:1"
    )
    poll = poll_policy(poll_interval, 60.0)

    async def generate(url: str, key: str) -> dict[str, Any]:
        async with KlingClient(api_key=key, base_url=url, poll=poll) as client:
            task = await client.submit(request)
            note(console, f"submitted task {task.task_id}")
            final = await follow(client, task, console)
            if final.status is not TaskStatus.SUCCEED:
                raise TaskFailedError(final)
            files = await client.download(final, out)
        return {"task_id": final.task_id, "status": str(final.status), "files": files}

    if base_url is not None:
        return await generate(base_url, os.environ.get(ENV_API_KEY, "").strip() or "demo")
    async with FakeKlingServer(task_duration=DEMO_TASK_SECONDS) as server:
        note(console, f"started the fake Kling API at {server.base_url}")
        return await generate(server.base_url, "demo")


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=DEMO_DIR,
    show_default=True,
    help="Directory for the subject images and the generated images.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=DEMO_POLL_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How often the task's status is checked.",
)
@common_options
def demo(out: pathlib.Path, poll_interval: float, base_url: str | None, as_json: bool) -> None:
    """Run the whole flow offline against a bundled fake API: no key needed.

    Writes two subject images, submits a generation of two images, follows it live and
    downloads the PNGs. With --base-url (or DEERAPI_BASE_URL) it talks to that server instead,
    e.g. one started with `kling-async fake-server`.
    """
    console = stderr_console()
    try:
        result = run(_demo(out, base_url, poll_interval, console))
    except TaskFailedError as exc:
        raise Failure(describe(exc), EXIT_TASK_FAILED) from None
    files: list[pathlib.Path] = result["files"]
    if as_json:
        emit_json({**result, "files": files_json(files), "out": str(out)})
        return
    for path in files:
        click.echo(str(path))
    note(console, f"done: {len(files)} images written to {out.resolve()}")


@click.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any."
)
@click.option(
    "--task-duration",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    metavar="SECONDS",
    help="How long each task takes.",
)
@click.option(
    "--slot-limit",
    type=click.IntRange(min=1),
    default=None,
    help="The account's parallel-task limit (1303 beyond it).",
)
@common_options
def fake_server(
    host: str,
    port: int,
    task_duration: float,
    slot_limit: int | None,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Serve the fake Kling API for trying things by hand (any API key is accepted).

    --base-url is accepted for uniformity and ignored. Stop it with Ctrl-C.
    """
    from kling_async.testing import FakeKlingServer

    console = stderr_console()

    async def serve() -> None:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        server = FakeKlingServer(
            task_duration=task_duration, slot_limit=slot_limit, host=host, port=port
        )
        async with server:
            if as_json:
                emit_json({"base_url": server.base_url})
            else:
                click.echo(server.base_url)
            note(
                console,
                f"fake Kling API listening; try: DEERAPI_BASE_URL={server.base_url} "
                f"DEERAPI_KEY=anything kling-async generate ... (Ctrl-C stops it)",
            )
            await stop.wait()
        note(console, "stopped")

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        note(console, "stopped")
