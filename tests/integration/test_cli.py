"""The jobyard CLI against a real server: as a subprocess where the process matters (exit codes,
environment, terminals, signals, restarts, no tracebacks), in process with typer's CliRunner
everywhere else."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from jobyard.cli import app
from jobyard.cli.follow import Follower
from jobyard.client import ApiError, Client, ClientError, JobState, ServerUnreachable
from jobyard.client.discovery import DEFAULT_URL, discover_url, read_url_file, url_and_origin
from tests.helpers import LiveServer, wait_for, with_default_signals
from tests.integration.server_process import FAST, ServerProcess


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, live_server.token) as sdk:
        yield sdk
        for job in sdk.iter_jobs():  # jobs outlive the server: leave none running
            if not job.is_terminal():
                with contextlib.suppress(ApiError):
                    sdk.stop(job.id)
                sdk.wait(job.id, timeout=15, poll=0.05)


@pytest.fixture
def cli(live_server: LiveServer, client: Client) -> Iterator[CliRunnerFor]:
    yield CliRunnerFor(live_server)


class CliRunnerFor:
    """`jobyard --url URL --token TOKEN ARGS...` in process."""

    def __init__(self, server: LiveServer) -> None:
        self._server = server
        self._runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        options = ["--url", self._server.url, "--token", self._server.token]
        result = self._runner.invoke(app, [*options, *args])
        assert "Traceback" not in result.output, result.output
        return result


def run_jobyard(
    server: LiveServer, *args: str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m jobyard ARGS...` with JOBYARD_URL and JOBYARD_TOKEN pointing at the server."""
    environ = {
        **os.environ,
        "JOBYARD_URL": server.url,
        "JOBYARD_TOKEN": server.token,
        "JOBYARD_HOME": str(tmp_path / "client-home"),  # never the developer's own token
        "COLUMNS": "200",
        **env,
    }
    return jobyard(*args, env=environ)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def job_ref(submitted: str) -> str:
    """The id out of 'submitted job 12 (AbCdEf)'."""
    return submitted.split()[2]


# ---- as a subprocess --------------------------------------------------------------------------


