"""Two servers on one PostgreSQL, the leader killed again and again while 1,000 jobs are
submitted through both: every acknowledged job exists exactly once, no job's task ever runs
twice, and after each `kill -9` of the leader the other server leads within 10 s.

Both servers are real processes (`python -m jobyard server`) with their own data directories
on this machine; the killed one is started again at once and stands by. Each job appends its
submission id to one file when it runs: the file says how often each job's task ran. Who leads
is read from PostgreSQL itself (the holder of the leader's advisory lock, matched to a server
process by its connection's port).

Both servers start at the same moment on an empty database: the migrations' lock (store/db.py)
lets exactly one migrate while the other waits."""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from jobyard.store.leader import LEADER_KEY
from jobyard.store.notify import conninfo
from tests.helpers import wait_for
from tests.integration.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(420)]

CLIENTS = 8
JOBS_PER_CLIENT = 125
KILLS = 3
KILL_EVERY = 3.0  # seconds between a takeover and the next kill
TAKEOVER = 10.0  # the promise: the standby leads within this many seconds of a kill
STARTUP = 90.0  # seconds a server may take to answer (a loaded machine imports slowly)
DEADLINE = 240.0  # for the submissions (about 40 s on an idle 2-core machine)


@dataclass
class Submitter:
    index: int
    servers: list[ServerProcess]
    marks: Path
    acknowledged: dict[str, int] = field(default_factory=dict)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    def run(self, stop_at: float) -> None:
        for i in range(JOBS_PER_CLIENT):
            self._submit(f"fo-{self.index}-{i}", i, stop_at)

    def _submit(self, submission_id: str, i: int, stop_at: float) -> None:
        body = {
            "entrypoint": f"echo {submission_id} >> {self.marks}",
            "submission_id": submission_id,
        }
        turn = self.index + i  # spread over both servers; on an error, the other one
        while time.monotonic() < stop_at:
            server = self.servers[turn % len(self.servers)]
            turn += 1
            try:
                headers = {"Authorization": f"Bearer {server.token}"}
                response = httpx.post(
                    f"{server.url}/api/v1/jobs", json=body, headers=headers, timeout=10
                )
            except (httpx.TransportError, OSError):  # that server is down: the other one
                time.sleep(0.05)
                continue
            self.statuses[response.status_code] += 1
            assert response.status_code in (200, 201), response.text
            self.acknowledged[submission_id] = response.json()["id"]
            return
        raise AssertionError(f"{submission_id} never acknowledged")


def leader_pid(url: str, servers: list[ServerProcess]) -> int | None:
    """The pid of the server process holding the leader's lock (None: nobody leads)."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted",
            (LEADER_KEY >> 32, LEADER_KEY & 0xFFFF_FFFF),
        ).fetchone()
    if row is None:
        return None
    for server in servers:
        if server.proc is None or server.proc.poll() is not None:
            continue
        with_port = psutil.Process(server.proc.pid).net_connections("tcp")
        if any(c.laddr and c.laddr.port == row[0] for c in with_port):
            return server.proc.pid
    return None


def kill_leaders(url: str, servers: list[ServerProcess], done: threading.Event) -> list[float]:
    """Kill -9 whoever leads, KILLS times; start it again at once; the takeover times."""
    takeovers: list[float] = []
    while len(takeovers) < KILLS and not done.wait(KILL_EVERY):
        pid = wait_for(lambda: leader_pid(url, servers), timeout=TAKEOVER)
        assert pid is not None
        victim = next(s for s in servers if s.proc is not None and s.proc.pid == pid)
        killed = time.monotonic()
        victim.kill9()
        wait_for(partial(_led_by_another, url, servers, pid), timeout=TAKEOVER)
        takeovers.append(time.monotonic() - killed)
        victim.start(STARTUP)
    return takeovers


def _led_by_another(url: str, servers: list[ServerProcess], pid: int) -> bool:
    return leader_pid(url, servers) not in (None, pid)


def test_failover_under_submissions(tmp_path: Path, fresh_postgres_url: str) -> None:
    env = {"JOBYARD_DATABASE_URL": fresh_postgres_url, "JOBYARD_LOG_LEVEL": "info"}
    env["JOBYARD_WORKERS"] = "1"  # one process per server: the one killed is the leader
    servers = []
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        servers.append(ServerProcess(home, tmp_path / f"{name}.log", **env))
    marks = tmp_path / "marks"
    marks.touch()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # at the same moment
            for started in [pool.submit(s.start, STARTUP) for s in servers]:
                started.result()
        submitters = [Submitter(i, servers, marks) for i in range(CLIENTS)]
        done = threading.Event()
        stop_at = time.monotonic() + DEADLINE
        with concurrent.futures.ThreadPoolExecutor(CLIENTS + 1) as pool:
            killer = pool.submit(kill_leaders, fresh_postgres_url, servers, done)
            for future in [pool.submit(s.run, stop_at) for s in submitters]:
                future.result()
            done.set()
            takeovers = killer.result()
        print(f"submitted at {time.monotonic() - stop_at + DEADLINE:.1f} s")
        states: dict[str, str] | None = None
        try:
            states = wait_for(lambda: _all_finished(fresh_postgres_url), timeout=60, interval=0.5)
        except Exception:
            print(_counts(fresh_postgres_url))
            raise
        assert states is not None
        _check(submitters, states, marks, takeovers)
    finally:
        for server in servers:
            server.stop()


def _counts(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        return conn.execute("SELECT state, reason, count(*) FROM jobs GROUP BY 1, 2").fetchall()


def _all_finished(url: str) -> dict[str, str] | None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        rows = conn.execute("SELECT submission_id, state, reason, message FROM jobs").fetchall()
    live = {"QUEUED", "STARTING", "RUNNING", "STOPPING"}
    if any(state in live for _, state, _, _ in rows):
        return None
    # FAILED with its reason: LOST is the one a failover may cause (see _check)
    return {
        str(sid): state if state != "FAILED" else f"{state}/{reason}: {message}"
        for sid, state, reason, message in rows
    }


def _check(
    submitters: list[Submitter], states: dict[str, str], marks: Path, takeovers: list[float]
) -> None:
    acknowledged = {sid: job for s in submitters for sid, job in s.acknowledged.items()}
    assert len(acknowledged) == CLIENTS * JOBS_PER_CLIENT
    assert len(set(acknowledged.values())) == len(acknowledged)  # no job shared by two ids
    assert set(states) == set(acknowledged)  # none lost, none made twice
    ran = collections.Counter(marks.read_text().split())
    assert max(ran.values()) == 1, [sid for sid, n in ran.items() if n > 1]  # no double start
    outcome = collections.Counter(state.split(":")[0] for state in states.values())
    succeeded = {sid for sid, state in states.items() if state == "SUCCEEDED"}
    assert succeeded <= set(ran)  # each SUCCEEDED one ran (once)
    # A job a kill caught between its spawn and the write of its handle (a pass stores the
    # handles of all it started at once), whose task ended before the new leader looked, ends
    # LOST with its reason (docs/reliability.md, Known limits); everything else succeeds.
    failed = {sid: s for sid, s in states.items() if s != "SUCCEEDED"}
    assert set(outcome) <= {"SUCCEEDED", "FAILED/LOST"}, failed
    assert outcome["FAILED/LOST"] <= len(states) // 20, failed
    assert len(takeovers) == KILLS and max(takeovers) < TAKEOVER, takeovers
    reasons = collections.Counter(s.split(": ", 1)[1] for s in failed.values())
    print(
        f"outcomes {dict(outcome)} {dict(reasons)}; takeovers {[round(t, 2) for t in takeovers]} s"
    )
