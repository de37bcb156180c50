"""End-to-end tests of the ``kling-async`` command against FakeKlingServer.

Most tests run the command in-process with click's ``CliRunner`` (the command runs its own event
loop, so the fake server runs on a loop in a background thread); a few run it as a subprocess.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import kling_async
import kling_async._client
from kling_async import RetryPolicy, _cli_app, _cli_demo, cli
from kling_async._cli_app import app
from kling_async._cli_common import live_status
from kling_async.testing import FakeKlingServer, Fault
from tests._images import make_png

KEY = "sk-cli-secret-0123456789"
FAST = ["--poll-interval", "0.01"]
URL = "https://img.example.com/a.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_T = TypeVar("_T")


class ServerThread:
    """A FakeKlingServer on its own event loop in a background thread."""

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: FakeKlingServer = self.call_async(self._start(options))

    async def _start(self, options: dict[str, Any]) -> FakeKlingServer:
        server = FakeKlingServer(**options)
        await server.start()
        return server

    def call_async(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def call(self, func: Callable[[], _T]) -> _T:
        """Run ``func`` on the server's loop (server state is not thread-safe)."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(func())
            except BaseException as exc:
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def close(self) -> None:
        self.call_async(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def creates(self) -> list[dict[str, Any]]:
        """The JSON bodies of the create requests received."""
        return self.call(lambda: [r.json for r in self.server.requests if r.route == "create"])


def server_factory() -> Iterator[Callable[..., ServerThread]]:
    """The body of a ``make_server`` fixture: start servers on demand, stop them after."""
    started: list[ServerThread] = []

    def make(**options: Any) -> ServerThread:
        options.setdefault("api_key", KEY)
        fake = ServerThread(**options)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        fake.close()


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEERAPI_KEY", "DEERAPI_BASE_URL", "KLING_ASYNC_DEBUG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    yield from server_factory()


@pytest.fixture
def fake(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)


def invoke(fake: ServerThread | None, *args: str, key: str | None = KEY) -> Result:
    env: dict[str, str | None] = {"DEERAPI_KEY": key}
    if fake is not None:
        env["DEERAPI_BASE_URL"] = fake.base_url
    return CliRunner().invoke(app, list(args), env=env, prog_name="kling-async")


def error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def subjects(tmp_path: pathlib.Path) -> list[str]:
    paths = []
    for name in ("cat.png", "dog.png"):
        path = tmp_path / name
        path.write_bytes(make_png(400, 400))
        paths.append(str(path))
    return paths


# -- generate ---------------------------------------------------------------------------------


def test_generate_submits_follows_and_downloads(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "out"
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        URL,
        "--prompt",
        "two friends having tea",
        "-n",
        "2",
        "--aspect-ratio",
        "1:1",
        "--out",
        str(out),
        *FAST,
    )

    assert result.exit_code == 0, result.output
    files = [pathlib.Path(line) for line in result.stdout.splitlines()]
    assert len(files) == 2
    assert all(path.parent == out and path.read_bytes().startswith(PNG_MAGIC) for path in files)
    assert "succeeded" in result.stderr
    [body] = fake.creates()
    assert body["n"] == 2
    assert body["aspect_ratio"] == "1:1"
    images = [item["subject_image"] for item in body["subject_image_list"]]
    assert images[1] == URL
    assert not images[0].startswith(("http", "data:"))  # the local file went as base64


def test_generate_json_prints_one_object(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        subjects[1],
        "--prompt",
        "tea",
        "--out",
        str(tmp_path / "o"),
        "--json",
        *FAST,
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "succeed"
    assert data["task_id"] in fake.server.tasks
    assert [pathlib.Path(path).is_file() for path in data["files"]] == [True]


def test_no_wait_then_status_wait_and_download(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    fake.server.auto_progress = False
    submitted = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        subjects[1],
        "--prompt",
        "tea",
        "--no-wait",
        "--external-task-id",
        "mine-1",
    )
    assert submitted.exit_code == 0, submitted.output
    task_id = submitted.stdout.strip()
    assert fake.server.tasks[task_id].external_task_id == "mine-1"

    status = invoke(fake, "status", "mine-1", "--json")  # an external task id works too
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["status"] == "submitted"

    early = invoke(fake, "download", task_id, "--out", str(tmp_path / "early"))
    assert early.exit_code == 1
    assert "has not finished" in error_line(early)

    fake.call(lambda: fake.server.finish(task_id))
    waited = invoke(fake, "wait", task_id, *FAST)
    assert waited.exit_code == 0, waited.output
    assert f"task_id: {task_id}" in waited.stdout
    assert "status: succeed" in waited.stdout

    downloaded = invoke(fake, "download", task_id, "--out", str(tmp_path / "dl"), "--json")
    assert downloaded.exit_code == 0, downloaded.output
    data = json.loads(downloaded.stdout)
    assert data["task_id"] == task_id
    assert pathlib.Path(data["files"][0]).read_bytes().startswith(PNG_MAGIC)
    assert fake.server.create_count == 1


def test_failed_task_exits_1_with_reason_and_ids(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        subjects[1],
        "--prompt",
        "please FAIL",
        "--out",
        str(tmp_path / "o"),
        "--json",
        *FAST,
    )

    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "failed"
    assert data["files"] == []
    line = error_line(result)
    assert line.startswith("Error: task failed:")
    assert f"task_id={data['task_id']}" in line
    assert "request_id=" in line

    shown = invoke(fake, "status", data["task_id"])
    assert shown.exit_code == 1
    assert "status: failed" in shown.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--subject", "{a}"], "subject_images: 1 images given"),
        (["--subject", "{a}", "--subject", "{small}"], "subject_images[1]: image is 200x200"),
        (["--subject", "{a}", "--subject", "missing.png"], "file not found"),
        (["--subject", "{a}", "--subject", "{a}", "-n", "10"], "n: must be an integer"),
        (["--subject", "{a}", "--subject", "{a}", "--aspect-ratio", "5:4"], "'5:4' is not one"),
        (["--subject", "{a}", "--subject", "{a}", "--scene", "{small}"], "scene_image: image"),
    ],
)
def test_bad_input_exits_2_and_sends_nothing(
    fake: ServerThread,
    tmp_path: pathlib.Path,
    subjects: list[str],
    args: list[str],
    needle: str,
) -> None:
    small = tmp_path / "small.png"
    small.write_bytes(make_png(200, 200))
    filled = [arg.format(a=subjects[0], small=small) for arg in args]

    result = invoke(fake, "generate", *filled, "--prompt", "x", "--out", str(tmp_path / "o"))

    assert result.exit_code == 2
    assert needle in error_line(result)
    assert fake.server.create_count == 0


