"""``kling-async batch``: journal, resume after a crash or Ctrl-C, never a second submission."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import Result

from kling_async import KlingClient, _cli_batch
from kling_async._cli_jobs import JOURNAL_NAME, Journal, read_jobs
from kling_async.testing import Fault
from tests._images import make_png
from tests.test_cli import (
    FAST,
    KEY,
    URL,
    ServerThread,
    clean_env,
    error_line,
    invoke,
    server_factory,
)


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    yield from server_factory()


@pytest.fixture
def fake(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    images = tmp_path / "img"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(make_png(400, 400))
    return tmp_path


def job(**fields: Any) -> dict[str, Any]:
    return {"subject_images": ["img/a.png", "img/b.png"], "prompt": "tea", **fields}


def write_jobs(workdir: pathlib.Path, *jobs: dict[str, Any] | str) -> pathlib.Path:
    path = workdir / "jobs.jsonl"
    lines = [item if isinstance(item, str) else json.dumps(item) for item in jobs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_batch(fake: ServerThread, jobs: pathlib.Path, out: pathlib.Path, *extra: str) -> Result:
    return invoke(fake, "batch", str(jobs), "--out", str(out), *FAST, *extra)


def journal_entries(out: pathlib.Path) -> list[dict[str, Any]]:
    text = (out / JOURNAL_NAME).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_no_double_submission(fake: ServerThread, jobs: int) -> None:
    external_ids = [body["external_task_id"] for body in fake.creates()]
    assert fake.server.create_count == jobs
    assert len(external_ids) == len(set(external_ids)) == jobs


def test_batch_runs_every_job(fake: ServerThread, workdir: pathlib.Path) -> None:
    jobs = write_jobs(
        workdir,
        job(id="tea", n=2, aspect_ratio="1:1"),
        "",  # blank lines are skipped but still count
        job(subject_images=[URL, "img/b.png"], scene_image="img/a.png"),
        job(id=7),
    )
    out = workdir / "out"

    result = run_batch(fake, jobs, out, "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["succeeded"] == 3
    assert summary["failed"] == 0
    assert [(item["id"], item["line"]) for item in summary["jobs"]] == [
        ("tea", 1),
        ("3", 3),
        ("7", 4),
    ]
    for item, count in zip(summary["jobs"], (2, 1, 1), strict=True):
        files = [pathlib.Path(path) for path in item["files"]]
        assert len(files) == count
        assert all(path.parent == out / item["id"] and path.is_file() for path in files)
    assert_no_double_submission(fake, 3)
    # The journal names each job's external_task_id before its task id.
    for item in summary["jobs"]:
        events = [e for e in journal_entries(out) if e["job"] == item["id"]]
        assert [e["event"] for e in events] == ["submitting", "submitted", "succeeded"]
        assert events[0]["external_task_id"] == item["external_task_id"]
        assert events[1]["task_id"] == item["task_id"]


def test_summary_table_and_a_rerun_that_sends_nothing(
    fake: ServerThread, workdir: pathlib.Path
) -> None:
    jobs = write_jobs(workdir, job(id="first"), job(id="second"))
    out = workdir / "out"
    assert run_batch(fake, jobs, out).exit_code == 0
    before = (fake.server.create_count, fake.server.get_count)

    again = run_batch(fake, jobs, out)

    assert again.exit_code == 0, again.output
    assert (fake.server.create_count, fake.server.get_count) == before
    assert "2 job(s) finished in an earlier run" in again.stderr
    for needle in ("first", "second", "succeeded (earlier)"):
        assert needle in again.stdout


def test_a_failed_job_exits_1_and_is_not_resubmitted(
    fake: ServerThread, workdir: pathlib.Path
) -> None:
    jobs = write_jobs(workdir, job(id="ok"), job(id="bad", prompt="FAIL please"))
    out = workdir / "out"

    first = run_batch(fake, jobs, out, "--json")
    second = run_batch(fake, jobs, out, "--json")

    for result in (first, second):
        assert result.exit_code == 1
        summary = json.loads(result.stdout)
        assert (summary["succeeded"], summary["failed"]) == (1, 1)
        bad = summary["jobs"][1]
        assert bad["status"] == "failed"
        assert "task failed" in bad["error"]
    assert json.loads(second.stdout)["jobs"][1]["earlier"] is True
    assert_no_double_submission(fake, 2)


def test_interrupted_batch_resumes_without_a_second_submission(
    fake: ServerThread, workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.server.auto_progress = False  # tasks run until the test finishes them
    jobs = write_jobs(workdir, *(job(id=f"j{i}") for i in range(1, 6)))
    out = workdir / "out"
    original = KlingClient.submit
    calls = 0

    async def crash_on_third(self: KlingClient, request: Any) -> Any:
        nonlocal calls
        calls += 1
        number = calls
        task = await original(self, request)
        if number == 3:  # the API created the task, but the journal never hears its id
            raise KeyboardInterrupt
        return task

    monkeypatch.setattr(KlingClient, "submit", crash_on_third)
    interrupted = run_batch(fake, jobs, out, "--concurrency", "3")
    monkeypatch.undo()

    assert interrupted.exit_code == 130
    assert "Interrupted. Run the same command again to resume" in interrupted.stderr
    # Three jobs were journaled before being sent. The third's task exists but its id never
    # reached the journal; the other two may or may not have got that far.
    created = fake.server.create_count
    entries = journal_entries(out)
    journaled = [e["external_task_id"] for e in entries if e["event"] == "submitting"]
    with_task_id = sum(e["event"] == "submitted" for e in entries)
    assert len(journaled) == 3
    assert with_task_id < created <= 3

    for task_id in list(fake.server.tasks):
        fake.call(lambda task_id=task_id: fake.server.finish(task_id))
    fake.server.auto_progress = True
    resumed = run_batch(fake, jobs, out, "--concurrency", "3", "--json")

    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["succeeded"] == 5
    assert resumed.stderr.count("waiting for task") == with_task_id
    assert resumed.stderr.count("found task") == created - with_task_id  # by external_task_id
    assert_no_double_submission(fake, 5)
    assert set(journaled) <= {body["external_task_id"] for body in fake.creates()}


def test_ctrl_c_in_a_real_process_then_resume(fake: ServerThread, workdir: pathlib.Path) -> None:
    fake.server.auto_progress = False
    jobs = write_jobs(workdir, *(job(id=f"j{i}") for i in range(1, 5)))
    out = workdir / "out"
    env = {**os.environ, "DEERAPI_KEY": KEY, "DEERAPI_BASE_URL": fake.base_url}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kling_async",
            "batch",
            str(jobs),
            "--out",
            str(out),
            "--concurrency",
            "2",
            *FAST,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    seen: list[str] = []
    while sum("submitted task" in line for line in seen) < 2:
        line = process.stderr.readline()
        assert line, "".join(seen)
        seen.append(line)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=20)

    assert process.returncode == 130, "".join(seen) + rest
    assert "Run the same command again to resume" in rest
    assert "Traceback" not in rest
    assert fake.server.create_count == 2

    for task_id in list(fake.server.tasks):
        fake.call(lambda task_id=task_id: fake.server.finish(task_id))
    fake.server.auto_progress = True
    resumed = run_batch(fake, jobs, out, "--concurrency", "2")

    assert resumed.exit_code == 0, resumed.output
    assert_no_double_submission(fake, 4)


def test_journaled_external_ids_are_looked_up_then_reused(
    fake: ServerThread, workdir: pathlib.Path
) -> None:
    jobs = write_jobs(workdir, job(id="landed"), job(id="lost"))
    out = workdir / "out"
    landed, lost = read_jobs(jobs)
    # A crash right after sending "landed" (the API has it), and before sending "lost".
    created = invoke(
        fake,
        "generate",
        "--subject",
        URL,
        "--subject",
        URL,
        "--prompt",
        "tea",
        "--no-wait",
        "--external-task-id",
        "kb-landed",
    )
    assert created.exit_code == 0, created.output
    with Journal(out / JOURNAL_NAME) as journal:
        journal.append(
            landed, "submitting", external_task_id="kb-landed", fingerprint=landed.fingerprint
        )
        journal.append(lost, "submitting", external_task_id="kb-lost", fingerprint=lost.fingerprint)

    result = run_batch(fake, jobs, out, "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["jobs"][0]["task_id"] == created.stdout.strip()
    assert [body["external_task_id"] for body in fake.creates()] == ["kb-landed", "kb-lost"]
    assert_no_double_submission(fake, 2)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "jobs.jsonl:2: not valid JSON"),
        ("[1, 2]", "jobs.jsonl:2: each line must be a JSON object"),
        (json.dumps(job(colour="red")), "jobs.jsonl:2: unknown field(s): colour"),
        (json.dumps(job(subject_images=["img/a.png"])), "jobs.jsonl:2: subject_images: 1 images"),
        (json.dumps(job(subject_images="img/a.png")), "jobs.jsonl:2: subject_images: expected"),
        (json.dumps(job(scene_image="img/none.png")), "jobs.jsonl:2: scene_image: file not found"),
        (json.dumps(job(style_image=3)), "jobs.jsonl:2: style_image: expected a URL"),
        (json.dumps(job(n=0)), "jobs.jsonl:2: n: must be an integer"),
        (json.dumps(job(id="one")), "jobs.jsonl:2: job id 'one' is already used on line 1"),
        (json.dumps(job(id=True)), 'jobs.jsonl:2: "id" must be'),
    ],
)
def test_a_bad_line_stops_everything_with_exit_2(
    fake: ServerThread, workdir: pathlib.Path, line: str, needle: str
) -> None:
    jobs = write_jobs(workdir, job(id="one"), line)

    result = run_batch(fake, jobs, workdir / "out")

    assert result.exit_code == 2
    assert needle in error_line(result)
    assert fake.server.create_count == 0


def test_empty_or_missing_batch_file_exits_2(fake: ServerThread, workdir: pathlib.Path) -> None:
    empty = write_jobs(workdir, "")
    assert run_batch(fake, empty, workdir / "out").exit_code == 2
    missing = invoke(fake, "batch", str(workdir / "nope.jsonl"), "--out", str(workdir / "o"))
    assert missing.exit_code == 2


def test_a_changed_job_is_not_resumed(fake: ServerThread, workdir: pathlib.Path) -> None:
    out = workdir / "out"
    assert run_batch(fake, write_jobs(workdir, job(id="a")), out).exit_code == 0

    changed = run_batch(fake, write_jobs(workdir, job(id="a", prompt="coffee")), out)

    assert changed.exit_code == 2
    assert "job 'a' differs from the one recorded" in error_line(changed)
    assert fake.server.create_count == 1


def test_authentication_error_stops_the_batch_with_exit_3(
    make_server: Callable[..., ServerThread], workdir: pathlib.Path
) -> None:
    fake = make_server(api_key="sk-another-key")
    jobs = write_jobs(workdir, *(job(id=f"j{i}") for i in range(4)))

    result = run_batch(fake, jobs, workdir / "out", "--concurrency", "1")

    assert result.exit_code == 3
    line = error_line(result)
    assert "batch stopped: AuthenticationError" in line
    assert "request_id=" in line
    assert "resume" in line
    assert fake.server.create_count == 0
    assert len(fake.creates()) == 1  # the first refusal stopped the rest


def test_concurrency_bounds_the_jobs_in_flight(
    make_server: Callable[..., ServerThread], workdir: pathlib.Path
) -> None:
    fake = make_server(task_duration=0.05)
    jobs = write_jobs(workdir, *(job(id=f"j{i}") for i in range(6)))

    result = run_batch(fake, jobs, workdir / "out", "--concurrency", "2")

    assert result.exit_code == 0, result.output
    assert fake.server.peak_slots_in_use == 2


def test_a_locked_journal_is_refused(fake: ServerThread, workdir: pathlib.Path) -> None:
    jobs = write_jobs(workdir, job())
    out = workdir / "out"
    with Journal(out / JOURNAL_NAME):
        result = run_batch(fake, jobs, out)

    assert result.exit_code == 2
    assert "in use by another kling-async batch" in error_line(result)
    assert fake.server.create_count == 0


def test_a_torn_journal_line_is_ignored(fake: ServerThread, workdir: pathlib.Path) -> None:
    jobs = write_jobs(workdir, job(id="x"))
    out = workdir / "out"
    out.mkdir()
    (out / JOURNAL_NAME).write_text('{"job": "x", "event": "subm', encoding="utf-8")

    result = run_batch(fake, jobs, out, "--journal", str(out / JOURNAL_NAME))

    assert result.exit_code == 0, result.output
    assert "ignored 1 torn line(s)" in result.stderr
    torn, *lines = (out / JOURNAL_NAME).read_text(encoding="utf-8").splitlines()
    assert torn == '{"job": "x", "event": "subm'  # left alone, the next line starts afresh
    assert [json.loads(line)["event"] for line in lines] == ["submitting", "submitted", "succeeded"]


def test_an_errored_job_is_retried_under_the_same_external_id(
    fake: ServerThread, workdir: pathlib.Path
) -> None:
    jobs = write_jobs(workdir, job(id="ok"), job(id="refused"))
    out = workdir / "out"
    fake.call(lambda: fake.server.add_fault(Fault.status(400, 1301), route="create"))

    first = run_batch(fake, jobs, out, "--concurrency", "1")

    assert first.exit_code == 1
    assert "ContentPolicyError" in first.stdout  # the summary table
    refused = [body["external_task_id"] for body in fake.creates()]
    assert fake.server.create_count == 1

    second = run_batch(fake, jobs, out, "--json")

    assert second.exit_code == 0, second.output
    retried = [body["external_task_id"] for body in fake.creates()]
    assert retried[len(refused) :] == [refused[0]]  # same id: the API never created it
    assert fake.server.create_count == 2


def test_ctrl_c_before_anything_runs_exits_130(
    fake: ServerThread, workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(path: pathlib.Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_batch, "read_jobs", interrupted)
    result = run_batch(fake, write_jobs(workdir, job()), workdir / "out")

    assert result.exit_code == 130
    assert "Interrupted." in result.stderr


def test_a_job_with_its_own_external_id_is_looked_up_first(
    fake: ServerThread, workdir: pathlib.Path
) -> None:
    # Sent before, by hand or by a batch whose journal was lost: not sent again.
    created = invoke(
        fake,
        "generate",
        "--subject",
        URL,
        "--subject",
        URL,
        "--prompt",
        "tea",
        "--no-wait",
        "--external-task-id",
        "mine-7",
    )
    jobs = write_jobs(workdir, job(id="seven", external_task_id="mine-7"))

    result = run_batch(fake, jobs, workdir / "out", "--json")

    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)["jobs"]
    assert item["task_id"] == created.stdout.strip()
    assert item["external_task_id"] == "mine-7"
    assert fake.server.create_count == 1
