"""``kling-async batch``: many jobs from a JSON Lines file, journaled so that a rerun resumes."""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from typing import Any

import attrs
import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kling_async._cli_common import (
    EXIT_API_ERROR,
    EXIT_TASK_FAILED,
    Failure,
    common_options,
    describe,
    emit_json,
    note,
    one_line,
    poll_policy,
    require_api_key,
    run,
    stderr_console,
    stdout_console,
    wait_options,
)
from kling_async._cli_jobs import JOURNAL_NAME, Job, JobState, Journal, read_jobs
from kling_async._client import KlingClient
from kling_async._errors import (
    AuthenticationError,
    KlingError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    TaskFailedError,
)
from kling_async._models import Task

#: Errors that no other job can escape either: the batch stops (and can be resumed later).
_FATAL = (AuthenticationError, PermissionDeniedError, QuotaExceededError)


@attrs.define(kw_only=True)
class Result:
    """How one job ended in this run."""

    job: Job
    status: str
    """``succeeded``, ``failed`` (the task failed) or ``error`` (retried on the next run)."""
    task_id: str | None = None
    external_task_id: str | None = None
    files: list[pathlib.Path] = attrs.Factory(list)
    error: str | None = None
    earlier: bool = False
    """Whether the job had finished in an earlier run (and was skipped)."""

    def to_json(self) -> dict[str, Any]:
        """This result as a JSON-ready dictionary."""
        return {
            "id": self.job.id,
            "line": self.job.line,
            "status": self.status,
            "task_id": self.task_id,
            "external_task_id": self.external_task_id,
            "files": [str(path) for path in self.files],
            "error": self.error,
            "earlier": self.earlier,
        }


def _finished(job: Job, state: JobState, out: pathlib.Path) -> Result | None:
    if state.outcome is None:
        return None
    return Result(
        job=job,
        status=state.outcome,
        task_id=state.task_id,
        external_task_id=state.external_task_id,
        files=[out / name for name in state.files],
        error=state.error,
        earlier=True,
    )


class _Runner:
    def __init__(
        self, client: KlingClient, journal: Journal, out: pathlib.Path, console: Console
    ) -> None:
        self.client = client
        self.journal = journal
        self.out = out
        self.console = console

    async def record(self, job: Job, event: str, **fields: Any) -> None:
        await asyncio.to_thread(self.journal.append, job, event, **fields)

    async def lookup(self, external_task_id: str) -> Task | None:
        try:
            return await self.client.get_task(external_task_id)
        except NotFoundError:
            return None

    async def task_for(self, job: Job, state: JobState) -> Task | str:
        """The job's task: recorded, found by its external id, or submitted now."""
        if state.task_id is not None:
            note(self.console, f"job {job.id}: waiting for task {state.task_id} (earlier run)")
            return state.task_id
        # An id from an earlier run, or the user's own (perhaps sent before): the task may exist.
        known = state.external_task_id or job.request.external_task_id
        if known is not None:
            found = await self.lookup(known)
            if found is not None:
                note(self.console, f"job {job.id}: found task {found.task_id} (earlier run)")
                if state.external_task_id is None:
                    await self.record(
                        job, "submitting", external_task_id=known, fingerprint=job.fingerprint
                    )
                await self.record(job, "submitted", task_id=found.task_id)
                return found
        external_task_id = known or f"kb-{uuid.uuid4().hex}"
        # Durably recorded before the create request leaves: a crash from here on is resumed
        # by looking the task up under this id, never by a blind second submission.
        await self.record(
            job, "submitting", external_task_id=external_task_id, fingerprint=job.fingerprint
        )
        request = attrs.evolve(job.request, external_task_id=external_task_id)
        task = await self.client.submit(request)
        await self.record(job, "submitted", task_id=task.task_id)
        note(self.console, f"job {job.id}: submitted task {task.task_id}")
        return task

    async def run(self, job: Job) -> Result:
        state = self.journal.state(job)
        try:
            task = await self.task_for(job, state)
            done = await self.client.wait(task)
            paths = await self.client.download(done, self.out / job.directory)
        except TaskFailedError as exc:
            message = one_line(describe(exc))
            await self.record(job, "failed", task_id=exc.task.task_id, error=message)
            note(self.console, f"job {job.id}: {message}")
            return self._result(job, "failed", error=message)
        except _FATAL:
            raise
        except KlingError as exc:
            message = one_line(describe(exc))
            await self.record(job, "error", error=message)
            note(self.console, f"job {job.id}: {message}")
            return self._result(job, "error", error=message)
        names = [str(path.relative_to(self.out)) for path in paths]
        await self.record(job, "succeeded", task_id=done.task_id, files=names)
        note(self.console, f"job {job.id}: succeeded, {len(paths)} file(s)")
        return self._result(job, "succeeded", files=paths)

    def _result(
        self,
        job: Job,
        status: str,
        *,
        error: str | None = None,
        files: list[pathlib.Path] | None = None,
    ) -> Result:
        state = self.journal.state(job)
        return Result(
            job=job,
            status=status,
            task_id=state.task_id,
            external_task_id=state.external_task_id,
            files=files or [],
            error=error,
        )


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("batch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ok]} ok, {task.fields[bad]} failed", markup=False),
        TimeElapsedColumn(),
        console=console,
    )


