"""A data directory holding N finished jobs (with tasks, state log and events), made fast
with bulk inserts through jobyard's own tables and migrations."""

from __future__ import annotations

import contextlib
import string
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from jobyard.store.db import make_engines, migrate
from jobyard.store.tables import EventRow, JobRow, StateLogRow, TaskRow

_ALPHABET = string.ascii_letters + string.digits
_LIFE = [
    ("QUEUED", "Queued"),
    ("SCHEDULED", "Scheduled"),
    ("STARTING", "Starting"),
    ("RUNNING", "Started"),
    ("SUCCEEDED", "Completed"),
]
_BATCH = 5000


def _display_id(n: int) -> str:
    chars = []
    for _ in range(6):
        n, digit = divmod(n, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def _rows(first: int, last: int, now: float) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {"jobs": [], "tasks": [], "log": [], "events": []}
    for job_id in range(first, last):
        created = now - (last - job_id)
        display = _display_id(job_id)
        rows["jobs"].append(
            {
                "id": job_id,
                "display_id": display,
                "owner": "admin",
                "submission_id": f"bench-{job_id}",
                "request_hash": "-",
                "name": f"bench-{job_id % 100}",
                "queue": "default",
                "pool": "local",
                "priority": 0,
                "spec": {"entrypoint": "true"},
                "labels": {},
                "state": "SUCCEEDED",
                "reason": "SUCCEEDED",
                "message": "all tasks exited with code 0",
                "exit_code": 0,
                "created_at": created,
                "updated_at": created + 0.05,
                "started_at": created + 0.01,
                "finished_at": created + 0.05,
            }
        )
        rows["tasks"].append(
            {
                "job_id": job_id,
                "idx": 0,
                "name": f"{display}-worker-0",
                "state": "EXITED",
                "node": "bench",
                "pid": 1,
                "gpus": [],
                "exit_code": 0,
                "started_at": created + 0.01,
                "finished_at": created + 0.05,
                "handle": None,
            }
        )
        for step, (state, reason) in enumerate(_LIFE):
            at = created + step * 0.01
            rows["log"].append({"job_id": job_id, "state": state, "timestamp": at})
            rows["events"].append(
                {
                    "job_id": job_id,
                    "type": "Normal",
                    "reason": reason,
                    "message": reason,
                    "timestamp": at,
                }
            )
    return rows


@contextlib.contextmanager
def filled_home(count: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="jobyard-bench-") as tmp:
        home = Path(tmp)
        url = f"sqlite:///{home / 'jobyard.db'}"
        migrate(url)
        writer, reader = make_engines(url)
        now = time.time()
        tables = {"jobs": JobRow, "tasks": TaskRow, "log": StateLogRow, "events": EventRow}
        try:
            for first in range(1, count + 1, _BATCH):
                rows = _rows(first, min(first + _BATCH, count + 1), now)
                with writer.begin() as conn:
                    for key, table in tables.items():
                        conn.execute(insert(table), rows[key])
        finally:
            writer.dispose()
            reader.dispose()
        yield home
