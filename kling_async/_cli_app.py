"""The ``kling-async`` command group and its single-task subcommands."""

from __future__ import annotations

import pathlib
import uuid

import click

from kling_async._cli_batch import batch
from kling_async._cli_common import (
    EXIT_TASK_FAILED,
    CliGroup,
    Failure,
    common_options,
    describe,
    emit_json,
    files_json,
    follow,
    image_argument,
    note,
    poll_policy,
    require_api_key,
    run,
    stderr_console,
    task_json,
    task_lines,
    wait_options,
)
from kling_async._cli_demo import demo, fake_server
from kling_async._client import KlingClient
from kling_async._constants import ASPECT_RATIOS, DEFAULT_ASPECT_RATIO, DEFAULT_MODEL
from kling_async._errors import TaskFailedError
from kling_async._models import GenerationRequest, Task, TaskStatus
from kling_async._version import __version__

# The order the API documents them in.
_ASPECT_ORDER = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9")
_ASPECT_CHOICES = [ratio for ratio in _ASPECT_ORDER if ratio in ASPECT_RATIOS] + sorted(
    ASPECT_RATIOS.difference(_ASPECT_ORDER)
)


def _failed(task: Task) -> Failure:
    return Failure(describe(TaskFailedError(task)), EXIT_TASK_FAILED)


def _result_json(task: Task, files: list[pathlib.Path]) -> dict[str, object]:
    return {
        "task_id": task.task_id,
        "status": str(task.status),
        "files": files_json(files),
        "external_task_id": task.external_task_id,
        "status_message": task.status_message,
    }


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kling-async")
def app() -> None:
    """Generate images with Kling's Generate With References API (via DeerAPI).

    The API key is read from DEERAPI_KEY; the base URL from DEERAPI_BASE_URL or --base-url.
    Exit codes: 0 success, 1 a task or batch job failed, 2 bad input or usage,
    3 configuration or API error, 130 interrupted.

    Try it offline, no key needed: kling-async demo
    """


@app.command()
@click.option(
    "--subject",
    "subjects",
    multiple=True,
    required=True,
    metavar="IMAGE",
    help="A subject reference image (file path or http(s) URL); give 2 to 4.",
)
@click.option("--scene", metavar="IMAGE", help="An optional scene reference image.")
@click.option("--style", metavar="IMAGE", help="An optional style reference image.")
@click.option("--prompt", required=True, help="What to generate (at most 2500 characters).")
@click.option("-n", "n", type=int, default=1, show_default=True, help="Images to generate, 1–9.")
@click.option(
    "--aspect-ratio",
    type=click.Choice(_ASPECT_CHOICES),
    default=DEFAULT_ASPECT_RATIO,
    show_default=True,
)
@click.option("--model-name", default=DEFAULT_MODEL, show_default=True, help="The model.")
@click.option("--external-task-id", metavar="ID", help="Your id for the task (unique per account).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Directory for the images (created if missing); required unless --no-wait.",
)
@click.option("--no-wait", is_flag=True, help="Print the task id right after submitting.")
@wait_options
@common_options
def generate(
    subjects: tuple[str, ...],
    scene: str | None,
    style: str | None,
    prompt: str,
    n: int,
    aspect_ratio: str,
    model_name: str,
    external_task_id: str | None,
    out: pathlib.Path | None,
    no_wait: bool,
    poll_interval: float | None,
    timeout: float,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Submit one generation, follow it, and download its images.

    Prints the image paths, one per line (with --no-wait: the task id).
    """
    if out is None and not no_wait:
        raise click.UsageError("--out is required unless --no-wait is given")
    request = GenerationRequest(
        subject_images=[image_argument(subject) for subject in subjects],
        prompt=prompt,
        scene_image=image_argument(scene) if scene else None,
        style_image=image_argument(style) if style else None,
        n=n,
        aspect_ratio=aspect_ratio,
        model_name=model_name,
        # Chosen here, so that an interrupted submission can still be looked up by it.
        external_task_id=external_task_id or f"ka-{uuid.uuid4().hex}",
    )
    require_api_key()
    console = stderr_console()
    progress: dict[str, str] = {}

    async def main() -> tuple[Task, list[pathlib.Path]]:
        async with KlingClient(
            base_url=base_url, poll=poll_policy(poll_interval, timeout)
        ) as client:
            task = await client.submit(request)
            progress["task_id"] = task.task_id
            note(console, f"submitted task {task.task_id}")
            if no_wait:
                return task, []
            final = await follow(client, task, console)
            if final.status is not TaskStatus.SUCCEED:
                return final, []
            assert out is not None
            progress["downloading"] = "yes"
            return final, await client.download(final, out)

    def hint() -> str | None:
        task_id = progress.get("task_id")
        if task_id is None:
            return (
                "If the task was created, find it with: "
                f"kling-async status {request.external_task_id}"
            )
        if "downloading" in progress:
            return f"Download the images with: kling-async download {task_id} --out {out}"
        return f"Task {task_id} keeps running; follow it with: kling-async wait {task_id}"

    task, files = run(main(), on_interrupt=hint)
    if as_json:
        emit_json(_result_json(task, files))
    elif no_wait:
        click.echo(task.task_id)
    else:
        for path in files:
            click.echo(str(path))
    if task.status is TaskStatus.FAILED:
        raise _failed(task)


def _show(task: Task, as_json: bool) -> None:
    if as_json:
        emit_json(task_json(task))
    else:
        for line in task_lines(task):
            click.echo(line)
    if task.status is TaskStatus.FAILED:
        raise _failed(task)


@app.command()
@click.argument("task_id")
@common_options
def status(task_id: str, base_url: str | None, as_json: bool) -> None:
    """Show a task's current state (TASK_ID may also be an external task id)."""
    require_api_key()

    async def main() -> Task:
        async with KlingClient(base_url=base_url) as client:
            return await client.get_task(task_id)

    _show(run(main()), as_json)


@app.command()
@click.argument("task_id")
@wait_options
@common_options
def wait(
    task_id: str,
    poll_interval: float | None,
    timeout: float,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Wait for a task to finish, showing its status live, then show it."""
    require_api_key()
    console = stderr_console()

    async def main() -> Task:
        async with KlingClient(base_url=base_url) as client:
            return await follow(client, task_id, console, poll=poll_policy(poll_interval, timeout))

    _show(run(main(), on_interrupt=lambda: f"Task {task_id} keeps running on the server."), as_json)


@app.command()
@click.argument("task_id")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Directory for the images (created if missing).",
)
@common_options
def download(task_id: str, out: pathlib.Path, base_url: str | None, as_json: bool) -> None:
    """Download the images of a finished task; print their paths."""
    require_api_key()

    async def main() -> tuple[Task, list[pathlib.Path]]:
        async with KlingClient(base_url=base_url) as client:
            task = await client.get_task(task_id)
            if task.status is not TaskStatus.SUCCEED:
                return task, []
            return task, await client.download(task, out)

    task, files = run(main())
    if task.status is TaskStatus.FAILED:
        raise _failed(task)
    if task.status is not TaskStatus.SUCCEED:
        raise Failure(
            f"task {task.task_id} has not finished yet (status {task.status}); "
            f"wait for it with: kling-async wait {task.task_id}",
            EXIT_TASK_FAILED,
        )
    if as_json:
        emit_json(_result_json(task, files))
    else:
        for path in files:
            click.echo(str(path))


app.add_command(batch)
app.add_command(demo)
app.add_command(fake_server)
