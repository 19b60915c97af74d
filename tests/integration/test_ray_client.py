"""Ray's own, unmodified client and CLI (the `ray` package from PyPI, no Ray cluster) drive
jobyard's Ray job API: JobSubmissionClient, `ray job submit/status/logs/list/stop/delete`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, make_settings, running_server, wait_for

sdk = pytest.importorskip("ray.job_submission", reason="the ray client is not installed")
RAY = Path(sys.executable).with_name("ray")
PY = sys.executable
pytestmark = [
    pytest.mark.slow,  # a `ray` process costs about 1.5 s of imports per CLI call
    # Ray's client passes ssl=None to aiohttp, which newer aiohttp releases deprecate.
    pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("rayclient") / "home"
    with running_server(make_settings(home), ray=True) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> sdk.JobSubmissionClient:
    return sdk.JobSubmissionClient(
        server.ray_url, headers={"Authorization": f"Bearer {server.token}"}
    )


def ray_cli(
    server: LiveServer, *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`ray job ARGS --address URL`, with the token as Ray's client reads it (RAY_AUTH_MODE)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "JOBYARD_"))
    }  # a stray RAY_ADDRESS would win over --address
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token or server.token,
        RAY_USAGE_STATS_ENABLED="0",
    )
    command, rest = args[0], args[1:]
    return subprocess.run(
        [str(RAY), "job", command, "--address", server.ray_url, *rest],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def final(client: sdk.JobSubmissionClient, sid: str, timeout: float = 30) -> str:
    terminal = {"SUCCEEDED", "FAILED", "STOPPED"}

    def done() -> str | None:
        status = str(client.get_job_status(sid).value)
        return status if status in terminal else None

    return wait_for(done, timeout)


def test_sdk_submit_info_logs_tail_list_stop_delete(client: sdk.JobSubmissionClient) -> None:
    sid = client.submit_job(
        entrypoint="echo hello $GREETING", runtime_env={"env_vars": {"GREETING": "ray"}}
    )
    assert final(client, sid) == "SUCCEEDED"
    info = client.get_job_info(sid)
    assert info.submission_id == sid and info.entrypoint == "echo hello $GREETING"
    assert info.status == sdk.JobStatus.SUCCEEDED and info.driver_exit_code == 0
    assert info.start_time is not None and info.end_time is not None
    logs = client.get_job_logs(sid)
    first, entry, output = logs.splitlines(keepends=True)  # Ray's two lines, then the job's
    assert first.endswith("\tINFO jobyard -- Runtime env is setting up.\n")
    assert entry == f"Running entrypoint for job {sid}: echo hello $GREETING\n"
    assert output == "hello ray\n"
    assert client.get_job_info(info.job_id or "").submission_id == sid

    async def tail() -> str:
        return "".join([chunk async for chunk in client.tail_job_logs(sid)])

    assert asyncio.run(tail()) == logs
    assert sid in [job.submission_id for job in client.list_jobs()]

    running = client.submit_job(entrypoint="sleep 60", submission_id="rayclient_sleeper")
    wait_for(lambda: client.get_job_status(running) == sdk.JobStatus.RUNNING, 20)
    assert client.stop_job(running) is True
    assert final(client, running) == "STOPPED"
    assert client.stop_job(running) is False
    assert client.delete_job(running) is True
    with pytest.raises(RuntimeError, match="404"):
        client.get_job_info(running)


def test_sdk_errors_are_readable(server: LiveServer, client: sdk.JobSubmissionClient) -> None:
    client.submit_job(entrypoint="true", submission_id="rayclient_dup")
    with pytest.raises(RuntimeError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id="rayclient_dup")
    with pytest.raises(RuntimeError, match=r"runtime_env\.uv"):
        client.submit_job(entrypoint="true", runtime_env={"uv": ["x"]})
    from ray.exceptions import AuthenticationError

    # The version check needs no token (as on a Ray head); the first real call does.
    wrong = sdk.JobSubmissionClient(server.ray_url, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(AuthenticationError, match="Authentication failed"):
        wrong.list_jobs()
    with pytest.raises(AuthenticationError, match="Authentication required"):
        sdk.JobSubmissionClient(server.ray_url).list_jobs()


def test_sdk_entrypoint_resources(client: sdk.JobSubmissionClient) -> None:
    sid = client.submit_job(
        entrypoint="true", entrypoint_num_cpus=1, entrypoint_memory=2**20, metadata={"k": "v"}
    )
    assert final(client, sid) == "SUCCEEDED"
    info = client.get_job_info(sid)
    assert info.metadata == {"k": "v"}


def test_cli_submit_with_working_dir_streams_and_exits_with_the_job(
    server: LiveServer, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "greeting.py").write_text("WORDS = 'hello from the working dir'\n")
    (project / "main.py").write_text("import sys, greeting\nprint(greeting.WORDS, sys.argv[1])\n")
    done = ray_cli(
        server, "submit", "--working-dir", str(project), "--submission-id", "rayclient_cli_wd",
        "--", PY, "main.py", "42",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "hello from the working dir 42" in done.stdout
    assert "Job 'rayclient_cli_wd' succeeded" in done.stdout

    status = ray_cli(server, "status", "rayclient_cli_wd")
    assert status.returncode == 0 and "Job 'rayclient_cli_wd' succeeded" in status.stdout
    logs = ray_cli(server, "logs", "rayclient_cli_wd")
    assert logs.returncode == 0 and "hello from the working dir 42" in logs.stdout
    listed = ray_cli(server, "list")
    assert listed.returncode == 0 and "rayclient_cli_wd" in listed.stdout
    deleted = ray_cli(server, "delete", "rayclient_cli_wd")
    assert deleted.returncode == 0, deleted.stderr
    assert ray_cli(server, "status", "rayclient_cli_wd").returncode == 1


def test_cli_failed_job_exits_1_and_follow_stop(server: LiveServer) -> None:
    failed = ray_cli(server, "submit", "--", "sh", "-c", "echo bad; exit 3")
    assert failed.returncode == 1 and "bad" in failed.stdout

    started = ray_cli(
        server, "submit", "--no-wait", "--submission-id", "rayclient_cli_stop",
        "--", "sh", "-c", "echo tick; sleep 60",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    headers = {"Authorization": f"Bearer {server.token}"}
    logs_url = f"{server.ray_url}/api/jobs/rayclient_cli_stop/logs"
    wait_for(lambda: "tick" in httpx.get(logs_url, headers=headers).json()["logs"], 30)
    follower = subprocess.Popen(  # `ray job logs -f` ends when the job does
        [str(RAY), "job", "logs", "-f", "--address", server.ray_url, "rayclient_cli_stop"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": server.token,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stopped = ray_cli(server, "stop", "rayclient_cli_stop")
        assert stopped.returncode == 0, stopped.stderr
        out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert "tick" in out
    status = ray_cli(server, "status", "rayclient_cli_stop")
    assert "Job 'rayclient_cli_stop' was stopped" in status.stdout, status.stdout


def test_cli_with_a_wrong_token_is_an_authentication_error(server: LiveServer) -> None:
    done = ray_cli(server, "list", token="jy_wrong")
    assert done.returncode != 0
    assert "Authentication failed" in done.stderr and "jy_wrong" not in done.stderr


def tiny_wheel(where: Path) -> Path:
    """A pure-Python wheel made here, so installing it needs no network."""
    files = {
        "tinyjy/__init__.py": b"VALUE = 'tiny wheel works'\n",
        "tinyjy-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinyjy\nVersion: 0.1\n",
        "tinyjy-0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: jobyard-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinyjy-0.1.dist-info/RECORD,,")
    wheel = where / "tinyjy-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("tinyjy-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_pip_runtime_env_gets_a_cached_virtualenv(
    server: LiveServer, client: sdk.JobSubmissionClient, tmp_path: Path
) -> None:
    wheel = tiny_wheel(tmp_path)
    runtime_env = {"pip": [str(wheel)], "env_vars": {"PIP_NO_INDEX": "1"}}
    check = "python -c 'import sys, tinyjy; print(tinyjy.VALUE, sys.prefix)'"
    first = client.submit_job(entrypoint=check, runtime_env=runtime_env)
    assert final(client, first, timeout=120) == "SUCCEEDED", client.get_job_logs(first)
    logs = client.get_job_logs(first)
    assert "tiny wheel works" in logs and "jobyard: installing" in logs
    venvs = server.settings.home / "runtime_env" / "venvs"
    assert str(venvs) in logs  # the job's python is the virtualenv's
    second = client.submit_job(entrypoint=check, runtime_env=runtime_env)
    assert final(client, second, timeout=60) == "SUCCEEDED"
    assert "jobyard: installing" not in client.get_job_logs(second)  # reused
    assert len([p for p in venvs.iterdir() if p.is_dir()]) == 1
    # The seed's spelling, a pip command line (Ray's client reads a string as a file name,
    # so openYuanrong's clients send it as raw JSON): the same set, the same virtualenv.
    body = {
        "entrypoint": check,
        "runtime_env": {"pip": f"pip3.11 install {wheel}", "env_vars": {"PIP_NO_INDEX": "1"}},
    }
    headers = {"Authorization": f"Bearer {server.token}"}
    posted = httpx.post(f"{server.ray_url}/api/jobs", json=body, headers=headers)
    assert posted.status_code == 200, posted.text
    seed = posted.json()["submission_id"]
    assert final(client, seed, timeout=60) == "SUCCEEDED", client.get_job_logs(seed)
    assert "jobyard: installing" not in client.get_job_logs(seed)


def test_a_failing_pip_install_fails_the_job(client: sdk.JobSubmissionClient) -> None:
    sid = client.submit_job(
        entrypoint="echo never",
        runtime_env={"pip": ["/no/such/pkg.whl"], "env_vars": {"PIP_NO_INDEX": "1"}},
    )
    assert final(client, sid, timeout=120) == "FAILED"
    logs = client.get_job_logs(sid)
    assert "never" not in logs and "runtime_env setup failed" in logs