def test_submit_wait_shows_the_output_and_exits_with_the_job_exit_code(
    live_server: LiveServer, client: Client, tmp_path: Path
) -> None:
    done = run_jobyard(
        live_server, "submit", "--wait", "--", "sh", "-c", "echo out; exit 3", tmp_path=tmp_path
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "out\n"  # stdout is the job's output only
    assert "submitted job" in done.stderr and "FAILED" in done.stderr
    assert client.list().items[0].exit_code == 3


def test_submit_wait_of_a_shell_string_then_list_shows_the_table(
    live_server: LiveServer, client: Client, tmp_path: Path
) -> None:
    done = run_jobyard(
        live_server, "submit", "--wait", "--name", "greet", "--", "echo hi && echo there",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "hi\nthere\n"), done.stderr
    listed = run_jobyard(live_server, "list", tmp_path=tmp_path)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == [
        "ID", "DISPLAY", "NAME", "STATE", "QUEUE", "OWNER", "CREATED", "TIME", "EXIT", "WAITING",
    ]  # fmt: skip
    job = client.list().items[0]
    cells = row.split()
    assert cells[:6] == [str(job.id), job.display_id, "greet", "SUCCEEDED", "default", "admin"]
    assert cells[6].endswith("s") and cells[7] == "ago"  # created seconds ago
    assert re.fullmatch(r"\d+:\d\d", cells[8]) and cells[-1] == "0"


def test_a_bad_token_prints_an_error_and_exits_1(
    live_server: LiveServer, client: Client, tmp_path: Path
) -> None:
    done = run_jobyard(live_server, "list", tmp_path=tmp_path, JOBYARD_TOKEN="wrong")
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "token" in done.stderr
    assert done.stdout == ""


def test_an_unknown_job_exits_1_with_not_found(
    live_server: LiveServer, client: Client, tmp_path: Path
) -> None:
    done = run_jobyard(live_server, "status", "no-such-job", tmp_path=tmp_path)
    assert done.returncode == 1 and "not found" in done.stderr
    assert done.stderr.startswith("error: ")


def test_an_unreachable_server_is_named_in_the_error(
    live_server: LiveServer, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_jobyard(live_server, "--url", url, "logs", "1", tmp_path=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot reach the jobyard server at {url}")


# ---- in process -------------------------------------------------------------------------------


def test_submit_sends_every_option(cli: CliRunnerFor, client: Client) -> None:
    result = cli(
        "submit", "--name", "train", "-e", "A=1", "--env", "B=x=y", "--cpus", "0.5",
        "--memory", "1GiB", "--gpus", "0", "--replicas", "2", "--queue", "gpu",
        "--priority", "7", "--label", "team=ml", "--submission-id", "run-1",
        "--max-runtime", "60", "--workdir", "/tmp", "--", "python", "-c", "print(1)",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job = client.get(job_ref(result.stdout))
    assert result.stdout == f"submitted job {job.id} ({job.display_id})\n"
    assert (job.name, job.queue, job.priority, job.submission_id) == ("train", "gpu", 7, "run-1")
    assert job.labels == {"team": "ml"} and job.spec.env == {"A": "1", "B": "x=y"}
    assert job.spec.entrypoint == ["python", "-c", "print(1)"]
    assert (job.spec.working_dir, job.spec.replicas, job.spec.max_runtime) == ("/tmp", 2, 60)
    assert (job.spec.resources.cpus, job.spec.resources.memory) == (0.5, 1024)


def test_submit_without_a_separator_keeps_the_command_options(cli: CliRunnerFor) -> None:
    result = cli("submit", "--wait", "sh", "-c", "echo $0; exit 4", "--wait")
    assert (result.exit_code, result.stdout) == (4, "--wait\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--env", "NOVALUE", "--", "true"], "--env"),
        (["submit", "--label", "=x", "--", "true"], "--label"),
        (["list", "--limit", "0"], "--limit"),
    ],
)
def test_usage_errors_exit_2(cli: CliRunnerFor, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2 and message in result.stderr


def test_bad_input_names_the_option(cli: CliRunnerFor) -> None:
    result = cli("submit", "--gpus", "64", "--", "true")
    assert result.exit_code == 1
    assert result.stderr == "error: --gpus: needs 64 GPUs, the pool has 0\n"
    env = cli("submit", "-e", "a.b=1", "--", "true")
    assert env.stderr.startswith("error: --env: ") and "field" not in env.stderr


def test_list_filters_pages_and_prints_json(cli: CliRunnerFor, client: Client) -> None:
    ids = [client.submit(["true"], name=f"n{i}", labels={"set": "a"}).id for i in range(3)]
    client.submit(["true"], name="lonely", queue="batch")
    limited = cli("list", "--label", "set=a", "--limit", "2")
    assert limited.exit_code == 0 and "showing 2 of 3 jobs" in limited.stderr
    assert len(limited.stdout.splitlines()) == 3  # header + 2 rows
    everything = json.loads(cli("list", "--all", "--limit", "1", "--label", "set", "--json").stdout)
    assert sorted(item["id"] for item in everything["items"]) == ids
    assert (everything["total"], everything["next_cursor"]) == (3, None)
    by_queue = json.loads(cli("list", "--queue", "batch", "-q", "lone", "--json").stdout)
    assert [item["name"] for item in by_queue["items"]] == ["lonely"]
    for job_id in ids:
        client.wait(job_id)
    states = json.loads(cli("list", "--state", "succeeded,failed", "--json").stdout)
    assert {item["state"] for item in states["items"]} <= {"SUCCEEDED", "FAILED"}


def test_status_shows_details_state_log_and_tasks(cli: CliRunnerFor, client: Client) -> None:
    job = client.wait(client.submit("echo [bold]x[/bold]", name="[red]markup[/red]").id)
    text = cli("status", job.display_id)
    assert text.exit_code == 0
    assert f"Job {job.id} ({job.display_id})" in text.stdout
    assert "[red]markup[/red]" in text.stdout  # user data is never read as Rich markup
    assert "State log" in text.stdout and "QUEUED" in text.stdout and "SUCCEEDED" in text.stdout
    assert f"{job.display_id}-worker-0" in text.stdout
    as_json = json.loads(cli("status", str(job.id), "--json").stdout)
    assert as_json["id"] == job.id and as_json["tasks"][0]["exit_code"] == 0


def test_logs_tail_task_and_follow(cli: CliRunnerFor, client: Client) -> None:
    job = client.submit('for i in 1 2 3; do echo "r$RANK $i"; done; sleep 0.2', replicas=2)
    followed = cli("logs", "-f", str(job.id))
    assert followed.stdout == "r0 1\nr0 2\nr0 3\n"
    client.wait(job.id)
    assert cli("logs", str(job.id)).stdout == "r0 1\nr0 2\nr0 3\n"
    assert cli("logs", str(job.id), "--tail", "1").stdout == "r0 3\n"
    assert cli("logs", str(job.id), "--task", "1", "--tail", "2").stdout == "r1 2\nr1 3\n"
    missing = cli("logs", str(job.id), "--task", "5", "--follow")
    assert missing.exit_code == 1 and "task" in missing.stderr


def test_stop_wait_events_and_delete(cli: CliRunnerFor, client: Client) -> None:
    job = client.submit("sleep 30")
    wait_for(lambda: client.get(job.id).state is JobState.RUNNING)
    timed_out = cli("wait", str(job.id), "--timeout", "0.2")
    assert timed_out.exit_code == 1 and "did not finish" in timed_out.stderr
    refused = cli("delete", str(job.id))
    assert refused.exit_code == 1 and refused.stderr.startswith("error: ")
    assert "use --force" in refused.stderr and "force=true" not in refused.stderr
    stopped = cli("stop", job.display_id)
    assert stopped.exit_code == 0 and ("STOPPING" in stopped.stdout or "STOPPED" in stopped.stdout)
    waited = cli("wait", str(job.id))
    done = client.get(job.id)
    assert done.state is JobState.STOPPED and "STOPPED" in waited.stdout
    assert waited.exit_code == (done.exit_code or 1)
    again = cli("stop", str(job.id))
    assert again.exit_code == 1 and "already finished" in again.stderr
    events = cli("events", str(job.id))
    assert events.exit_code == 0
    assert "REASON" in events.stdout and "Killing" in events.stdout
    assert json.loads(cli("events", str(job.id), "--json").stdout)[-1]["reason"] == "Stopped"
    assert cli("delete", str(job.id)).stdout == f"deleted job {job.id}\n"
    assert "not found" in cli("status", str(job.id)).stderr


def test_delete_force_stops_a_live_job(cli: CliRunnerFor, client: Client) -> None:
    job = client.submit("sleep 30")
    assert cli("delete", "--force", str(job.id)).exit_code == 0
    assert client.list().total == 0


def test_wait_exits_with_the_job_exit_code(cli: CliRunnerFor, client: Client) -> None:
    ok = client.submit(["true"])
    failed = client.submit("exit 5")
    assert cli("wait", str(ok.id)).exit_code == 0
    result = cli("wait", str(failed.id))
    assert result.exit_code == 5 and "FAILED" in result.stdout


def test_the_server_command_keeps_its_options() -> None:
    result = CliRunner().invoke(app, ["server", "--help"])
    assert result.exit_code == 0
    assert all(option in result.stdout for option in ("--host", "--port", "--home"))


def test_pools_queues_and_why_a_job_waits(cli: CliRunnerFor, client: Client) -> None:
    hog = client.submit(["sleep", "30"], resources={"cpus": 8})
    wait_for(lambda: client.get(hog.id).state is JobState.RUNNING)
    waiting = client.submit(["true"], resources={"cpus": 1}, queue="gpu")
    wait_for(lambda: client.get(waiting.id).pending_reason)

    pools = cli("pools")
    assert pools.exit_code == 0, pools.output
    assert "local" in pools.output and "8/8" in pools.output
    queues = json.loads(cli("queues", "--json").stdout)
    by_name = {q["name"]: q for q in queues}
    assert (by_name["default"]["running_jobs"], by_name["gpu"]["queued_jobs"]) == (1, 1)
    assert by_name["gpu"]["priority"] == 10

    status = cli("status", str(waiting.id))
    assert "#1 WAITING_FOR_CAPACITY" in status.output
    assert "1 CPUs (0 free)" in status.output
    listing = json.loads(cli("list", "--state", "QUEUED", "--json").stdout)["items"]
    assert [(j["queue_position"], j["pending_reason"]) for j in listing] == [
        (1, "WAITING_FOR_CAPACITY")
    ]


def test_errors_speak_of_options_not_api_fields(cli: CliRunnerFor) -> None:
    taken = cli("user", "add", "admin")
    assert (taken.exit_code, taken.stderr) == (1, "error: user 'admin' already exists\n")
    missing = cli("logs", "no-such-job", "--task", "3")
    assert missing.exit_code == 1 and "(field" not in missing.stderr


# ---- finding the server -----------------------------------------------------------------------


def bare_env(home: Path, **env: str) -> dict[str, str]:
    """A CLI's environment with JOBYARD_HOME and `env` only: no URL, port or token of ours."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("JOBYARD_")}
    return {**environ, "JOBYARD_HOME": str(home), "COLUMNS": "200", **env}


def jobyard(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jobyard", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def start_server(home: Path, log: Path) -> subprocess.Popen[bytes]:
    """`jobyard server` on a port the system picks (--port 0)."""
    command = [sys.executable, "-m", "jobyard", "server", "--home", str(home), "--port", "0"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "--ray-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=bare_env(home, **FAST),
        )


def announced(home: Path, proc: subprocess.Popen[bytes], log: Path, old: str = "") -> str:
    """The URL the server wrote to its url file (once it differs from `old`)."""

    def written() -> str:
        assert proc.poll() is None, log.read_text()
        return read_url_file(home / "server.url") or ""

    return wait_for(lambda: (url := written()) != old and url, timeout=30)


def ended(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_cli_finds_a_server_on_any_port_by_its_url_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, log = tmp_path / "home", tmp_path / "server.log"
    url_file = home / "server.url"
    proc = start_server(home, log)
    try:
        url = announced(home, proc, log)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and not url.endswith(":0"), url
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
        submitted = jobyard("submit", "-q", "--", "true", env=bare_env(home))
        assert submitted.returncode == 0, submitted.stderr
        listed = jobyard("list", "-o", "json", env=bare_env(home))
        assert [job["id"] for job in json.loads(listed.stdout)["items"]] == [int(submitted.stdout)]
    finally:
        ended(proc, signal.SIGTERM)
    assert url_file.exists()  # uvicorn ends a SIGTERM by dying of it: the file stays...
    monkeypatch.setenv("JOBYARD_HOME", str(home))
    monkeypatch.delenv("JOBYARD_URL", raising=False)
    monkeypatch.delenv("JOBYARD_PORT", raising=False)
    assert url_and_origin() == (DEFAULT_URL, "default")  # ...and is ignored: its pid is gone
    stale = jobyard("list", env=bare_env(home, JOBYARD_URL=f"http://127.0.0.1:{free_port()}"))
    assert stale.returncode == 1 and "the URL is from JOBYARD_URL" in stale.stderr

    proc = start_server(home, log)
    try:
        again = announced(home, proc, log, old=url)
        assert jobyard("list", env=bare_env(home)).returncode == 0
        assert url_and_origin() == (again, str(url_file))
    finally:
        ended(proc, signal.SIGINT)
    assert not url_file.exists()  # a server that returns removes it


def test_discovery_order_url_then_environment_then_the_url_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("JOBYARD_HOME", str(home))
    monkeypatch.delenv("JOBYARD_URL", raising=False)
    monkeypatch.delenv("JOBYARD_PORT", raising=False)
    assert url_and_origin() == (DEFAULT_URL, "default")
    (home / "server.url").write_text("not a url\n")
    assert discover_url() == DEFAULT_URL
    (home / "server.url").write_text("http://127.0.0.1:4242\n")
    assert url_and_origin() == ("http://127.0.0.1:4242", str(home / "server.url"))
    (home / "server.lock").write_text(f"{os.getpid()}\n")  # its server lives
    assert discover_url() == "http://127.0.0.1:4242"
    gone = subprocess.Popen(["true"])
    gone.wait()
    (home / "server.lock").write_text(f"{gone.pid}\n")
    assert discover_url() == DEFAULT_URL
    (home / "server.lock").write_text(f"{os.getpid()}\n")
    monkeypatch.setenv("JOBYARD_PORT", "0")  # the server's "any port": the file says which
    assert discover_url() == "http://127.0.0.1:4242"
    monkeypatch.setenv("JOBYARD_PORT", "9001")
    assert url_and_origin() == ("http://127.0.0.1:9001", "JOBYARD_PORT")
    monkeypatch.setenv("JOBYARD_URL", "http://elsewhere:1/")
    assert url_and_origin() == ("http://elsewhere:1", "JOBYARD_URL")
    assert url_and_origin("http://given:2/") == ("http://given:2", "argument")
    monkeypatch.delenv("JOBYARD_URL")
    for bad in ("80a", "65536", "-1"):
        monkeypatch.setenv("JOBYARD_PORT", bad)
        with pytest.raises(ClientError, match="JOBYARD_PORT must be a port number"):
            discover_url()


def test_jobyard_port_names_the_local_server(
    live_server: LiveServer, client: Client, tmp_path: Path
) -> None:
    port = live_server.url.rsplit(":", 1)[1]
    home = tmp_path / "client-home"
    env = bare_env(home, JOBYARD_PORT=port, JOBYARD_TOKEN=live_server.token)
    assert jobyard("submit", "-q", "--", "true", env=env).returncode == 0
    first = bare_env(home, JOBYARD_URL=live_server.url, JOBYARD_PORT=str(free_port()))
    first["JOBYARD_TOKEN"] = live_server.token
    assert jobyard("list", env=first).returncode == 0  # JOBYARD_URL comes first
    bad = jobyard("list", env=bare_env(home, JOBYARD_PORT="80a"))
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == "error: JOBYARD_PORT must be a port number (0-65535), not '80a'\n"


def test_without_a_token_the_error_names_where_one_was_looked_for(
    live_server: LiveServer, tmp_path: Path
) -> None:
    home = tmp_path / "empty-home"
    done = jobyard("--url", live_server.url, "list", env=bare_env(home))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("error: no token: ") and done.stderr.count("\n") == 1
    assert f"{home / 'admin.token'} does not exist" in done.stderr
    assert "JOBYARD_TOKEN is unset" in done.stderr and "--token" in done.stderr
    refused = jobyard("--url", live_server.url, "--token", "nope", "list", env=bare_env(home))
    assert refused.returncode == 1 and "invalid token (from --token)" in refused.stderr


# ---- submit and list habits -------------------------------------------------------------------


def test_submit_parsable_and_quiet_print_the_id_alone(cli: CliRunnerFor, client: Client) -> None:
    for flag in ("--parsable", "--quiet", "-q"):
        result = cli("submit", flag, "--", "echo", flag)
        assert result.exit_code == 0 and re.fullmatch(r"\d+\n", result.stdout), result.output
        assert client.get(result.stdout.strip()).spec.entrypoint == ["echo", flag]
    quiet = cli("submit", "-q", "--wait", "--", "sh", "-c", "echo out; exit 3")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (3, "out\n", "")


def test_list_keeps_to_80_columns(live_server: LiveServer, client: Client, tmp_path: Path) -> None:
    hog = client.submit(
        ["sleep", "30"], name="a-long-name-of-a-training-run-" * 3, resources={"cpus": 8}
    )
    wait_for(lambda: client.get(hog.id).state is JobState.RUNNING)
    waiting = client.submit(["true"], resources={"cpus": 1}, queue="gpu")
    wait_for(lambda: client.get(waiting.id).pending_reason)
    done = run_jobyard(live_server, "list", tmp_path=tmp_path, COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), done.stdout
    queued, running = (line.split() for line in lines[1:])
    assert running[:2] == [str(hog.id), hog.display_id] and running[3] == "RUNNING"
    assert running[2].startswith("a-long-name") and running[2].endswith("…")
    assert running[6:8] == [running[6], "ago"] and re.fullmatch(r"\d+s", running[6])
    assert re.fullmatch(r"0:\d\d", running[8])
    assert queued[2:5] == ["true", "QUEUED", "gpu"] and queued[8] == "0:00"
    assert queued[9] == "#1"


def test_list_output_json_is_the_listing(cli: CliRunnerFor, client: Client) -> None:
    job = client.wait(client.submit(["true"], name="listed").id)
    short, long = (json.loads(cli("list", flag, "json").stdout) for flag in ("-o", "--output"))
    assert short == long == json.loads(cli("list", "--json").stdout)
    assert (short["total"], short["next_cursor"]) == (1, None)
    assert short["items"][0]["id"] == job.id and short["items"][0]["state"] == "SUCCEEDED"
    bad = cli("list", "-o", "yaml")
    assert bad.exit_code == 2 and "yaml" in bad.stderr
    both = cli("list", "--watch", "-o", "json")
    assert both.exit_code == 2 and "--watch" in both.stderr


def _read_until(fd: int, needle: bytes, count: int, timeout: float = 30) -> bytes:
    """Read `fd` until `needle` came `count` times."""
    data, deadline = b"", time.monotonic() + timeout
    while data.count(needle) < count:
        left = deadline - time.monotonic()
        assert left > 0, data.decode(errors="replace")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, data.decode(errors="replace")
            data += chunk
    return data


def _drain(fd: int, proc: subprocess.Popen[bytes]) -> None:
    """Keep reading `fd` until `proc` ends, so that it never blocks on a full terminal."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                os.read(fd, 65536)
            except OSError:  # the terminal's other end closed
                break
    proc.wait(timeout=max(5.0, deadline - time.monotonic()))  # a loaded machine is slow


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_list_watch_redraws_until_ctrl_c(
    live_server: LiveServer, client: Client, tmp_path: Path, terminal: bool
) -> None:
    client.submit(["true"], name="watched")
    env = bare_env(tmp_path, JOBYARD_URL=live_server.url, JOBYARD_TOKEN=live_server.token)
    env.update(COLUMNS="100", TERM="xterm-256color")
    reader, writer = pty.openpty() if terminal else os.pipe()
    proc = subprocess.Popen(
        with_default_signals([sys.executable, "-m", "jobyard", "list", "-w", "--interval", "0.2"]),
        stdout=writer,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(writer)
    try:
        first = _read_until(reader, b"watched", 1)
        assert b"STATE" in first and b"every 0.2s" in first
        if terminal:
            assert b"\x1b[" in first  # drawn in place: Rich Live moves the cursor
        _read_until(reader, b"every 0.2s", 3)  # redrawn
        proc.send_signal(signal.SIGINT)
        _drain(reader, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(reader)
        assert proc.stderr is not None
        with proc.stderr:  # closed even when the test fails: no unclosed pipe for later tests
            errors = proc.stderr.read().decode()
    assert proc.returncode == 130 and "Traceback" not in errors, errors


# ---- logs -f across a server restart ----------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_logs_follow_resumes_after_a_server_restart(tmp_path: Path, stop: signal.Signals) -> None:
    home = tmp_path / "home"
    server = ServerProcess(home, tmp_path / "server.log", JOBYARD_SHUTDOWN_TIMEOUT_SECONDS="1")
    down, written, up = (tmp_path / name for name in ("down", "written", "up"))
    script = (
        'for i in 1 2 3; do echo "line $i"; done; '
        f"while [ ! -e {down} ]; do sleep 0.05; done; "
        f'for i in 4 5 6; do echo "line $i"; done; touch {written}; '
        f"while [ ! -e {up} ]; do sleep 0.05; done; "
        'for i in 7 8 9; do echo "line $i"; done'
    )
    server.start()
    follower: subprocess.Popen[str] | None = None
    try:
        with server.client() as http:
            job = http.post("/api/v1/jobs", json={"entrypoint": script}).json()
        follower = subprocess.Popen(
            [sys.executable, "-m", "jobyard", "logs", "-f", str(job["id"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=bare_env(home),  # the server's URL and token from its files
        )
        assert follower.stdout is not None
        assert [follower.stdout.readline() for _ in range(3)] == [
            "line 1\n",
            "line 2\n",
            "line 3\n",
        ]
        server.signal(stop)
        down.touch()  # lines 4-6 are written while no server runs
        wait_for(written.exists)
        server.start()
        up.touch()
        rest, errors = follower.communicate(timeout=90)
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        server.stop()
    assert "Traceback" not in errors, errors
    assert follower.returncode == 0, errors
    assert rest == "".join(f"line {i}\n" for i in range(4, 10))  # each once, in order
    assert errors == "reconnecting…\n"


def test_logs_follow_gives_up_once_the_server_stays_away(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Follower in process, with a short patience: a server that does not come back ends
    the follow with the usual error once the patience is spent."""
    server = ServerProcess(tmp_path / "home", tmp_path / "server.log")
    server.start()
    written: list[str] = []
    failed: list[BaseException] = []
    try:
        with Client(server.url, server.token) as sdk:
            job = sdk.submit("echo first; sleep 30")
            # running first: what is tested is the end of the follow, not its start (a busy
            # CI machine may take seconds to start the job)
            wait_for(lambda: sdk.logs(job.id) == "first\n", timeout=60)
            follower = Follower(sdk, job.id, write=written.append, patience=1.0)

            def follow() -> None:
                try:
                    follower.run()
                except BaseException as exc:  # handed to the test's thread
                    failed.append(exc)

            thread = threading.Thread(target=follow)
            thread.start()
            wait_for(lambda: written)
            server.kill9()
            began = time.monotonic()
            thread.join(timeout=30)
            waited = time.monotonic() - began
    finally:
        server.stop()
    assert written == ["first\n"]
    assert len(failed) == 1 and isinstance(failed[0], ServerUnreachable), failed
    assert 0.9 < waited < 10, waited
    assert capsys.readouterr().err == "reconnecting…\n"
