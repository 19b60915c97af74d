"""Usage samples (task_usage): a fixed ring of rows per task, written a pass at a time.

A sample's row is (job, task, seq mod ring): writing sample `seq` replaces the one `ring`
samples older, so no row is ever deleted to keep the bound and a pass is one upsert statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from jobyard.model import JobState, TaskState
from jobyard.model.usage import GpuUsage, UsageSample
from jobyard.store.tables import IdleGpuSpellRow, JobRow, LogMarkRow, TaskRow, TaskUsageRow

TaskKey = tuple[int, int]  # (job id, task index)
_USAGE = TaskUsageRow.__table__
_SPELLS = IdleGpuSpellRow.__table__
_SAMPLED_STATES = (JobState.STARTING.value, JobState.RUNNING.value, JobState.STOPPING.value)
_ENDED_TASKS = (TaskState.EXITED.value, TaskState.LOST.value)


@dataclass(frozen=True)
class RunningTask:
    """A started task of a live job, as the sampler needs it."""

    job_id: int
    task_index: int
    handle: dict[str, Any]
    gpus: list[int]
    spec: dict[str, Any]  # the job's spec as stored (idle_gpu_timeout, idle_gpu_action)


@dataclass(frozen=True)
class NumberedSample:
    job_id: int
    task_index: int
    seq: int
    sample: UsageSample


def running_tasks(conn: Connection) -> list[RunningTask]:
    """Every task with a handle that has not ended, of every job that may have processes."""
    query = (
        select(TaskRow.job_id, TaskRow.idx, TaskRow.handle, TaskRow.gpus, JobRow.spec)
        .join(JobRow, JobRow.id == TaskRow.job_id)
        .where(
            JobRow.state.in_(_SAMPLED_STATES),
            TaskRow.handle.is_not(None),
            TaskRow.state.not_in(_ENDED_TASKS),
        )
        .order_by(TaskRow.job_id, TaskRow.idx)
    )
    return [
        RunningTask(row.job_id, row.idx, row.handle, list(row.gpus or []), row.spec or {})
        for row in conn.execute(query)
        if isinstance(row.handle, dict)
    ]


def last_numbers(conn: Connection, keys: Sequence[TaskKey]) -> dict[TaskKey, int]:
    """The number of each task's latest stored sample (tasks without any are left out)."""
    if not keys:
        return {}
    query = (
        select(TaskUsageRow.job_id, TaskUsageRow.task_index, func.max(TaskUsageRow.seq))
        .where(or_(*(and_(_USAGE.c.job_id == j, _USAGE.c.task_index == t) for j, t in keys)))
        .group_by(TaskUsageRow.job_id, TaskUsageRow.task_index)
    )
    return {(job_id, index): int(seq) for job_id, index, seq in conn.execute(query)}


def record(conn: Connection, samples: Sequence[NumberedSample], ring: int) -> int:
    """Store a pass's samples, each in its task's ring of `ring` rows; samples of jobs deleted
    meanwhile are dropped. Returns how many were stored."""
    if not samples:
        return 0
    ids = {s.job_id for s in samples}
    alive = set(conn.execute(select(JobRow.id).where(JobRow.id.in_(ids))).scalars())
    rows = [_row(s, ring) for s in samples if s.job_id in alive]
    if rows:
        conn.execute(_upsert(conn.dialect.name), rows)
    return len(rows)


def job_samples(
    conn: Connection, job_id: int, last: int | None = None
) -> dict[int, list[UsageSample]]:
    """A job's stored samples by task index, oldest first (the latest `last` of each)."""
    query = (
        select(_USAGE).where(_USAGE.c.job_id == job_id).order_by(_USAGE.c.task_index, _USAGE.c.seq)
    )
    found: dict[int, list[UsageSample]] = {}
    for row in conn.execute(query):
        found.setdefault(row.task_index, []).append(_sample(row))
    if last is not None:
        found = {index: samples[-last:] for index, samples in found.items()}
    return found


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(TaskUsageRow)
    replaced = ("seq", "timestamp", "cpu_cores", "rss_bytes", "gpus")
    return statement.on_conflict_do_update(
        index_elements=["job_id", "task_index", "slot"],
        set_={name: statement.excluded[name] for name in replaced},
    )


def _row(numbered: NumberedSample, ring: int) -> dict[str, Any]:
    sample = numbered.sample
    gpus = (
        None
        if sample.gpus is None
        else [
            [g.index, g.utilization_percent, g.memory_used_bytes, g.memory_total_bytes]
            for g in sample.gpus
        ]
    )
    return {
        "job_id": numbered.job_id,
        "task_index": numbered.task_index,
        "slot": numbered.seq % ring,
        "seq": numbered.seq,
        "timestamp": sample.timestamp.timestamp(),
        "cpu_cores": sample.cpu_cores,
        "rss_bytes": sample.memory_rss_bytes,
        "gpus": gpus,
    }


