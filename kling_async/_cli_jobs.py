"""Batch files (JSON Lines of requests) and the batch journal that makes a batch resumable.

The journal is an append-only JSON Lines file, flushed and fsync'd after every line. A job's
``external_task_id`` is recorded *before* its create request is sent and its task id as soon as
it is known, so that a batch interrupted at any point can be resumed without creating any task
twice: a job with a task id is waited on; a job with only an ``external_task_id`` is looked up by
it (found: waited on; not found: submitted again under the same id); a finished job is skipped.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import sys
import threading
from typing import IO, Any, Final

import attrs

from kling_async._cli_common import EXIT_BAD_INPUT, Failure, image_argument
from kling_async._download import safe_stem
from kling_async._errors import RequestValidationError
from kling_async._models import GenerationRequest

#: The journal's file name inside the output directory.
JOURNAL_NAME: Final = "kling-batch-journal.jsonl"

_IMAGE_FIELDS: Final = ("scene_image", "style_image")
_FIELDS: Final = frozenset(
    {
        "id",
        "subject_images",
        "prompt",
        "scene_image",
        "style_image",
        "n",
        "aspect_ratio",
        "model_name",
        "callback_url",
        "external_task_id",
    }
)


@attrs.frozen(kw_only=True)
class Job:
    """One line of a batch file."""

    id: str
    """The job's ``"id"``, or its line number."""
    line: int
    """The line number in the batch file, from 1."""
    request: GenerationRequest
    """The request, validated."""
    fingerprint: str
    """A hash of the line's content, to notice a batch file that changed between runs."""

    @property
    def directory(self) -> str:
        """The job's subdirectory of the output directory."""
        return safe_stem(self.id)


def _fail(path: pathlib.Path, line: int, message: str) -> Failure:
    return Failure(f"{path}:{line}: {message}", EXIT_BAD_INPUT)


def _request(data: dict[str, Any], base: pathlib.Path) -> GenerationRequest:
    subjects = data.get("subject_images")
    if not isinstance(subjects, list) or not all(isinstance(item, str) for item in subjects):
        raise RequestValidationError("subject_images", "expected a list of URLs or file paths")
    fields: dict[str, Any] = {
        key: value for key, value in data.items() if key not in ("id", "subject_images")
    }
    for name in _IMAGE_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise RequestValidationError(name, "expected a URL or a file path")
        fields[name] = image_argument(value, relative_to=base)
    return GenerationRequest(
        subject_images=[image_argument(item, relative_to=base) for item in subjects], **fields
    )


def read_jobs(path: pathlib.Path) -> list[Job]:
    """Read and validate every job of a batch file; nothing is sent.

    Raises:
        Failure: A line is not a valid job (exit code 2), naming the file and line.
    """
    base = path.resolve().parent
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _fail(path, number, f"not valid JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise _fail(path, number, "each line must be a JSON object")
            unknown = sorted(set(data) - _FIELDS)
            if unknown:
                raise _fail(path, number, f"unknown field(s): {', '.join(unknown)}")
            job_id = data.get("id", number)
            if not isinstance(job_id, (str, int)) or isinstance(job_id, bool) or job_id == "":
                raise _fail(path, number, '"id" must be a non-empty string or a number')
            job_id = str(job_id)
            directory = safe_stem(job_id)
            if directory in seen:
                raise _fail(
                    path, number, f"job id {job_id!r} is already used on line {seen[directory]}"
                )
            seen[directory] = number
            try:
                request = _request(data, base)
            except (RequestValidationError, TypeError) as exc:
                raise _fail(path, number, str(exc)) from None
            canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
            fingerprint = hashlib.sha256(canonical.encode()).hexdigest()[:16]
            jobs.append(Job(id=job_id, line=number, request=request, fingerprint=fingerprint))
    if not jobs:
        raise Failure(f"{path}: no jobs in the batch file", EXIT_BAD_INPUT)
    return jobs


@attrs.define
class JobState:
    """What the journal says about one job."""

    fingerprint: str | None = None
    external_task_id: str | None = None
    task_id: str | None = None
    outcome: str | None = None
    """``"succeeded"`` or ``"failed"`` once the job is finished, else ``None``."""
    files: list[str] = attrs.Factory(list)
    error: str | None = None


def _apply(state: JobState, entry: dict[str, Any]) -> None:
    event = entry.get("event")
    if event == "submitting":
        # A (re-)submission under this external id: anything older is superseded.
        state.fingerprint = entry.get("fingerprint")
        state.external_task_id = entry.get("external_task_id")
        state.task_id = None
        state.outcome = None
        state.files = []
        state.error = None
    elif event == "submitted":
        state.task_id = entry.get("task_id")
    elif event in ("succeeded", "failed"):
        state.outcome = event
        state.task_id = entry.get("task_id") or state.task_id
        state.files = list(entry.get("files") or [])
        state.error = entry.get("error")
    elif event == "error":
        state.error = entry.get("error")


class Journal:
    """The append-only, fsync'd record of a batch's progress.

    Use it as a context manager: it holds an exclusive lock on the file (where the platform
    has ``fcntl``), so that two runs of one batch cannot race.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.states: dict[str, JobState] = {}
        self.skipped_lines = 0
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fh = self.path.open("a+", encoding="utf-8")
        try:
            _lock_file(fh, self.path)
            fh.seek(0)
            text = fh.read()
        except BaseException:
            fh.close()
            raise
        self._file = fh
        self._load(text)
        if text and not text.endswith("\n"):
            fh.write("\n")  # a line torn by a crash: start the next one on its own line
            self._sync()
        if not existed:
            _sync_directory(self.path.parent)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _load(self, text: str) -> None:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                self.skipped_lines += 1  # torn by a crash while it was being written
                continue
            if isinstance(entry, dict) and isinstance(entry.get("job"), str):
                _apply(self.states.setdefault(entry["job"], JobState()), entry)

    def state(self, job: Job) -> JobState:
        """The recorded state of ``job`` (empty when the journal does not know it)."""
        return self.states.setdefault(job.id, JobState())

    def check(self, jobs: list[Job], batch_file: pathlib.Path) -> None:
        """Refuse to resume when a recorded job's line has changed since it was submitted.

        Raises:
            Failure: A job differs from its journal record (exit code 2).
        """
        for job in jobs:
            recorded = self.states.get(job.id)
            if recorded and recorded.fingerprint and recorded.fingerprint != job.fingerprint:
                raise Failure(
                    f"{batch_file}:{job.line}: job {job.id!r} differs from the one recorded in "
                    f"{self.path}; use another --out (or --journal) for a changed batch",
                    EXIT_BAD_INPUT,
                )

    def append(self, job: Job, event: str, **fields: Any) -> None:
        """Record an event for ``job`` durably (written, flushed and fsync'd) before returning."""
        entry = {
            "job": job.id,
            "event": event,
            **{key: value for key, value in fields.items() if value is not None},
            "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            assert self._file is not None, "the journal is not open"
            self._file.write(line)
            self._sync()
            _apply(self.state(job), entry)

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())


if sys.platform != "win32":
    import fcntl

    def _lock_file(fh: IO[str], path: pathlib.Path) -> None:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Failure(
                f"{path} is in use by another kling-async batch", EXIT_BAD_INPUT
            ) from None

    def _sync_directory(directory: pathlib.Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

else:  # pragma: no cover - no advisory locks or directory fsync on Windows

    def _lock_file(fh: IO[str], path: pathlib.Path) -> None:
        pass

    def _sync_directory(directory: pathlib.Path) -> None:
        pass
