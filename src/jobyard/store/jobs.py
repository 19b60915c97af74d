"""Typed query functions over the job tables, and row -> model converters.

Every state change goes through `transition()`, which checks the model's transition table
inside the writing transaction, stores the state-log entry and emits the event.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from jobyard.errors import NotFound
from jobyard.model import (
    Event,
    EventType,
    Job,
    JobSpec,
    JobState,
    StateLogEntry,
    Task,
    TaskState,
    TerminationReason,
    check_transition,
    event_for,
)
from jobyard.store.tables import EventRow, JobLabelRow, JobRow, StateLogRow, TaskRow

_DISPLAY_ALPHABET = string.ascii_letters + string.digits
_DISPLAY_LEN = 6
_MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns on PostgreSQL


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def new_display_id() -> str:
    return "".join(secrets.choice(_DISPLAY_ALPHABET) for _ in range(_DISPLAY_LEN))


@dataclass(frozen=True)
class NewJob:
    owner: str
    submission_id: str
    request_hash: str
    name: str
    queue: str
    pool: str
    priority: int
    labels: dict[str, str]
    spec: JobSpec


@dataclass(frozen=True)
class JobFilter:
    owner: str | None = None
    states: Sequence[JobState] = ()
    queue: str | None = None
    name_contains: str | None = None
    labels: Sequence[tuple[str, str | None]] = ()
    ids: Sequence[int] = ()


@dataclass
class JobPage:
    items: list[Job]
    total: int
    next_cursor: int | None = None


@dataclass(frozen=True)
class TaskUpdate:
    state: TaskState | None = None
    node: str | None = None
    pid: int | None = None
    gpus: list[int] | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    handle: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def as_values(self) -> dict[str, Any]:
        fields = (
            "state",
            "node",
            "pid",
            "gpus",
            "exit_code",
            "started_at",
            "finished_at",
            "handle",
        )
        values = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        return {**values, **self.values}


# ---- writes ---------------------------------------------------------------------------------


def insert_job(conn: Connection, new: NewJob, now: float) -> int:
    """Insert a QUEUED job with its tasks, labels, first state-log entry and event."""
    for _attempt in range(8):
        display_id = new_display_id()
        if conn.execute(select(JobRow.id).where(JobRow.display_id == display_id)).first() is None:
            break
    values = {
        "display_id": display_id,
        "owner": new.owner,
        "submission_id": new.submission_id,
        "request_hash": new.request_hash,
        "name": new.name,
        "queue": new.queue,
        "pool": new.pool,
        "priority": new.priority,
        "spec": new.spec.model_dump(mode="json", exclude_defaults=True),
        "labels": new.labels,
        "state": JobState.QUEUED.value,
        "message": "",
        "created_at": now,
        "updated_at": now,
    }
    job_id = int(conn.execute(insert(JobRow).values(values).returning(JobRow.id)).scalar_one())
    conn.execute(
        insert(TaskRow),
        [
            {
                "job_id": job_id,
                "idx": i,
                "name": f"{display_id}-worker-{i}",
                "state": TaskState.PENDING.value,
                "gpus": [],
            }
            for i in range(new.spec.replicas)
        ],
    )
    if new.labels:
        conn.execute(
            insert(JobLabelRow),
            [{"job_id": job_id, "key": k, "value": v} for k, v in new.labels.items()],
        )
    _log_state(conn, job_id, JobState.QUEUED, now)
    add_event(conn, job_id, EventType.NORMAL, "Queued", f"job queued in {new.queue!r}", now)
    return job_id


def find_by_submission(conn: Connection, owner: str, submission_id: str) -> tuple[int, str] | None:
    row = conn.execute(
        select(JobRow.id, JobRow.request_hash).where(
            JobRow.owner == owner, JobRow.submission_id == submission_id
        )
    ).first()
    return None if row is None else (row.id, row.request_hash)


def is_duplicate_submission(exc: IntegrityError) -> bool:
    return "submission_id" in str(exc.orig) or "uq_jobs_owner_submission_id" in str(exc.orig)


@dataclass(frozen=True)
class Transition:
    """A requested state change; the event's type and reason default from the target state."""

    target: JobState
    message: str = ""
    reason: str | None = None
    event_type: EventType | None = None
    termination: TerminationReason | None = None
    exit_code: int | None = None


