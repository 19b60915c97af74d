"""Scale-out: submit figures of one server process beside `--workers 2`, on SQLite and on
PostgreSQL (8 clients; jobs held QUEUED, which measures the control plane, and jobs running;
submit->RUNNING p50), and the failover time of two servers on one PostgreSQL database: the
leader is killed -9 and a job submitted through the other server runs (kill -> RUNNING)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg

from bench import load, postgres
from bench.client import Connection, Target
from bench.report import Result, at_least, at_most, info, percentile
from bench.server import HOST, _spawn, _stop, _wait_healthy, free_port, running_server

CLIENTS = 8
_LIVE = "QUEUED,SCHEDULED,STARTING,RUNNING,STOPPING"
_SLEEP = json.dumps({"entrypoint": "sleep 300"}).encode()
_LEADER_KEY = int.from_bytes(b"jobyard", "big")


def scaleout(options: object) -> list[Result]:
    quick = bool(getattr(options, "quick", False))
    seconds, trips, kills = (2.0, 30, 3) if quick else (5.0, 100, 10)
    results = _figures("SQLite, 1 process", {"workers": "1"}, seconds, trips)
    results += _figures("SQLite, --workers 2", {"workers": "2"}, seconds, trips)
    if not postgres.available():
        results.append(info("scaleout", "PostgreSQL figures", 0, "", "skipped: no initdb"))
        return results
    with postgres.cluster() as pg:
        for label, workers in (("PostgreSQL, 1 process", "1"), ("PostgreSQL, --workers 2", "2")):
            settings = {"workers": workers}
            results += _figures(label, settings, seconds, trips, pg)
        results += _failover(pg, kills)
    return results


def _figures(
    label: str,
    settings: dict[str, str],
    seconds: float,
    trips: int,
    pg: postgres.Cluster | None = None,
) -> list[Result]:
    def fresh() -> dict[str, str]:
        return {**settings, "database_url": pg.new_database()} if pg else dict(settings)

    with running_server(expect_leftovers=True, settings={**fresh(), "max_tasks": "1"}) as server:
        held = asyncio.run(_held(server.target, seconds))
    with running_server(settings=fresh()) as server:
        running = asyncio.run(load.run_load(server.target, CLIENTS, seconds=seconds))
        asyncio.run(_drained(server.target))
        to_running = asyncio.run(_to_running(server.target, trips))
    p50 = percentile(to_running, 0.5) * 1000
    return [
        at_least("scaleout", f"{label}: submits/s, jobs held", held.rate, "jobs/s", 1000),
        info("scaleout", f"{label}: submits/s, jobs running", running.rate, "jobs/s"),
        at_most(
            "scaleout", f"{label}: submit->RUNNING p50", p50, "ms", 20, f"{trips} jobs, state log"
        ),
    ]


async def _held(target: Target, seconds: float) -> load.Load:
    """max_tasks=1, held by a sleep job: nothing else starts, every submit stays QUEUED."""
    async with await Connection.open(target) as conn:
        (await conn.post("/api/v1/jobs", _SLEEP)).check()
        while await _count(conn, "RUNNING") != 1:
            await asyncio.sleep(0.02)
    return await load.run_load(target, CLIENTS, seconds=seconds)


async def _count(conn: Connection, states: str) -> int:
    reply = (await conn.get(f"/api/v1/jobs?state={states}&limit=1")).check()
    return int(reply.json()["total"])


async def _drained(target: Target, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with await Connection.open(target) as conn:
        while await _count(conn, _LIVE):
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not drain")
            await asyncio.sleep(0.05)


async def _to_running(target: Target, runs: int) -> list[float]:
    """QUEUED -> RUNNING of `true` jobs, one at a time, from each job's state log."""
    samples = []
    async with await Connection.open(target) as conn:
        for _ in range(runs):
            job = (await conn.post("/api/v1/jobs", load.TRUE_JOB)).check().json()
            at = await _running_at(conn, int(job["id"]))
            samples.append(at - _times(job)["QUEUED"])
    return samples


async def _running_at(conn: Connection, job_id: int, timeout: float = 60) -> float:
    """When the job became RUNNING (its state log), once it finished."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await conn.get(f"/api/v1/jobs/{job_id}")).check().json()
        if job["state"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return _times(job)["RUNNING"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not finish in {timeout:g} s")
        await asyncio.sleep(0.01)


def _times(job: dict[str, object]) -> dict[str, float]:
    log = job["state_log"]
    assert isinstance(log, list)
    return {e["state"]: datetime.fromisoformat(e["timestamp"]).timestamp() for e in log}


# ---- failover ------------------------------------------------------------------------------


class _Member:
    """One of the two servers: a process on its own home and port, killed and started again."""

    def __init__(self, home: Path, url: str) -> None:
        self.home, self.port = home, free_port()
        self.settings = {"database_url": url, "workers": "1", "reconcile_interval_seconds": "1"}
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        self.process = _spawn(self.home, self.port, self.settings)
        _wait_healthy(self.port, self.process, self.home)
        return self.process

    @property
    def target(self) -> Target:
        return Target(HOST, self.port, (self.home / "admin.token").read_text().strip())


def _failover(pg: postgres.Cluster, kills: int) -> list[Result]:
    url = pg.new_database()
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-") as root:
        members = []
        for name in ("a", "b"):
            (Path(root) / name).mkdir()
            members.append(_Member(Path(root) / name, url))
        try:
            for _ in range(kills):
                times.append(_one_failover(url, members))
        finally:
            for member in members:
                _stop(member.process, member.home, expected=True)
    return [
        at_most(
            "scaleout",
            "failover: leader kill -9 -> a job through the other RUNNING, p50",
            statistics.median(times) * 1000,
            "ms",
            10_000,
            f"{kills} kills; max {max(times) * 1000:.0f} ms",
        )
    ]


def _one_failover(url: str, members: list[_Member]) -> float:
    leader = _wait_leader(url, members)
    other = next(m for m in members if m is not leader)
    killed = time.time()
    leader.process.kill()
    leader.process.wait()
    started = asyncio.run(_submit_and_run(other.target))
    leader.start()  # back, as the standby
    _wait_leader(url, members)
    return started - killed


async def _submit_and_run(target: Target) -> float:
    async with await Connection.open(target) as conn:
        job = (await conn.post("/api/v1/jobs", load.TRUE_JOB)).check().json()
        return await _running_at(conn, int(job["id"]))


def _wait_leader(url: str, members: list[_Member], timeout: float = 30) -> _Member:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = _leader_port(url)
        for member in members:
            if port is not None and member.process.poll() is None:
                connections = psutil.Process(member.process.pid).net_connections("tcp")
                if any(c.laddr and c.laddr.port == port for c in connections):
                    return member
        time.sleep(0.05)
    raise RuntimeError(f"no server led within {timeout:g} s")


def _leader_port(url: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
            (_LEADER_KEY >> 32, _LEADER_KEY & 0xFFFF_FFFF),
        ).fetchone()
    return None if row is None else int(row[0])