def test_usage_errors_exit_2(fake: ServerThread, subjects: list[str]) -> None:
    no_out = invoke(fake, "generate", "--subject", subjects[0], "--subject", URL, "--prompt", "x")
    assert no_out.exit_code == 2
    assert "--out is required" in no_out.stderr
    unknown = invoke(fake, "status")
    assert unknown.exit_code == 2
    assert fake.server.create_count == 0


def test_missing_key_exits_3(fake: ServerThread) -> None:
    result = invoke(fake, "status", "123", key=None)

    assert result.exit_code == 3
    assert "DEERAPI_KEY" in error_line(result)
    assert fake.server.get_count == 0


def test_api_error_names_request_id_and_never_the_key(
    make_server: Callable[..., ServerThread], subjects: list[str], tmp_path: pathlib.Path
) -> None:
    fake = make_server(api_key="sk-the-right-one")
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        URL,
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "o"),
    )

    assert result.exit_code == 3
    line = error_line(result)
    assert line.startswith("Error: AuthenticationError:")
    assert "request_id=" in line
    assert "code=1002" in line
    assert KEY not in result.output


def test_unknown_task_is_an_api_error(fake: ServerThread) -> None:
    result = invoke(fake, "status", "no-such-task", "--json")

    assert result.exit_code == 3
    line = error_line(result)
    assert "NotFoundError" in line
    assert "request_id=" in line
    assert "task_id=no-such-task" in line
    assert result.stdout == ""


def test_wait_timeout_exits_1(fake: ServerThread, subjects: list[str]) -> None:
    fake.server.auto_progress = False
    submitted = invoke(
        fake, "generate", "--subject", subjects[0], "--subject", URL, "--prompt", "x", "--no-wait"
    )
    task_id = submitted.stdout.strip()

    result = invoke(fake, "wait", task_id, "--timeout", "0.1", *FAST)

    assert result.exit_code == 1
    assert "did not finish within 0.1 s" in error_line(result)


def test_unreachable_api_is_an_api_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kling_async._client, "RetryPolicy", lambda: RetryPolicy(base_delay=0))
    result = CliRunner().invoke(
        app,
        ["status", "1", "--base-url", "http://127.0.0.1:9"],  # nothing listens on port 9
        env={"DEERAPI_KEY": KEY},
    )
    assert result.exit_code == 3
    assert "TransportError" in error_line(result)


# -- demo and fake-server ---------------------------------------------------------------------