def transition(conn: Connection, job_id: int, change: Transition, now: float) -> JobState:
    """Move a job to `change.target`: checked against the table, logged, and evented."""
    query = select(JobRow.state).where(JobRow.id == job_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    current = conn.execute(query).scalar_one_or_none()
    if current is None:
        raise NotFound(f"job {job_id} not found")
    check_transition(JobState(current), change.target)
    values: dict[str, Any] = {"state": change.target.value, "updated_at": now}
    if change.target is JobState.RUNNING:
        values["started_at"] = now
    if change.target.is_terminal():
        values.update(finished_at=now, exit_code=change.exit_code)
        values["reason"] = change.termination.value if change.termination else None
        values["message"] = change.message
    conn.execute(update(JobRow).where(JobRow.id == job_id).values(values))
    _log_state(conn, job_id, change.target, now)
    default_type, default_reason = event_for(change.target)
    add_event(
        conn,
        job_id,
        change.event_type or default_type,
        change.reason or default_reason,
        change.message or default_reason,
        now,
    )
    return JobState(current)


def get_state(conn: Connection, job_id: int) -> JobState | None:
    state = conn.execute(select(JobRow.state).where(JobRow.id == job_id)).scalar_one_or_none()
    return None if state is None else JobState(state)


def request_stop(conn: Connection, job_id: int, reason: TerminationReason, now: float) -> None:
    conn.execute(
        update(JobRow)
        .where(JobRow.id == job_id)
        .values(stop_requested_at=now, stop_reason=reason.value, updated_at=now)
    )


def update_task(conn: Connection, job_id: int, index: int, change: TaskUpdate) -> None:
    values = change.as_values()
    if not values:
        return
    conn.execute(
        update(TaskRow).where(TaskRow.job_id == job_id, TaskRow.idx == index).values(values)
    )


def add_event(
    conn: Connection, job_id: int, type_: EventType, reason: str, message: str, now: float
) -> None:
    conn.execute(
        insert(EventRow).values(
            job_id=job_id, type=type_.value, reason=reason, message=message, timestamp=now
        )
    )


def _log_state(conn: Connection, job_id: int, state: JobState, now: float) -> None:
    conn.execute(insert(StateLogRow).values(job_id=job_id, state=state.value, timestamp=now))


def delete_job(conn: Connection, job_id: int) -> None:
    for table in (EventRow, StateLogRow, TaskRow, JobLabelRow):
        conn.execute(delete(table).where(table.job_id == job_id))
    conn.execute(delete(JobRow).where(JobRow.id == job_id))


# ---- reads ----------------------------------------------------------------------------------


def resolve_ref(conn: Connection, ref: str, owner: str | None) -> int | None:
    """A ref is the numeric id (all digits), else the display_id, else the submission_id."""
    scope = [] if owner is None else [JobRow.owner == owner]
    candidates = []
    if ref.isascii() and ref.isdigit() and int(ref) <= _MAX_ID:
        candidates.append(JobRow.id == int(ref))
    candidates += [JobRow.display_id == ref, JobRow.submission_id == ref]
    for condition in candidates:
        found = conn.execute(select(JobRow.id).where(condition, *scope).limit(1)).scalar()
        if found is not None:
            return int(found)
    return None


def get_job(conn: Connection, job_id: int) -> Job | None:
    jobs = load_jobs(conn, [job_id])
    return jobs[0] if jobs else None


def load_jobs(conn: Connection, ids: Sequence[int]) -> list[Job]:
    """Load whole jobs (tasks and state log included) in the order of `ids`."""
    if not ids:
        return []
    rows = conn.execute(select(JobRow).where(JobRow.id.in_(ids))).all()
    tasks = _group(
        conn.execute(
            select(TaskRow).where(TaskRow.job_id.in_(ids)).order_by(TaskRow.job_id, TaskRow.idx)
        ).all()
    )
    log = _group(
        conn.execute(
            select(StateLogRow).where(StateLogRow.job_id.in_(ids)).order_by(StateLogRow.id)
        ).all()
    )
    by_id = {
        row.id: job_row_to_job(row, tasks.get(row.id, []), log.get(row.id, [])) for row in rows
    }
    return [by_id[i] for i in ids if i in by_id]


def _group(rows: Iterable[Row[Any]]) -> dict[int, list[Row[Any]]]:
    grouped: dict[int, list[Row[Any]]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped


def _conditions(flt: JobFilter) -> list[Any]:
    conditions: list[Any] = []
    if flt.owner is not None:
        conditions.append(JobRow.owner == flt.owner)
    if flt.states:
        conditions.append(JobRow.state.in_([s.value for s in flt.states]))
    if flt.queue is not None:
        conditions.append(JobRow.queue == flt.queue)
    if flt.name_contains:
        escaped = flt.name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(JobRow.name.ilike(f"%{escaped}%", escape="\\"))  # same on both DBs
    if flt.ids:
        conditions.append(JobRow.id.in_(flt.ids))
    for key, value in flt.labels:
        label = and_(JobLabelRow.job_id == JobRow.id, JobLabelRow.key == key)
        if value is not None:
            label = and_(label, JobLabelRow.value == value)
        conditions.append(exists().where(label))
    return conditions


def list_jobs(
    conn: Connection, flt: JobFilter, *, limit: int, cursor: int | None, descending: bool
) -> JobPage:
    conditions = _conditions(flt)
    total = int(
        conn.execute(select(func.count()).select_from(JobRow).where(*conditions)).scalar_one()
    )
    page_query = select(JobRow.id).where(*conditions)
    if cursor is not None:
        page_query = page_query.where(JobRow.id < cursor if descending else JobRow.id > cursor)
    order = JobRow.id.desc() if descending else JobRow.id.asc()
    ids = [int(i) for i in conn.execute(page_query.order_by(order).limit(limit + 1)).scalars()]
    next_cursor = ids[limit - 1] if len(ids) > limit else None
    return JobPage(items=load_jobs(conn, ids[:limit]), total=total, next_cursor=next_cursor)


def ids_in_states(
    conn: Connection, states: Iterable[JobState], *, limit: int | None = None
) -> list[int]:
    """Job ids in these states: highest priority first, then oldest first."""
    query = (
        select(JobRow.id)
        .where(JobRow.state.in_([s.value for s in states]))
        .order_by(JobRow.priority.desc(), JobRow.id.asc())
    )
    if limit is not None:
        query = query.limit(limit)
    return [int(i) for i in conn.execute(query).scalars()]


def list_events(conn: Connection, job_id: int) -> list[Event]:
    rows = conn.execute(
        select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.id)
    ).all()
    return [
        Event(
            type=EventType(r.type),
            reason=r.reason,
            message=r.message,
            timestamp=datetime.fromtimestamp(r.timestamp, UTC),
        )
        for r in rows
    ]


def job_row_to_job(row: Row[Any], tasks: Sequence[Row[Any]], log: Sequence[Row[Any]]) -> Job:
    return Job(
        id=row.id,
        display_id=row.display_id,
        submission_id=row.submission_id,
        name=row.name,
        owner=row.owner,
        queue=row.queue,
        pool=row.pool,
        priority=row.priority,
        labels=row.labels,
        spec=JobSpec.model_validate(row.spec),
        state=JobState(row.state),
        reason=TerminationReason(row.reason) if row.reason else None,
        message=row.message,
        exit_code=row.exit_code,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
        updated_at=datetime.fromtimestamp(row.updated_at, UTC),
        started_at=to_datetime(row.started_at),
        finished_at=to_datetime(row.finished_at),
        stop_requested_at=to_datetime(row.stop_requested_at),
        stop_reason=TerminationReason(row.stop_reason) if row.stop_reason else None,
        tasks=[task_row_to_task(t) for t in tasks],
        state_log=[
            StateLogEntry(
                id=e.id, state=JobState(e.state), timestamp=datetime.fromtimestamp(e.timestamp, UTC)
            )
            for e in log
        ],
    )


def task_row_to_task(row: Row[Any]) -> Task:
    return Task(
        index=row.idx,
        name=row.name,
        state=TaskState(row.state),
        node=row.node,
        pid=row.pid,
        gpus=row.gpus or [],
        exit_code=row.exit_code,
        started_at=to_datetime(row.started_at),
        finished_at=to_datetime(row.finished_at),
        handle=row.handle,
    )
