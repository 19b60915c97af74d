"""Typed query functions over the job tables, and row -> model converters.

Every state change goes through `transition()`, which checks the model's transition table
inside the writing transaction, stores the state-log entry and emits the event.
"""

from __future__ import annotations

import secrets
import string
import threading
from collections import OrderedDict
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import TypeAdapter
from sqlalchemy import (
    Connection,
    Row,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from jobyard.errors import NotFound
from jobyard.model import (
    Attempt,
    Event,
    EventType,
    Job,
    JobSpec,
    JobState,
    PortSpec,
    Resources,
    StateLogEntry,
    Task,
    TaskState,
    TerminationReason,
    check_transition,
    event_for,
)
from jobyard.model.state import can_transition
from jobyard.store.tables import (
    EventRow,
    GatewayPortRow,
    JobAttemptRow,
    JobLabelRow,
    JobRow,
    JobSecretRow,
    StateLogRow,
    TaskRow,
)

_DISPLAY_ALPHABET = string.ascii_letters + string.digits
_DISPLAY_LEN = 6
_MAX_ID = 2**31 - 1  # ids are 32-bit INTEGER columns on PostgreSQL

# Hot-path statements are built once; values travel as parameters, so each execution is a
# compile-cache hit with no per-value coercion (several times cheaper than .values(...)).
_JOBS = cast(Table, JobRow.__table__)
_TASKS = cast(Table, TaskRow.__table__)
_LOG = cast(Table, StateLogRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_INSERT_JOB = insert(_JOBS).returning(_JOBS.c.id)
_INSERT_JOB_IF_ABSENT = {
    dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(_JOBS)
    .on_conflict_do_nothing(index_elements=["owner", "submission_id"])
    .returning(_JOBS.c.id)
    for dialect in (sqlite, postgresql)
}
_INSERT_TASKS = insert(_TASKS)
_INSERT_LABELS = insert(cast(Table, JobLabelRow.__table__))
_INSERT_LOG = insert(_LOG).returning(_LOG.c.id)
_INSERT_LOGS = insert(_LOG)
_INSERT_EVENT = insert(_EVENTS)
_FIND_SUBMISSION = select(_JOBS.c.id, _JOBS.c.request_hash).where(
    _JOBS.c.owner == bindparam("owner"), _JOBS.c.submission_id == bindparam("submission_id")
)
_STATE = select(_JOBS.c.state).where(_JOBS.c.id == bindparam("job_id"))
_STATE_FOR_UPDATE = _STATE.with_for_update()
_UPDATE_JOB = update(_JOBS).where(_JOBS.c.id == bindparam("job_id_"))
_UPDATE_TASK = update(_TASKS).where(
    _TASKS.c.job_id == bindparam("job_id_"), _TASKS.c.idx == bindparam("idx_")
)


def new_display_id() -> str:
    return "".join(_DISPLAY_ALPHABET[b % 62] for b in secrets.token_bytes(_DISPLAY_LEN))


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
    # A face's search box: a substring of the name or display_id; the exact id or submission_id.
    keyword: str | None = None


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
    return insert_new_job(conn, new, now).id


def insert_new_job(conn: Connection, new: NewJob, now: float) -> Job:
    """Insert a QUEUED job with its tasks, labels, first state-log entry and event.
    A duplicate (owner, submission_id) raises IntegrityError."""
    job = _insert(conn, new, now, _INSERT_JOB)
    if job is None:  # pragma: no cover - a plain INSERT either returns the id or raises
        raise NotFound("the job was not inserted")
    return job


def insert_new_job_if_absent(conn: Connection, new: NewJob, now: float) -> Job | None:
    """As insert_new_job, but a job with the same owner and submission_id makes this a no-op
    returning None: one statement, no lookup first."""
    return _insert(conn, new, now, _INSERT_JOB_IF_ABSENT[conn.dialect.name])


def _insert(conn: Connection, new: NewJob, now: float, statement: Any) -> Job | None:
    # A display_id clash (1 in 56 billion per pair) raises IntegrityError: callers retry.
    display_id = new_display_id()
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
    inserted = conn.execute(statement, values).scalar_one_or_none()
    if inserted is None:
        return None
    job_id = int(inserted)
    conn.execute(
        _INSERT_TASKS,
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
            _INSERT_LABELS,
            [{"job_id": job_id, "key": k, "value": v} for k, v in new.labels.items()],
        )
    log_id = _log_state(conn, job_id, JobState.QUEUED, now)
    add_event(conn, job_id, EventType.NORMAL, "Queued", f"job queued in {new.queue!r}", now)
    return new_job_to_job(new, job_id, display_id, now, log_id)


def find_by_submission(conn: Connection, owner: str, submission_id: str) -> tuple[int, str] | None:
    row = conn.execute(_FIND_SUBMISSION, {"owner": owner, "submission_id": submission_id}).first()
    return None if row is None else (row.id, row.request_hash)


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
    """Move a job to `change.target`: checked against the table, logged, and evented.
    Raises NotFound or Conflict (an illegal edge); nothing is written then."""
    query = _STATE_FOR_UPDATE if conn.dialect.name == "postgresql" else _STATE
    current = conn.execute(query, {"job_id": job_id}).scalar_one_or_none()
    if current is None:
        raise NotFound(f"job {job_id} not found")
    check_transition(JobState(current), change.target)
    conn.execute(_UPDATE_JOB, {"job_id_": job_id, **_job_values(change, now)})
    _log_state(conn, job_id, change.target, now)
    conn.execute(_INSERT_EVENT, _event_row(job_id, change, now))
    return JobState(current)


def transition_many(
    conn: Connection, changes: Sequence[tuple[int, Transition]], now: float
) -> list[int]:
    """Apply many changes in a few statements. Changes to one job apply in order; a change the
    table forbids from the job's state at that point (or to a job that is gone) is skipped.
    Returns the ids of the jobs that changed."""
    if not changes:
        return []
    ids = sorted({job_id for job_id, _ in changes})
    query = select(_JOBS.c.id, _JOBS.c.state).where(_JOBS.c.id.in_(ids))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    current = {row.id: JobState(row.state) for row in conn.execute(query)}
    updates: dict[int, dict[str, Any]] = {}
    logs, events, applied = [], [], []
    for job_id, change in changes:
        state = current.get(job_id)
        if state is None or not can_transition(state, change.target):
            continue
        current[job_id] = change.target
        updates.setdefault(job_id, {}).update(_job_values(change, now))
        logs.append({"job_id": job_id, "state": change.target.value, "timestamp": now})
        events.append(_event_row(job_id, change, now))
        applied.append(job_id)
    _execute_grouped(conn, _UPDATE_JOB, [{"job_id_": i, **v} for i, v in updates.items()])
    if logs:
        conn.execute(_INSERT_LOGS, logs)
        conn.execute(_INSERT_EVENT, events)
    return list(dict.fromkeys(applied))


def _job_values(change: Transition, now: float) -> dict[str, Any]:
    values: dict[str, Any] = {"state": change.target.value, "updated_at": now}
    if change.target is JobState.RUNNING:
        values["started_at"] = now
    if change.target.is_terminal():
        values.update(finished_at=now, exit_code=change.exit_code, message=change.message)
        values["reason"] = change.termination.value if change.termination else None
    return values


def _event_row(job_id: int, change: Transition, now: float) -> dict[str, Any]:
    default_type, default_reason = event_for(change.target)
    return {
        "job_id": job_id,
        "type": (change.event_type or default_type).value,
        "reason": change.reason or default_reason,
        "message": change.message or default_reason,
        "timestamp": now,
    }


def _execute_grouped(conn: Connection, statement: Any, rows: Sequence[dict[str, Any]]) -> None:
    """executemany, once per set of columns (an UPDATE's SET clause follows its parameters)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    for group in groups.values():
        conn.execute(statement, group)


def get_state(conn: Connection, job_id: int) -> JobState | None:
    state = conn.execute(_STATE, {"job_id": job_id}).scalar_one_or_none()
    return None if state is None else JobState(state)


def request_stop(conn: Connection, job_id: int, reason: TerminationReason, now: float) -> None:
    request_stops(conn, [(job_id, reason)], now)


def request_stops(
    conn: Connection, stops: Sequence[tuple[int, TerminationReason]], now: float
) -> None:
    """Record why jobs are to stop (the reason decides their final state)."""
    rows = [
        {"job_id_": job_id, "stop_requested_at": now, "stop_reason": why.value, "updated_at": now}
        for job_id, why in stops
    ]
    if rows:
        conn.execute(_UPDATE_JOB, rows)


def update_task(conn: Connection, job_id: int, index: int, change: TaskUpdate) -> None:
    update_tasks(conn, [(job_id, index, change)])


def update_tasks(conn: Connection, changes: Sequence[tuple[int, int, TaskUpdate]]) -> None:
    rows = [
        {"job_id_": job_id, "idx_": index, **values}
        for job_id, index, change in changes
        if (values := change.as_values())
    ]
    _execute_grouped(conn, _UPDATE_TASK, rows)


def add_event(
    conn: Connection, job_id: int, type_: EventType, reason: str, message: str, now: float
) -> None:
    conn.execute(
        _INSERT_EVENT,
        {
            "job_id": job_id,
            "type": type_.value,
            "reason": reason,
            "message": message,
            "timestamp": now,
        },
    )


def _log_state(conn: Connection, job_id: int, state: JobState, now: float) -> int:
    row = {"job_id": job_id, "state": state.value, "timestamp": now}
    return int(conn.execute(_INSERT_LOG, row).scalar_one())


def delete_job(conn: Connection, job_id: int) -> None:
    for table in (
        EventRow,
        StateLogRow,
        TaskRow,
        JobLabelRow,
        JobAttemptRow,
        JobSecretRow,
        GatewayPortRow,
    ):
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


def find_job(conn: Connection, ref: str, owner: str | None) -> Job | None:
    """resolve_ref and get_job in one go."""
    job_id = resolve_ref(conn, ref, owner)
    return None if job_id is None else get_job(conn, job_id)


class FinishedJobs:
    """The most recently read finished jobs, whole. A finished job never changes again (it can
    only be deleted, and ids are never reused), so a page of them that a dashboard or script
    polls is read from the database once. Callers must not modify the jobs they get."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._jobs: OrderedDict[int, Job] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, ids: Iterable[int]) -> dict[int, Job]:
        with self._lock:
            found = {i: self._jobs[i] for i in ids if i in self._jobs}
            for job_id in found:
                self._jobs.move_to_end(job_id)
            return found

    def put_many(self, jobs: Iterable[Job]) -> None:
        with self._lock:
            for job in jobs:
                if job.state.is_terminal() and all(
                    t.state.is_finished() or t.handle is None for t in job.tasks
                ):
                    self._jobs[job.id] = job
            while len(self._jobs) > self._size:
                self._jobs.popitem(last=False)


def load_jobs(
    conn: Connection,
    ids: Sequence[int],
    *,
    with_log: bool = True,
    specs: MutableMapping[int, JobSpec] | None = None,
    finished: FinishedJobs | None = None,
) -> list[Job]:
    """Load whole jobs in the order of `ids`. `specs` caches parsed specs (they never change);
    `finished` keeps finished jobs (whole: with their log) between calls."""
    if not ids:
        return []
    if finished is not None and with_log:
        known = finished.get_many(ids)
        if known:
            rest = load_jobs(conn, [i for i in ids if i not in known], specs=specs)
            finished.put_many(rest)
            found = {**known, **{job.id: job for job in rest}}
            return [found[i] for i in ids if i in found]
        jobs = load_jobs(conn, ids, specs=specs)
        finished.put_many(jobs)
        return jobs
    rows = conn.execute(select(JobRow).where(JobRow.id.in_(ids))).all()
    task_query = (
        select(TaskRow).where(TaskRow.job_id.in_(ids)).order_by(TaskRow.job_id, TaskRow.idx)
    )
    tasks = _group(conn.execute(task_query).all())
    log: dict[int, list[Row[Any]]] = {}
    if with_log:
        log_query = select(StateLogRow).where(StateLogRow.job_id.in_(ids)).order_by(StateLogRow.id)
        log = _group(conn.execute(log_query).all())
    cache: MutableMapping[int, JobSpec] = {} if specs is None else specs
    order = {job_id: n for n, job_id in enumerate(ids)}
    rows = sorted(rows, key=lambda row: order[row.id])
    jobs = jobs_from_rows([(r, tasks.get(r.id, []), log.get(r.id, [])) for r in rows], cache)
    if with_log:
        retried = [job for job in jobs if job.attempt > 0]
        if retried:
            attempts = _attempts_of(conn, [job.id for job in retried])
            for job in retried:
                job.attempts = [Attempt.model_validate(a) for a in attempts.get(job.id, [])]
    return jobs


def _attempts_of(conn: Connection, ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    rows = conn.execute(
        select(JobAttemptRow)
        .where(JobAttemptRow.job_id.in_(ids))
        .order_by(JobAttemptRow.job_id, JobAttemptRow.attempt)
    )
    found: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        item = row._asdict()
        found.setdefault(item.pop("job_id"), []).append(item)
    return found


def _group(rows: Iterable[Row[Any]]) -> dict[int, list[Row[Any]]]:
    grouped: dict[int, list[Row[Any]]] = {}
    for row in rows:
        grouped.setdefault(row.job_id, []).append(row)
    return grouped


def _keyword(keyword: str) -> Any:
    escaped = keyword.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = [
        JobRow.name.ilike(f"%{escaped}%", escape="\\"),
        JobRow.display_id.ilike(f"%{escaped}%", escape="\\"),
        JobRow.submission_id == keyword,
    ]
    if keyword.isascii() and keyword.isdigit() and int(keyword) <= _MAX_ID:
        matches.append(JobRow.id == int(keyword))
    return or_(*matches)


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
    if flt.keyword:
        conditions.append(_keyword(flt.keyword))
    for key, value in flt.labels:
        label = and_(JobLabelRow.job_id == JobRow.id, JobLabelRow.key == key)
        if value is not None:
            label = and_(label, JobLabelRow.value == value)
        conditions.append(exists().where(label))
    return conditions


def list_jobs(
    conn: Connection,
    flt: JobFilter,
    *,
    limit: int,
    cursor: int | None,
    descending: bool,
    offset: int = 0,
    finished: FinishedJobs | None = None,
) -> JobPage:
    """A page of jobs by id. `cursor` (the last id seen) is the cheap way on; `offset` skips
    rows instead, for faces that number their pages. `finished`: see FinishedJobs."""
    conditions = _conditions(flt)
    total = int(
        conn.execute(select(func.count()).select_from(JobRow).where(*conditions)).scalar_one()
    )
    page_query = select(JobRow.id).where(*conditions)
    if cursor is not None:
        page_query = page_query.where(JobRow.id < cursor if descending else JobRow.id > cursor)
    order = JobRow.id.desc() if descending else JobRow.id.asc()
    page_query = page_query.order_by(order).limit(limit + 1)
    if offset:
        page_query = page_query.offset(offset)
    ids = [int(i) for i in conn.execute(page_query).scalars()]
    next_cursor = ids[limit - 1] if len(ids) > limit else None
    items = load_jobs(conn, ids[:limit], finished=finished)
    return JobPage(items=items, total=total, next_cursor=next_cursor)


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


_JOB_LIST = TypeAdapter(list[Job])


def jobs_from_rows(
    rows: Sequence[tuple[Row[Any], Sequence[Row[Any]], Sequence[Row[Any]]]],
    specs: MutableMapping[int, JobSpec],
) -> list[Job]:
    """Rows -> Jobs in one pydantic-core call: plain dicts in, and epoch floats, enum strings
    and nested tasks converted in Rust (several times cheaper than building each in Python)."""
    jobs: list[Job] = _JOB_LIST.validate_python([_job_dict(r, t, log, specs) for r, t, log in rows])
    for job in jobs:
        specs.setdefault(job.id, job.spec)
    return jobs


def _job_dict(
    row: Row[Any],
    tasks: Sequence[Row[Any]],
    log: Sequence[Row[Any]],
    specs: MutableMapping[int, JobSpec],
) -> dict[str, Any]:
    job = row._asdict()
    del job["request_hash"]
    job["spec"] = specs.get(row.id) or _stored_spec(row.spec)
    job["tasks"] = [_task_dict(t) for t in tasks]
    job["state_log"] = [{"id": e.id, "state": e.state, "timestamp": e.timestamp} for e in log]
    return job


_SPEC_DEFAULTS = {
    name: f.get_default(call_default_factory=True)
    for name, f in JobSpec.model_fields.items()
    if not f.is_required()
}
_RESOURCE_DEFAULTS = {name: f.get_default() for name, f in Resources.model_fields.items()}


def _stored_spec(stored: dict[str, Any]) -> JobSpec:
    """A spec as stored (validated when it was submitted, never changed since): built without
    running its validators again, which dominate reading a page of jobs otherwise."""
    fields = {**_SPEC_DEFAULTS, **stored}
    fields["env"] = dict(fields["env"])
    resources = fields["resources"]
    if isinstance(resources, dict):
        fields["resources"] = Resources.model_construct(**{**_RESOURCE_DEFAULTS, **resources})
    if fields["ports"]:
        fields["ports"] = [PortSpec.model_validate(p) for p in fields["ports"]]
    return JobSpec.model_construct(_fields_set=set(stored), **fields)


stored_spec = _stored_spec


def _task_dict(row: Row[Any]) -> dict[str, Any]:
    task = row._asdict()
    task["index"] = task.pop("idx")
    task["gpus"] = task["gpus"] or []
    return task


def new_job_to_job(new: NewJob, job_id: int, display_id: str, now: float, log_id: int) -> Job:
    """The job `insert_job` just stored, without reading it back."""
    created = datetime.fromtimestamp(now, UTC)
    return Job.model_construct(
        id=job_id,
        display_id=display_id,
        submission_id=new.submission_id,
        name=new.name,
        owner=new.owner,
        queue=new.queue,
        pool=new.pool,
        priority=new.priority,
        labels=new.labels,
        spec=new.spec,
        state=JobState.QUEUED,
        created_at=created,
        updated_at=created,
        attempts=[],  # every default_factory given: model_construct inspects one per call
        tasks=[_new_task(i, f"{display_id}-worker-{i}") for i in range(new.spec.replicas)],
        state_log=[
            StateLogEntry.model_construct(id=log_id, state=JobState.QUEUED, timestamp=created)
        ],
    )


def fresh_task_fields() -> dict[str, Any]:
    """A task's fields before its first start, and again before a retry: what a start fills
    in, empty (a new dict each call: `gpus` is a list)."""
    return {
        "state": TaskState.PENDING,
        "node": None,
        "pid": None,
        "gpus": [],
        "exit_code": None,
        "started_at": None,
        "finished_at": None,
        "handle": None,
    }


def _new_task(index: int, name: str) -> Task:
    # Every field given: model_construct inspects a default_factory's signature on each call.
    return Task.model_construct(index=index, name=name, **fresh_task_fields())
