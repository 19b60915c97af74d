"""Faults: a log directory that becomes unwritable, and a full disk (a 1 MiB tmpfs mounted by
the test as the log directory, and as the whole data directory), fail the affected job with a
reason while the server keeps serving. Needs `mount` (root); skipped with the reason otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.factories import new_job
from tests.helpers import LiveServer, make_settings, running_server, wait_for
from tests.integration.server_process import ServerProcess

pytestmark = pytest.mark.slow


def _mount(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", ",".join(["size=1m", *options]), "tmpfs", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for path in reversed(made):
        _umount(path)


def _serves(server: LiveServer | ServerProcess) -> bool:
    with server.client() as http:
        return http.get("/api/v1/whoami").status_code == 200


def test_an_unwritable_log_directory_fails_the_job_and_the_server_serves_on(
    home: Path, mounts: list[Path]
) -> None:
    with running_server(make_settings(home)) as server, server.client() as http:
        before = http.post("/api/v1/jobs", json={"entrypoint": "echo before"}).json()
        server.wait_state(before["id"], "SUCCEEDED")
        logs = server.settings.logs_dir
        _mount(logs, "ro")  # read-only: even root cannot write there now
        mounts.append(logs)
        job = http.post("/api/v1/jobs", json={"entrypoint": "echo never"}).json()
        failed = server.wait_state(job["id"], "FAILED")
        assert failed["reason"] == "START_FAILED", failed
        assert "Read-only file system" in failed["message"], failed["message"]
        assert _serves(server)
        events = http.get(f"/api/v1/jobs/{job['id']}/events").json()["items"]
        assert any(e["type"] == "Warning" for e in events), events
        _umount(logs)
        after = http.post("/api/v1/jobs", json={"entrypoint": "echo after"}).json()
        assert server.wait_state(after["id"], "SUCCEEDED")["exit_code"] == 0


FLOOD = "head -c 4000000 /dev/zero | tr '\\0' x; echo; echo written"


def test_a_full_log_disk_fails_the_job_that_fills_it_and_spares_the_rest(
    home: Path, mounts: list[Path]
) -> None:
    settings = make_settings(home)
    logs = settings.logs_dir
    _mount(logs)  # the log directory is a 1 MiB filesystem
    mounts.append(logs)
    with running_server(settings) as server, server.client() as http:
        flood = http.post("/api/v1/jobs", json={"entrypoint": FLOOD}).json()
        done = server.wait_state(flood["id"], "FAILED", "SUCCEEDED", timeout=30)
        assert (done["state"], done["reason"]) == ("FAILED", "EXIT_NONZERO"), done
        assert done["exit_code"] != 0
        assert _serves(server)
        small = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        ended = server.wait_state(small["id"], "FAILED", "SUCCEEDED")
        assert ended["state"] == "SUCCEEDED" or ended["reason"] in ("START_FAILED", "EXIT_NONZERO")
        # freeing the space brings everything back
        http.delete(f"/api/v1/jobs/{flood['id']}")
        again = http.post("/api/v1/jobs", json={"entrypoint": "echo fine"}).json()
        assert server.wait_state(again["id"], "SUCCEEDED")["exit_code"] == 0
        assert http.get(f"/api/v1/jobs/{again['id']}/logs").text == "fine\n"


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_full_data_disk_keeps_the_server_serving_and_recovers_when_space_returns(
    tmp_path: Path, mounts: list[Path]
) -> None:
    home = tmp_path / "home"
    _mount(home, "size=2m")  # database, logs and all on 2 MiB
    mounts.append(home)
    server = ServerProcess(
        home,
        tmp_path / "server.log",
        JOBYARD_LOG_LEVEL="warning",
        JOBYARD_START_TIMEOUT_SECONDS="5",  # the disk may fill before the start is recorded
    )
    server.start()
    try:
        with server.client() as http:
            flood = http.post("/api/v1/jobs", json={"entrypoint": FLOOD}).json()
            wait_for(lambda: _free_bytes(home) < 64 * 1024, timeout=30)  # the disk is full
            # reads go on; a write that cannot be stored is refused, never half-done
            assert _serves(server)
            assert http.get(f"/api/v1/jobs/{flood['id']}").status_code == 200
            answer = http.post("/api/v1/jobs", json={"entrypoint": "true", "name": "full"})
            statuses = {answer.status_code}
            assert "Traceback" not in answer.text
            # space comes back (the flood's log goes): the flood ends FAILED with a reason
            wait_for(lambda: list((home / "logs" / str(flood["id"])).glob("*.exit")), timeout=30)
            for log in (home / "logs" / str(flood["id"])).glob("*.log"):
                log.unlink()
            failed = server.wait_state(flood["id"], "FAILED", timeout=30)
            assert failed["reason"] and failed["message"], failed
            wait_for(
                lambda: http.post("/api/v1/jobs", json={"entrypoint": "true"}).status_code == 201,
                timeout=20,
            )
            assert statuses <= {201, 503, 507}, statuses
        assert server.signal(signal.SIGTERM) < 10
    finally:
        server.stop()


def test_a_job_stuck_in_starting_ends_failed_with_a_reason(home: Path) -> None:
    """A start that never completes (here: recorded STARTING by a start that hung) does not
    hang forever: past start_timeout_seconds the job fails with START_FAILED and a message."""
    from jobyard.model import JobSpec, JobState
    from jobyard.store import jobs as q

    with running_server(make_settings(home, start_timeout_seconds=1.0)) as server:
        long_ago = time.time() - 60

        def stuck(conn: Any) -> int:
            new = new_job(
                owner="admin",
                submission_id="stuck",
                name="stuck",
                pool="local",
                spec=JobSpec(entrypoint="true"),
            )
            job_id = q.insert_job(conn, new, long_ago)
            q.transition(conn, job_id, q.Transition(JobState.STARTING), long_ago)
            return job_id

        job_id = server.runtime.db.write_sync(stuck)
        server.runtime.reconciler.wake(job_id)
        failed = server.wait_state(job_id, "FAILED", timeout=15)
        assert failed["reason"] == "START_FAILED" and "STARTING" in failed["message"], failed
        with server.client() as http:
            assert http.post("/api/v1/jobs", json={"entrypoint": "true"}).status_code == 201
