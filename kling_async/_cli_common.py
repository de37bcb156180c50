"""What every ``kling-async`` subcommand shares: options, exit codes, error lines, output."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pathlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any, Final, TypeVar

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kling_async._client import KlingClient
from kling_async._constants import ENV_API_KEY, ENV_BASE_URL
from kling_async._errors import (
    KlingError,
    RequestValidationError,
    TaskFailedError,
    WaitTimeoutError,
)
from kling_async._images import ImageInput
from kling_async._models import Task, TaskStatus
from kling_async._polling import PollPolicy

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

EXIT_OK: Final = 0
"""Everything succeeded."""
EXIT_TASK_FAILED: Final = 1
"""A task (or a batch job) failed or did not finish."""
EXIT_BAD_INPUT: Final = 2
"""Bad input or usage."""
EXIT_API_ERROR: Final = 3
"""A configuration problem or an error from the API."""
EXIT_INTERRUPTED: Final = 130
"""Interrupted (Ctrl-C)."""

ENV_DEBUG: Final = "KLING_ASYNC_DEBUG"
_LOGGER: Final = logging.getLogger("kling_async")


class Failure(click.ClickException):
    """A one-line error that ends the command with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(one_line(message))
        # click declares exit_code per class; one class with a per-instance code is simpler.
        self.exit_code = exit_code  # type: ignore[misc]


def one_line(text: str) -> str:
    """``text`` on one line, without the API key even if something quoted it."""
    line = " ".join(text.split())
    key = os.environ.get(ENV_API_KEY, "").strip()
    if len(key) >= 4:
        line = line.replace(key, "***")
    return line


def exit_code_for(error: KlingError) -> int:
    """The exit code that reports ``error``."""
    if isinstance(error, RequestValidationError):
        return EXIT_BAD_INPUT
    if isinstance(error, (TaskFailedError, WaitTimeoutError)):
        return EXIT_TASK_FAILED
    return EXIT_API_ERROR


def describe(error: KlingError) -> str:
    """One line naming the kind of error, its message, and the request and task ids."""
    if isinstance(error, RequestValidationError):
        return f"invalid request: {error}"
    if isinstance(error, (TaskFailedError, WaitTimeoutError)):
        return str(error)
    name = type(error).__name__
    return f"{name}: {error}"


def failure_from(error: KlingError) -> Failure:
    """The :class:`Failure` that reports ``error``."""
    return Failure(describe(error), exit_code_for(error))


class CliGroup(click.Group):
    """A group that turns library errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; map errors to exit codes instead of tracebacks."""
        handler = _WarningLine()
        _LOGGER.addHandler(handler)
        try:
            return super().invoke(ctx)
        except KlingError as exc:
            raise failure_from(exc) from None
        except KeyboardInterrupt:
            stderr_console().print("Interrupted.", markup=False, highlight=False)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except OSError as exc:
            raise Failure(_os_error_line(exc), EXIT_BAD_INPUT) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get(ENV_DEBUG):
                raise
            raise Failure(
                f"unexpected {type(exc).__name__}: {exc} (set {ENV_DEBUG}=1 for a traceback)",
                EXIT_API_ERROR,
            ) from None
        finally:
            _LOGGER.removeHandler(handler)


class _WarningLine(logging.Handler):
    """Shows the library's warnings (e.g. a create request being reconciled) as one line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"warning: {one_line(record.getMessage())}", err=True)
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


def _os_error_line(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.filename is not None:
        return f"cannot use {os.fsdecode(error.filename)!r}: {reason}"
    return reason


def run(
    coro: Coroutine[Any, Any, _T], *, on_interrupt: Callable[[], str | None] = lambda: None
) -> _T:
    """Run ``coro`` in a fresh event loop; on Ctrl-C print a hint and exit 130."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        hint = on_interrupt()
        message = f"Interrupted. {hint}" if hint else "Interrupted."
        stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def stderr_console() -> Console:
    """A console on standard error (progress, status lines); plain text when not a terminal."""
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    """A console on standard output (results such as tables)."""
    return Console(highlight=False)