async def _run_batch(
    jobs: list[Job],
    journal: Journal,
    out: pathlib.Path,
    *,
    client: KlingClient,
    concurrency: int,
    console: Console,
) -> list[Result]:
    results: dict[str, Result] = {}
    pending: list[Job] = []
    for job in jobs:
        earlier = _finished(job, journal.state(job), out)
        if earlier is None:
            pending.append(job)
        else:
            results[job.id] = earlier
    if results:
        note(console, f"{len(results)} job(s) finished in an earlier run; skipping them")
    runner = _Runner(client, journal, out, console)
    queue = iter(pending)  # shared by the workers: each job is taken exactly once

    def succeeded() -> int:
        return sum(result.status == "succeeded" for result in results.values())

    with _progress(console) as progress:
        ok = succeeded()
        bar = progress.add_task(
            "batch", total=len(jobs), completed=len(results), ok=ok, bad=len(results) - ok
        )

        async def worker() -> None:
            for job in queue:
                results[job.id] = await runner.run(job)
                ok = succeeded()
                progress.update(bar, completed=len(results), ok=ok, bad=len(results) - ok)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(pending)))]
        try:
            if workers:
                done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                for finished in done:
                    finished.result()  # a fatal error stops the batch here
        finally:
            for future in workers:
                future.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return [results[job.id] for job in jobs]


def _table(results: list[Result], out: pathlib.Path) -> Table:
    table = Table(title="kling-async batch")
    for column in ("job", "status", "task id"):
        table.add_column(column)
    table.add_column("files / error", overflow="fold")
    for result in results:
        status = f"{result.status} (earlier)" if result.earlier else result.status
        if result.status == "succeeded":
            detail = f"{len(result.files)} in {out / result.job.directory}"
        else:
            detail = result.error or ""
        table.add_row(result.job.id, status, result.task_id or "-", detail)
    return table


@click.command()
@click.argument("jobs_file", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Directory for the images (one subdirectory per job) and the journal.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Jobs in progress at once.",
)
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help=f"The journal file (default DIR/{JOURNAL_NAME}).",
)
@wait_options
@common_options
def batch(
    jobs_file: pathlib.Path,
    out: pathlib.Path,
    concurrency: int,
    journal_path: pathlib.Path | None,
    poll_interval: float | None,
    timeout: float,
    base_url: str | None,
    as_json: bool,
) -> None:
    """Run every request of a JSON Lines file; run it again to resume after a crash.

    Each line is an object with GenerationRequest field names (subject_images, prompt,
    scene_image, style_image, n, aspect_ratio, model_name, external_task_id), images as URLs
    or file paths relative to the file, and an optional "id". A journal records each job's
    external_task_id before it is submitted, so a rerun never submits a job twice.
    """
    jobs = read_jobs(jobs_file)
    require_api_key()
    console = stderr_console()
    with Journal(journal_path or out / JOURNAL_NAME) as journal:
        journal.check(jobs, jobs_file)
        if journal.skipped_lines:
            note(console, f"ignored {journal.skipped_lines} torn line(s) in {journal.path}")

        async def main() -> list[Result]:
            async with KlingClient(
                base_url=base_url, poll=poll_policy(poll_interval, timeout)
            ) as client:
                return await _run_batch(
                    jobs, journal, out, client=client, concurrency=concurrency, console=console
                )

        resume = f"Run the same command again to resume (journal: {journal.path})."
        try:
            results = run(main(), on_interrupt=lambda: resume)
        except _FATAL as exc:
            raise Failure(f"batch stopped: {describe(exc)}. {resume}", EXIT_API_ERROR) from None
    ok = sum(result.status == "succeeded" for result in results)
    if as_json:
        emit_json(
            {
                "out": str(out),
                "journal": str(journal.path),
                "succeeded": ok,
                "failed": len(results) - ok,
                "jobs": [result.to_json() for result in results],
            }
        )
    else:
        stdout_console().print(_table(results, out))
    note(console, f"{len(results)} job(s): {ok} succeeded, {len(results) - ok} not")
    if ok < len(results):
        raise click.exceptions.Exit(EXIT_TASK_FAILED)
