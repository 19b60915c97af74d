"""The core's way into a running task (shell_command) and a job's secrets."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from jobyard.errors import Conflict, NotFound
from jobyard.store.users import User
from tests.helpers import LiveServer

ADMIN = User(id=1, name="admin", is_admin=True)
OTHER = User(id=99, name="mallory", is_admin=False)


def run(_server: LiveServer, coro: Any) -> Any:
    """Call the live server's services directly (they are safe to use from another loop)."""
    return asyncio.run(coro)


def test_a_shell_runs_in_the_tasks_environment(live_server: LiveServer) -> None:
    with live_server.client() as http:
        job = http.post(
            "/api/v1/jobs", json={"entrypoint": "sleep 30", "env": {"FLAVOUR": "mint"}}
        ).json()
        live_server.wait_state(job["id"], "RUNNING")
        jobs = live_server.runtime.jobs
        _, shell = run(
            live_server,
            jobs.shell(ADMIN, job["display_id"], None, "echo $FLAVOUR $JOBYARD_JOB_ID; pwd"),
        )
        out = subprocess.run(
            shell.argv, env=shell.env, cwd=shell.cwd, capture_output=True, text=True, timeout=10
        )
        assert out.returncode == 0, out.stderr
        flavour, job_id, cwd = out.stdout.split()
        assert (flavour, job_id) == ("mint", str(job["id"]))
        assert cwd.endswith(f"/jobs/{job['id']}")
        _, interactive = run(
            live_server, jobs.shell(ADMIN, str(job["id"]), f"{job['display_id']}-worker-0")
        )
        assert interactive.argv[-1] == "-i"

        with pytest.raises(NotFound):
            run(live_server, jobs.shell(OTHER, job["display_id"]))
        with pytest.raises(NotFound, match="no task"):
            run(live_server, jobs.shell(ADMIN, job["display_id"], "nope-worker-9"))

        http.post(f"/api/v1/jobs/{job['id']}/stop")
        live_server.wait_state(job["id"], "STOPPED")
        with pytest.raises(Conflict, match="not running"):
            run(live_server, jobs.shell(ADMIN, job["display_id"]))


def test_jobs_with_ports_get_their_own_secrets(live_server: LiveServer) -> None:
    jobs = live_server.runtime.jobs
    with live_server.client() as http:
        ported = [
            http.post(
                "/api/v1/jobs",
                json={"entrypoint": "true", "ports": [{"port": 22, "protocol": "ssh"}]},
            ).json()
            for _ in range(2)
        ]
        plain = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
        first, second = (run(live_server, jobs.secrets(ADMIN, j["display_id"])) for j in ported)
        assert set(first) == {"ssh_password", "port_token"}
        assert first["ssh_password"] != second["ssh_password"]
        assert len(first["port_token"]) >= 32
        assert run(live_server, jobs.secrets(ADMIN, plain["display_id"])) == {}
        with pytest.raises(NotFound):
            run(live_server, jobs.secrets(OTHER, ported[0]["display_id"]))
        found = run(live_server, jobs.job_of_secret("port_token", first["port_token"]))
        assert found.id == ported[0]["id"]
        assert run(live_server, jobs.job_of_secret("port_token", "wrong")) is None
        # Secrets never show in the job's JSON or its events.
        for job in ported:
            text = (
                http.get(f"/api/v1/jobs/{job['id']}").text
                + http.get(f"/api/v1/jobs/{job['id']}/events").text
            )
            assert first["ssh_password"] not in text and first["port_token"] not in text