def _sample(row: Any) -> UsageSample:
    gpus = (
        None
        if row.gpus is None
        else [
            GpuUsage(
                index=int(g[0]),
                utilization_percent=float(g[1]),
                memory_used_bytes=int(g[2]),
                memory_total_bytes=int(g[3]),
            )
            for g in row.gpus
        ]
    )
    return UsageSample(
        timestamp=datetime.fromtimestamp(row.timestamp, UTC),
        cpu_cores=row.cpu_cores,
        memory_rss_bytes=row.rss_bytes,
        gpus=gpus,
    )


# ---- log marks: how far each task's log had grown, pass by pass --------------------------------

_MARKS = LogMarkRow.__table__


@dataclass(frozen=True)
class LogMark:
    job_id: int
    task_index: int
    seq: int
    log_bytes: int
    timestamp: float


def last_marks(conn: Connection, keys: Sequence[TaskKey]) -> dict[TaskKey, tuple[int, int]]:
    """(number, log size) of each task's latest mark (tasks without any are left out)."""
    if not keys:
        return {}
    latest = (
        select(LogMarkRow.job_id, LogMarkRow.task_index, func.max(LogMarkRow.seq).label("seq"))
        .where(or_(*(and_(_MARKS.c.job_id == j, _MARKS.c.task_index == t) for j, t in keys)))
        .group_by(LogMarkRow.job_id, LogMarkRow.task_index)
        .subquery()
    )
    query = select(
        LogMarkRow.job_id, LogMarkRow.task_index, LogMarkRow.seq, LogMarkRow.log_bytes
    ).join(
        latest,
        and_(
            LogMarkRow.job_id == latest.c.job_id,
            LogMarkRow.task_index == latest.c.task_index,
            LogMarkRow.seq == latest.c.seq,
        ),
    )
    return {(j, t): (int(seq), int(size)) for j, t, seq, size in conn.execute(query)}


def record_marks(conn: Connection, marks: Sequence[LogMark], ring: int) -> int:
    """Store marks, each in its task's ring of `ring` rows (marks of deleted jobs dropped)."""
    if not marks:
        return 0
    ids = {m.job_id for m in marks}
    alive = set(conn.execute(select(JobRow.id).where(JobRow.id.in_(ids))).scalars())
    rows = [
        {
            "job_id": m.job_id,
            "task_index": m.task_index,
            "slot": m.seq % ring,
            "seq": m.seq,
            "log_bytes": m.log_bytes,
            "timestamp": m.timestamp,
        }
        for m in marks
        if m.job_id in alive
    ]
    if rows:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = insert(LogMarkRow)
        replaced = ("seq", "log_bytes", "timestamp")
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["job_id", "task_index", "slot"],
                set_={name: statement.excluded[name] for name in replaced},
            ),
            rows,
        )
    return len(rows)


def task_marks(conn: Connection, job_id: int, task_index: int) -> list[tuple[int, float]]:
    """A task's kept marks as (log size, when), in the order they were taken."""
    query = (
        select(_MARKS.c.log_bytes, _MARKS.c.timestamp)
        .where(_MARKS.c.job_id == job_id, _MARKS.c.task_index == task_index)
        .order_by(_MARKS.c.seq)
    )
    return [(int(size), float(at)) for size, at in conn.execute(query)]


# ---- idle_gpu_timeout's clock ---------------------------------------------------------------


@dataclass(frozen=True)
class IdleSpell:
    """What idle_gpu_timeout keeps of one job: since when its GPUs have all been idle (None:
    they are not), whether that spell was acted on, whether it was told they are unmeasured."""

    job_id: int
    since: float | None = None
    acted: bool = False
    unmeasured: bool = False


def idle_spells(conn: Connection) -> list[IdleSpell]:
    """Every stored spell (a row only exists while a job has one, or was told)."""
    return [
        IdleSpell(row.job_id, row.since, bool(row.acted), bool(row.unmeasured))
        for row in conn.execute(select(_SPELLS))
    ]


def save_idle_spells(conn: Connection, spells: Sequence[IdleSpell], forget: Sequence[int]) -> None:
    """Store these spells (replacing each job's) and delete those of the jobs in `forget`.
    A spell whose job was deleted meanwhile is dropped."""
    if forget:
        conn.execute(delete(IdleGpuSpellRow).where(IdleGpuSpellRow.job_id.in_(forget)))
    if not spells:
        return
    ids = [s.job_id for s in spells]
    alive = set(conn.scalars(select(JobRow.id).where(JobRow.id.in_(ids))))
    rows = [
        {"job_id": s.job_id, "since": s.since, "acted": s.acted, "unmeasured": s.unmeasured}
        for s in spells
        if s.job_id in alive
    ]
    if rows:
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = insert(IdleGpuSpellRow)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["job_id"],
                set_={k: statement.excluded[k] for k in ("since", "acted", "unmeasured")},
            ),
            rows,
        )
