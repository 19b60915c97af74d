"""The whole server on PostgreSQL: the same code path as SQLite, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_settings, running_server

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
