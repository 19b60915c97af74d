"""`jobyard server --workers N`: N processes on one port over one database (the server's SQLite
file, or PostgreSQL), one of them scheduling; an in-memory SQLite database is refused with a
message."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.helpers import wait_for
from tests.integration.server_process import ServerProcess
from tests.integration.test_failover_postgres import leader_pid
from tests.integration.test_web_terminal import Screen, _running_job, _terminal_url

pytestmark = pytest.mark.slow
Leader = Callable[[ServerProcess], "int | None"]


@dataclass
class Backend:
    env: dict[str, str]
    leader: Leader  # the pid of the worker that schedules, or None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sqlite":
        return Backend({}, _sqlite_leader)
    url: str = request.getfixturevalue("fresh_postgres_url")
    return Backend({"JOBYARD_DATABASE_URL": url}, lambda server: _leading_worker(url, server))


def _sqlite_leader(server: ServerProcess) -> int | None:
    """The worker holding the flock on workers/leader.lock (from /proc/locks)."""
    inode = os.stat(server.home / "workers" / "leader.lock").st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if int(fields[5].split(":")[-1]) == inode:
            return int(fields[4])
    return None


def _workers(server: ServerProcess) -> list[psutil.Process]:
    assert server.proc is not None
    return psutil.Process(server.proc.pid).children()


def _leading_worker(url: str, server: ServerProcess) -> int | None:
    """The worker holding the leader's lock (leader_pid looks at the processes' connections)."""
    workers = [_as_server(server, worker.pid) for worker in _workers(server)]
    return leader_pid(url, workers)


class _Pid:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def poll(self) -> None:
        return None


def _as_server(server: ServerProcess, pid: int) -> ServerProcess:
    view = ServerProcess.__new__(ServerProcess)
    view.proc = _Pid(pid)  # type: ignore[assignment]
    return view


def test_two_workers_share_a_port_and_one_schedules(tmp_path: Path, backend: Backend) -> None:
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, tmp_path / "server.log", JOBYARD_WORKERS="2", **backend.env)
    marks = tmp_path / "marks"
    marks.touch()
    server.start(timeout=90)
    try:
        assert len(_workers(server)) == 2
        headers = {"Authorization": f"Bearer {server.token}"}
        ids = []
        for i in range(40):  # a new connection each time: the kernel picks the worker
            body = {"entrypoint": f"echo w-{i} >> {marks}", "submission_id": f"w-{i}"}
            made = httpx.post(f"{server.url}/api/v1/jobs", json=body, headers=headers)
            assert made.status_code == 201, made.text
            seen = httpx.get(f"{server.url}/api/v1/jobs/{made.json()['id']}", headers=headers)
            assert seen.status_code == 200  # read-your-writes, whichever worker answers
            ids.append(made.json()["id"])
        for job_id in ids:
            assert server.wait_state(job_id, "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
        assert max(collections.Counter(marks.read_text().split()).values()) == 1
        leader = wait_for(lambda: backend.leader(server), timeout=10)
        assert leader in {w.pid for w in _workers(server)}
        # The leading worker dies: the parent starts another, and a worker leads again.
        os.kill(leader, signal.SIGKILL)
        wait_for(
            lambda: len(_workers(server)) == 2 and leader not in {w.pid for w in _workers(server)},
            timeout=60,
        )
        later = wait_for(lambda: backend.leader(server), timeout=60)
        assert later != leader
        with server.client() as http:
            job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        assert server.wait_state(job["id"], "SUCCEEDED", "FAILED")["state"] == "SUCCEEDED"
        workers = _workers(server)
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.output()[-3000:]
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_a_terminal_url_works_whichever_worker_the_socket_reaches(
    tmp_path: Path, backend: Backend
) -> None:
    """The token is in the database: a worker other than the one that issued it redeems it."""
    home = tmp_path / "home"
    home.mkdir()
    server = ServerProcess(home, tmp_path / "server.log", JOBYARD_WORKERS="2", **backend.env)
    server.start(timeout=90)
    try:
        job = _running_job(server)  # type: ignore[arg-type]
        for i in range(8):  # new connections: the kernel spreads them over both workers
            with connect(_terminal_url(server, job)) as ws:  # type: ignore[arg-type]
                screen = Screen(ws)
                screen.type(f"echo round=$((40+{i}))\r")
                screen.wait(rf"round={40 + i}\r\n")
        with server.client() as http:
            http.post(f"/api/jobs/{job['jobId']}/stop")
    finally:
        server.stop()


def test_more_than_one_worker_on_an_in_memory_database_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBYARD_")}
    env["JOBYARD_DATABASE_URL"] = "sqlite://"
    done = subprocess.run(
        [sys.executable, "-m", "jobyard", "server", "--home", str(tmp_path), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "error: workers: more than 1 needs a database file that every worker" in done.stderr
    assert "Traceback" not in done.stderr