def test_demo_writes_real_pngs_offline(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--poll-interval", "0.05"])

    assert result.exit_code == 0, result.output
    files = [pathlib.Path(line) for line in result.stdout.splitlines()]
    assert len(files) == 2
    for path in [*files, out / "subject-1.png", out / "subject-2.png"]:
        assert path.read_bytes().startswith(PNG_MAGIC)
    assert "succeeded" in result.stderr
    assert str(out.resolve()) in result.stderr


def test_demo_json_against_a_given_server(fake: ServerThread, tmp_path: pathlib.Path) -> None:
    fake.server.api_key = None  # the demo sends DEERAPI_KEY if set, else "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(tmp_path), "--base-url", fake.base_url, "--json"]
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "succeed"
    assert len(data["files"]) == 2
    assert fake.server.create_count == 1


def _python(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=30, **kwargs
    )


def test_fake_server_serves_the_api_to_a_separate_process(
    subjects: list[str], tmp_path: pathlib.Path
) -> None:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kling_async",
            "fake-server",
            "--port",
            "0",
            "--json",
            "--task-duration",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = json.loads(server.stdout.readline())["base_url"]
        assert base_url.startswith("http://127.0.0.1:")
        env = {**os.environ, "DEERAPI_KEY": "anything", "DEERAPI_BASE_URL": base_url}
        out = tmp_path / "out"
        result = _python(
            "-m",
            "kling_async",
            "generate",
            "--subject",
            subjects[0],
            "--subject",
            subjects[1],
            "--prompt",
            "tea",
            "--out",
            str(out),
            *FAST,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        assert pathlib.Path(line).read_bytes().startswith(PNG_MAGIC)
    finally:
        server.send_signal(2)  # Ctrl-C stops it cleanly
        _, stderr = server.communicate(timeout=10)
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_no_cli_extra_prints_a_hint_and_exits_2() -> None:
    code = (
        "import sys; sys.modules['click'] = None; sys.modules['rich'] = None\n"
        "import kling_async, kling_async.testing, kling_async.cli\n"  # the core needs neither
        "kling_async.cli.main(['--help'])\n"
    )
    result = _python("-c", code)

    assert result.returncode == 2
    assert result.stderr.strip() == (
        "kling-async: the command line needs the 'cli' extra: pip install 'kling-async[cli]'"
    )


def test_python_dash_m_runs_the_command() -> None:
    result = _python("-m", "kling_async", "--help")

    assert result.returncode == 0
    for command in ("generate", "status", "wait", "download", "batch", "demo", "fake-server"):
        assert command in result.stdout


def test_every_subcommand_accepts_base_url_and_json() -> None:
    for name, command in app.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--base-url", "--json"} <= options, name


# -- error plumbing ---------------------------------------------------------------------------


def test_ctrl_c_while_waiting_says_how_to_pick_the_task_up(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_app, "follow", interrupted)
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        URL,
        "--prompt",
        "x",
        "--out",
        str(tmp_path),
    )

    assert result.exit_code == 130
    [task_id] = fake.server.tasks
    assert f"keeps running; follow it with: kling-async wait {task_id}" in result.stderr


def test_ctrl_c_while_submitting_names_the_external_task_id(
    fake: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(kling_async.KlingClient, "submit", interrupted)
    result = invoke(
        fake, "generate", "--subject", URL, "--subject", URL, "--prompt", "x", "--no-wait"
    )

    assert result.exit_code == 130
    assert "If the task was created, find it with: kling-async status ka-" in result.stderr


def test_an_unusable_output_directory_is_bad_input(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        URL,
        "--prompt",
        "x",
        "--out",
        str(blocker / "out"),
    )

    assert result.exit_code == 2
    assert f"cannot use '{blocker / 'out'}'" in error_line(result)


def test_an_unexpected_error_is_one_line_unless_debugging(
    fake: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(task: Any) -> list[str]:
        raise RuntimeError("boom")

    submitted = invoke(
        fake, "generate", "--subject", URL, "--subject", URL, "--prompt", "x", "--no-wait"
    )
    task_id = submitted.stdout.strip()
    monkeypatch.setattr(_cli_app, "task_lines", broken)
    quiet = invoke(fake, "status", task_id)
    assert quiet.exit_code == 3
    assert "unexpected RuntimeError: boom (set KLING_ASYNC_DEBUG=1" in error_line(quiet)

    monkeypatch.setenv("KLING_ASYNC_DEBUG", "1")
    loud = invoke(fake, "status", task_id)
    assert isinstance(loud.exception, RuntimeError)


def test_library_warnings_are_shown_as_one_line(
    fake: ServerThread, subjects: list[str], tmp_path: pathlib.Path
) -> None:
    # The reply to the create request is lost: the client looks the task up instead of
    # sending it again, and says so.
    fake.call(lambda: fake.server.add_fault(Fault.accept_then_drop(), route="create"))
    result = invoke(
        fake,
        "generate",
        "--subject",
        subjects[0],
        "--subject",
        URL,
        "--prompt",
        "x",
        "--out",
        str(tmp_path),
        *FAST,
    )

    assert result.exit_code == 0, result.output
    assert fake.server.create_count == 1
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "looking it up before re-sending" in warning


def test_demo_reports_a_failed_task(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cli_demo, "DEMO_PROMPT", "FAIL on purpose")
    monkeypatch.setattr(_cli_demo, "DEMO_TASK_SECONDS", 0.0)
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])

    assert result.exit_code == 1
    assert error_line(result).startswith("Error: task failed:")


def test_live_status_draws_on_a_terminal() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=60)
    with live_status(console, "task 1: submitted") as show:
        show("task 1: processing")
    assert "task 1: processing" in buffer.getvalue()


def test_main_runs_in_process_and_hints_without_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert "kling-async" in capsys.readouterr().out

    monkeypatch.delitem(sys.modules, "kling_async._cli_app")
    monkeypatch.setitem(sys.modules, "click", None)
    with pytest.raises(SystemExit) as missing:
        cli.main([])
    assert missing.value.code == 2
    assert "pip install 'kling-async[cli]'" in capsys.readouterr().err