def note(console: Console, text: str) -> None:
    """Print one plain line (no markup, never wrapped) on ``console``."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def emit_json(value: object) -> None:
    """Print ``value`` as one JSON document on standard output."""
    click.echo(json.dumps(value, ensure_ascii=False))


# -- options shared by the subcommands ------------------------------------------------------


def common_options(func: _F) -> _F:
    """``--base-url`` and ``--json``: accepted by every subcommand."""
    func = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the result as one JSON object on standard output.",
    )(func)
    return click.option(
        "--base-url",
        envvar=ENV_BASE_URL,
        show_envvar=True,
        metavar="URL",
        help="The API's base URL (default https://api.deerapi.com).",
    )(func)


def wait_options(func: _F) -> _F:
    """``--poll-interval`` and ``--timeout``: for subcommands that wait for tasks."""
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0),
        default=900.0,
        show_default=True,
        metavar="SECONDS",
        help="Give up waiting for a task after this long (0: never). The task keeps running.",
    )(func)
    return click.option(
        "--poll-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="Check task status at this fixed interval (default: every 1 s growing to 10 s).",
    )(func)


def poll_policy(poll_interval: float | None, timeout: float) -> PollPolicy:
    """The poll policy for ``--poll-interval`` and ``--timeout``."""
    deadline = timeout or None
    if poll_interval is None:
        return PollPolicy(timeout=deadline)
    return PollPolicy(
        initial_delay=poll_interval, max_interval=poll_interval, backoff=1.0, timeout=deadline
    )


def require_api_key() -> None:
    """Fail with exit code 3 unless ``DEERAPI_KEY`` is set."""
    if not os.environ.get(ENV_API_KEY, "").strip():
        raise Failure(f"no API key: set the {ENV_API_KEY} environment variable", EXIT_API_ERROR)


def image_argument(value: str, *, relative_to: pathlib.Path | None = None) -> ImageInput:
    """An image given on the command line or in a batch file: an http(s) URL or a file path."""
    text = value.strip()
    if text.lower().startswith(("http://", "https://")):
        return ImageInput.from_url(text)
    path = pathlib.Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return ImageInput.from_path(path)


# -- showing tasks ----------------------------------------------------------------------------


def _timestamp(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def task_json(task: Task) -> dict[str, Any]:
    """A task as a JSON-ready dictionary."""
    return {
        "task_id": task.task_id,
        "status": str(task.status),
        "status_message": task.status_message,
        "external_task_id": task.external_task_id,
        "created_at": _timestamp(task.created_at),
        "updated_at": _timestamp(task.updated_at),
        "images": [{"index": image.index, "url": image.url} for image in task.images],
        "request_id": task.request_id,
    }


def task_lines(task: Task) -> list[str]:
    """A task as ``name: value`` lines for people."""
    lines = [f"task_id: {task.task_id}", f"status: {task.status}"]
    if task.status_message:
        lines.append(f"status_message: {task.status_message}")
    if task.external_task_id:
        lines.append(f"external_task_id: {task.external_task_id}")
    for name, value in (("created_at", task.created_at), ("updated_at", task.updated_at)):
        if value is not None:
            lines.append(f"{name}: {value.isoformat()}")
    lines.extend(f"image {image.index}: {image.url}" for image in task.images)
    if task.request_id:
        lines.append(f"request_id: {task.request_id}")
    return lines


def files_json(paths: Sequence[pathlib.Path]) -> list[str]:
    """Paths as strings for JSON output."""
    return [str(path) for path in paths]


@contextmanager
def live_status(console: Console, description: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time on ``console``; yields a function that changes its text.

    Off a terminal nothing is drawn; callers print a line per status change anyway.
    """
    if not console.is_terminal:
        yield lambda text: None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    row = progress.add_task(description, total=None)
    with progress:
        yield lambda text: progress.update(row, description=text)


def status_word(status: TaskStatus) -> str:
    """A status for people, e.g. ``succeed`` → ``succeeded``."""
    return {
        TaskStatus.SUBMITTED: "submitted",
        TaskStatus.PROCESSING: "processing",
        TaskStatus.SUCCEED: "succeeded",
        TaskStatus.FAILED: "failed",
    }.get(status, str(status))


async def follow(
    client: KlingClient, task: Task | str, console: Console, *, poll: PollPolicy | None = None
) -> Task:
    """Wait for a task with a live spinner, printing a line per status change.

    Returns:
        The final state, which may be ``failed``.
    """
    task_id = task.task_id if isinstance(task, Task) else task
    last: Task | None = None
    with live_status(console, f"task {task_id}: checking") as show:
        async with aclosing(client.watch(task, poll=poll)) as updates:
            async for update in updates:
                last = update
                line = f"task {update.task_id}: {status_word(update.status)}"
                note(console, line)
                show(line)
    assert last is not None
    return last


__all__ = [
    "EXIT_API_ERROR",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TASK_FAILED",
    "CliGroup",
    "Failure",
    "common_options",
    "describe",
    "emit_json",
    "exit_code_for",
    "failure_from",
    "files_json",
    "follow",
    "image_argument",
    "live_status",
    "note",
    "one_line",
    "poll_policy",
    "require_api_key",
    "run",
    "status_word",
    "stderr_console",
    "stdout_console",
    "task_json",
    "task_lines",
    "wait_options",
]
