"""The whole server on PostgreSQL: the same code path as SQLite, end to end."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from pathlib import Path

import psycopg
import pytest

from jobyard.store.db import Database, migrate
from jobyard.store.leader import LEADER_KEY, LostLeadership
from jobyard.store.notify import conninfo
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


async def test_each_server_hears_the_others_changes_at_once(fresh_postgres_url: str) -> None:
    """LISTEN/NOTIFY: a change one server publishes wakes the other's watchers well before
    the feed's recheck, and a server never hears its own changes back."""
    migrate(fresh_postgres_url)
    one, two = Database(fresh_postgres_url), Database(fresh_postgres_url)
    heard: list[set[int] | None] = []
    one.feed.on_remote(heard.append)
    try:
        await one.listen()
        await two.listen()
        with two.feed.watch(7) as seven, two.feed.watch() as anything:
            began = time.monotonic()
            one.feed.publish({7, 8})
            assert await seven.wait(timeout=1.5)
            assert time.monotonic() - began < 1.0
            assert await anything.wait(timeout=0.5)
            two.feed.publish(set(range(100, 3100)))  # more than one notification's payload
            await asyncio.sleep(0.5)
        # one heard all of two's changes and none of its own (7, 8)
        assert set().union(*(ids or set() for ids in heard)) == set(range(100, 3100))
    finally:
        one.close()
        two.close()


def test_a_standbys_submission_wakes_the_leader(tmp_path: Path, fresh_postgres_url: str) -> None:
    """The leader passes only every 30 s unless woken: a job submitted through the standby
    runs at once because its commit is notified."""
    slow = {"database_url": fresh_postgres_url, "reconcile_interval_seconds": 30.0}
    with running_server(make_settings(tmp_path / "a", **slow)) as a:
        wait_for(lambda: a.runtime.reconciler.leading)
        with running_server(make_settings(tmp_path / "b", **slow)) as b, b.client() as http:
            assert not b.runtime.reconciler.leading
            time.sleep(0.5)  # past the passes that starting the servers caused
            job = http.post("/api/v1/jobs", json={"entrypoint": "true"}).json()
            done = b.wait_state(job["id"], "SUCCEEDED", "FAILED", timeout=5)
            assert done["state"] == "SUCCEEDED", done


def test_a_leader_that_lost_its_session_writes_nothing(fresh_postgres_url: str) -> None:
    """The fence: once the leader's lock session ends (here terminated from outside, as
    PostgreSQL does for a dead peer), its fenced writes fail and another server may lead."""
    migrate(fresh_postgres_url)
    one, two = Database(fresh_postgres_url), Database(fresh_postgres_url)
    try:
        leadership = one.try_lead()
        assert leadership is not None and two.try_lead() is None
        one.write_sync(leadership.fence)
        with psycopg.connect(conninfo(fresh_postgres_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND objid = %s",
                (LEADER_KEY & 0xFFFF_FFFF,),
            )
        with pytest.raises(LostLeadership):
            wait_for(lambda: one.write_sync(leadership.fence) and False, timeout=0.1)
        successor = wait_for(two.try_lead, timeout=5)
        assert successor is not None
        two.write_sync(successor.fence)
        with pytest.raises(LostLeadership):
            one.write_sync(leadership.fence)
        leadership.close()
        successor.close()
    finally:
        one.close()
        two.close()


def test_servers_started_together_migrate_once(tmp_path: Path, fresh_postgres_url: str) -> None:
    """Migrations under an advisory lock: four migrations of one empty database at the same
    moment all succeed (without the lock, the later ones fail creating tables that exist)."""
    barrier = threading.Barrier(4)

    def migrate_at_once() -> None:
        barrier.wait()
        migrate(fresh_postgres_url)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(migrate_at_once) for _ in range(4)]:
            future.result(timeout=60)
    with psycopg.connect(conninfo(fresh_postgres_url)) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(versions) == 1
