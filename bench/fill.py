"""A data directory holding N finished jobs, written straight into SQLite before the server
starts: jobyard's own migrations and tables, and rows shaped as jobyard writes them (spec as
stored, request fingerprint, one task with its executor handle, labels, the full state log and
its events). Bulk inserts: 100,000 jobs take seconds, where one insert_job per job took minutes.

One job in ten FAILED (exit code 1), the rest SUCCEEDED, so a state filter selects something.
With `layout`, each job's (final state, queue, pool) is the layout's for its id instead (the
metrics scenario spreads them over queues and pools, STOPPED too).
"""

from __future__ import annotations

import contextlib
import os
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert

from jobyard.model import JobSpec, JobState, event_for
from jobyard.service.jobs import JobRequest
from jobyard.store.db import make_engines, migrate
from jobyard.store.tables import EventRow, JobLabelRow, JobRow, StateLogRow, TaskRow

_ALPHABET = string.ascii_letters + string.digits
_BATCH = 5000
_STEP = 0.005  # seconds between a job's state changes
_SPEC = JobSpec(entrypoint="true")
_LABELS = 10  # distinct values of the "team" label
_MESSAGES = {
    JobState.QUEUED: "job queued in 'default'",
    JobState.SCHEDULED: "placed on {node}",
    JobState.STARTING: "starting 1 task(s)",
    JobState.RUNNING: "started 1 task(s) (pid {pid})",
    JobState.SUCCEEDED: "all tasks exited with code 0",
    JobState.FAILED: "{task} exited with code 1",
    JobState.STOPPED: "stopped by admin",
}
_REASONS = {JobState.SUCCEEDED: "SUCCEEDED", JobState.FAILED: "EXIT_NONZERO"}
_CODES = {JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.STOPPED: -15}
Layout = Callable[[int], tuple[JobState, str, str]]  # job id -> (final state, queue, pool)
_TABLES = {
    "jobs": JobRow,
    "tasks": TaskRow,
    "labels": JobLabelRow,
    "log": StateLogRow,
    "events": EventRow,
}


def _display_id(n: int) -> str:
    """Unique per job (random ones, as jobyard makes, would clash in 100,000 about 1 in 10)."""
    chars = []
    for _ in range(6):
        n, digit = divmod(n, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def plain(job_id: int) -> tuple[JobState, str, str]:
    """One job in ten FAILED, the rest SUCCEEDED, all in queue "default" of pool "local"."""
    return JobState.FAILED if job_id % 10 == 0 else JobState.SUCCEEDED, "default", "local"


def _fingerprints() -> dict[str, str]:
    return {
        f"team-{k}": JobRequest(spec=_SPEC, labels={"team": f"team-{k}"}).fingerprint()
        for k in range(_LABELS)
    }


class _Rows:
    """The rows of a batch of jobs, per table."""

    def __init__(self, home: Path, fingerprints: dict[str, str], layout: Layout) -> None:
        self.home = home
        self.layout = layout
        self.node = os.uname().nodename
        self.spec = _SPEC.model_dump(mode="json", exclude_defaults=True)
        self.fingerprints = fingerprints
        self.tables: dict[str, list[dict[str, Any]]] = {key: [] for key in _TABLES}

    def add(self, job_id: int, created: float) -> None:
        display, team = _display_id(job_id), f"team-{job_id % _LABELS}"
        final, queue, pool = self.layout(job_id)
        code = _CODES[final]
        task, pid = f"{display}-worker-0", 10_000 + job_id % 30_000
        started, finished = created + 3 * _STEP, created + 4 * _STEP
        self.tables["jobs"].append(
            {
                "id": job_id,
                "display_id": display,
                "owner": "admin",
                "submission_id": f"jobyard-{job_id:032x}",
                "request_hash": self.fingerprints[team],
                "name": "true",
                "queue": queue,
                "pool": pool,
                "priority": 0,
                "spec": self.spec,
                "labels": {"team": team},
                "state": final.value,
                "reason": _REASONS.get(final, "STOPPED_BY_USER"),
                "message": _MESSAGES[final].format(task=task),
                "exit_code": code,
                "created_at": created,
                "updated_at": finished,
                "started_at": started,
                "finished_at": finished,
            }
        )
        self.tables["tasks"].append(self._task(job_id, task, pid, code, started, finished))
        self.tables["labels"].append({"job_id": job_id, "key": "team", "value": team})
        self._life(job_id, created, final, task, pid)

    def _task(
        self, job_id: int, name: str, pid: int, code: int, started: float, finished: float
    ) -> dict[str, Any]:
        logs = self.home / "logs" / str(job_id)
        handle = {
            "pid": pid,
            "start_ticks": int(started * 100),
            "log": str(logs / f"{name}.log"),
            "exit": str(logs / f"{name}.exit"),
            "node": self.node,
        }
        return {
            "job_id": job_id,
            "idx": 0,
            "name": name,
            "state": "EXITED",
            "node": self.node,
            "pid": pid,
            "gpus": [],
            "exit_code": code,
            "started_at": started,
            "finished_at": finished,
            "handle": handle,
        }

    def _life(self, job_id: int, created: float, final: JobState, task: str, pid: int) -> None:
        states = [JobState.QUEUED, JobState.SCHEDULED, JobState.STARTING, JobState.RUNNING, final]
        for step, state in enumerate(states):
            at = created + step * _STEP
            kind, reason = event_for(state)
            message = _MESSAGES[state].format(node=self.node, pid=pid, task=task)
            self.tables["log"].append({"job_id": job_id, "state": state.value, "timestamp": at})
            self.tables["events"].append(
                {
                    "job_id": job_id,
                    "type": kind.value,
                    "reason": reason,
                    "message": message,
                    "timestamp": at,
                }
            )

    def insert(self, conn: Connection) -> None:
        for key, table in _TABLES.items():
            conn.execute(insert(table), self.tables[key])


def fill(home: Path, count: int, layout: Layout = plain) -> None:
    """Migrate a new database in `home` and store `count` finished jobs, one a second apart."""
    url = f"sqlite:///{home / 'jobyard.db'}"
    migrate(url)
    writer, reader = make_engines(url)
    fingerprints, now = _fingerprints(), time.time()
    try:
        for first in range(1, count + 1, _BATCH):
            rows = _Rows(home, fingerprints, layout)
            for job_id in range(first, min(first + _BATCH, count + 1)):
                rows.add(job_id, now - (count - job_id + 1))
            with writer.begin() as conn:
                rows.insert(conn)
    finally:
        writer.dispose()
        reader.dispose()


@contextlib.contextmanager
def filled_home(count: int, layout: Layout = plain) -> Iterator[tuple[Path, float]]:
    """A temp home with `count` finished jobs; yields it and the seconds filling took."""
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-") as tmp:
        home = Path(tmp)
        started = time.monotonic()
        fill(home, count, layout)
        yield home, time.monotonic() - started
