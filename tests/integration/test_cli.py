"""The jobyard CLI against a real server: as a subprocess where the process matters (exit codes,
environment, no tracebacks), in process with typer's CliRunner everywhere else."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from jobyard.cli import app
from jobyard.client import ApiError, Client, JobState
from tests.helpers import LiveServer, wait_for


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
    done = subprocess.run(
        [sys.executable, "-m", "jobyard", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


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
        "ID",
        "DISPLAY",
        "NAME",
        "STATE",
        "QUEUE",
        "OWNER",
        "CREATED",
        "EXIT",
        "WAITING",
    ]
    job = client.list().items[0]
    cells = row.split()
    assert cells[:6] == [str(job.id), job.display_id, "greet", "SUCCEEDED", "default", "admin"]
    assert cells[-1] == "0"


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


def test_bad_input_names_the_field(cli: CliRunnerFor) -> None:
    result = cli("submit", "--gpus", "64", "--", "true")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "resources.gpus" in result.stderr


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
