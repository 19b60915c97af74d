"""The whole server on PostgreSQL: the same code path as SQLite, end to end."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.helpers import LiveServer, make_settings, running_server, wait_for

pytestmark = pytest.mark.postgres


def test_jobs_run_stop_and_list_on_postgresql(home: Path, fresh_postgres_url: str) -> None:
    settings = make_settings(home, database_url=fresh_postgres_url)
    with running_server(settings) as server, server.client() as http:
        ok = http.post("/api/v1/jobs", json={"entrypoint": "echo pg", "submission_id": "pg-1"})
        again = http.post("/api/v1/jobs", json={"entrypoint": "echo pg", "submission_id": "pg-1"})
        assert (ok.status_code, again.status_code) == (201, 200)
        sleeper = http.post("/api/v1/jobs", json={"entrypoint": "sleep 60"}).json()
        done = server.wait_state(ok.json()["id"], "SUCCEEDED")
        assert [e["state"] for e in done["state_log"]][-1] == "SUCCEEDED"
        assert http.get(f"/api/v1/jobs/{done['id']}/logs").text == "pg\n"
        server.wait_state(sleeper["id"], "RUNNING")
        assert http.post(f"/api/v1/jobs/{sleeper['id']}/stop").status_code == 202
        server.wait_state(sleeper["id"], "STOPPED")
        listing = http.get("/api/v1/jobs?state=SUCCEEDED,STOPPED&order=asc").json()
        assert [j["id"] for j in listing["items"]] == [done["id"], sleeper["id"]]
        assert http.get(f"/api/v1/jobs/{2**40}").status_code == 404


def test_two_servers_on_one_database_start_each_job_once(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    """Both serve the API; one (the advisory lock's holder) schedules and watches jobs; when it
    stops, the other takes over."""
    first = make_settings(tmp_path / "a", database_url=fresh_postgres_url)
    second = make_settings(tmp_path / "b", database_url=fresh_postgres_url)
    leader_ctx: contextlib.AbstractContextManager[LiveServer] | None = running_server(first)
    a = leader_ctx.__enter__()
    try:
        wait_for(lambda: a.runtime.reconciler.leading)
        with running_server(second) as b, b.client() as http:
            assert not b.runtime.reconciler.leading
            jobs = [
                http.post("/api/v1/jobs", json={"entrypoint": "sleep 0.5; echo once"}).json()
                for _ in range(4)
            ]
            for job in jobs:
                done = b.wait_state(job["id"], "SUCCEEDED", "FAILED")
                assert done["state"] == "SUCCEEDED", done
                assert [e["state"] for e in done["state_log"]].count("RUNNING") == 1
            assert not b.runtime.reconciler.leading
            # The scheduling server stops: the other one takes over and runs new work.
            leader_ctx.__exit__(None, None, None)
            leader_ctx = None
            wait_for(lambda: b.runtime.reconciler.leading, timeout=15)
            late = http.post("/api/v1/jobs", json={"entrypoint": "echo later"}).json()
            assert b.wait_state(late["id"], "SUCCEEDED")["state"] == "SUCCEEDED"
    finally:
        if leader_ctx is not None:
            leader_ctx.__exit__(None, None, None)
