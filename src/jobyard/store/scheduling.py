"""The scheduler's own reads and writes: queued candidates, pending reasons, retries."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, or_, select, update

from jobyard.model import EventType, JobState, PendingReason, TerminationReason
from jobyard.store.jobs import Transition, fresh_task_fields, transition_many
from jobyard.store.tables import EventRow, JobAttemptRow, JobRow, TaskRow

_JOBS = cast(Table, JobRow.__table__)
_TASKS = cast(Table, TaskRow.__table__)
_EVENTS = cast(Table, EventRow.__table__)
_CANDIDATE_COLUMNS = (
    _JOBS.c.id,
    _JOBS.c.display_id,
    _JOBS.c.created_at,
    _JOBS.c.owner,
    _JOBS.c.queue,
    _JOBS.c.pool,
    _JOBS.c.priority,
    _JOBS.c.spec,
    _JOBS.c.not_before,
    _JOBS.c.attempt,
    _JOBS.c.pending_reason,
    _JOBS.c.pending_message,
)
_SET_PENDING = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id_"),
        # queued, or started and waiting in an executor's own queue (Slurm); no IN (...):
        # an expanding parameter cannot be used with executemany
        or_(_JOBS.c.state == JobState.QUEUED.value, _JOBS.c.state == JobState.STARTING.value),
    )
    .values(pending_reason=bindparam("reason_"), pending_message=bindparam("message_"))
)


def queued_rows(
    conn: Connection, *, after_id: int = 0, ids: Collection[int] | None = None
) -> list[Any]:
    """The scheduler's view of queued jobs: those with ids above `after_id` (the new ones),
    or those of `ids` that are still queued."""
    query = select(*_CANDIDATE_COLUMNS).where(_JOBS.c.state == JobState.QUEUED.value)
    if ids is not None:
        query = query.where(_JOBS.c.id.in_(sorted(ids)))
    else:
        query = query.where(_JOBS.c.id > after_id)
    return list(conn.execute(query.order_by(_JOBS.c.id)))


def queued_ids(conn: Connection) -> set[int]:
    query = select(_JOBS.c.id).where(_JOBS.c.state == JobState.QUEUED.value)
    return {int(i) for i in conn.execute(query).scalars()}


def set_pending(
    conn: Connection,
    changes: Sequence[tuple[int, PendingReason | None, str]],
    now: float,
    *,
    events: Collection[int] = (),
) -> None:
    """Record why queued (or STARTING) jobs wait; an event for each job in `events` (its code
    changed)."""
    if not changes:
        return
    conn.execute(
        _SET_PENDING,
        [
            {"job_id_": job_id, "reason_": code.value if code else None, "message_": message}
            for job_id, code, message in changes
        ],
    )
    rows = [
        {
            "job_id": job_id,
            "type": EventType.WARNING.value
            if code is PendingReason.QUOTA_EXCEEDED
            else EventType.NORMAL.value,
            "reason": "Pending",
            "message": f"{code.value}: {message}",
            "timestamp": now,
        }
        for job_id, code, message in changes
        if code is not None and job_id in events
    ]
    if rows:
        conn.execute(insert(_EVENTS), rows)


@dataclass(frozen=True)
class Retry:
    """A failed attempt to put back in the queue, to start again no sooner than `not_before`."""

    job_id: int
    attempt: int
    exit_code: int | None
    termination: TerminationReason
    message: str
    started_at: float | None
    not_before: float
    retries_left: int


def requeue_for_retry(conn: Connection, retries: Sequence[Retry], now: float) -> list[int]:
    """Each attempt is kept (its exit code and reason), the job goes back to QUEUED with its
    tasks reset. A job that is no longer in a started state is left alone."""
    changes = [
        (
            r.job_id,
            Transition(
                JobState.QUEUED,
                f"attempt {r.attempt + 1} failed ({r.message}); retrying in "
                f"{max(0.0, r.not_before - now):.3g} s ({r.retries_left} retries left)",
                reason="Retrying",
                event_type=EventType.WARNING,
            ),
        )
        for r in retries
    ]
    applied = set(transition_many(conn, changes, now))
    done = [r for r in retries if r.job_id in applied]
    if not done:
        return []
    conn.execute(
        insert(JobAttemptRow),
        [
            {
                "job_id": r.job_id,
                "attempt": r.attempt,
                "exit_code": r.exit_code,
                "reason": r.termination.value,
                "message": r.message,
                "started_at": r.started_at,
                "finished_at": now,
            }
            for r in done
        ],
    )
    conn.execute(
        update(_JOBS).where(_JOBS.c.id == bindparam("job_id_")),
        [
            {
                "job_id_": r.job_id,
                "attempt": r.attempt + 1,
                "not_before": r.not_before,
                "stop_requested_at": None,
                "stop_reason": None,
                "started_at": None,
                "pending_reason": PendingReason.BACKOFF.value,
                "pending_message": "waiting before the next attempt",
            }
            for r in done
        ],
    )
    conn.execute(
        update(_TASKS)
        .where(_TASKS.c.job_id.in_([r.job_id for r in done]))
        .values(**fresh_task_fields())
    )
    return [r.job_id for r in done]


def counts_by_queue(conn: Connection) -> dict[tuple[str, str], int]:
    """How many jobs each (queue, state) holds: for the queue views."""
    query = select(_JOBS.c.queue, _JOBS.c.state, func.count()).group_by(
        _JOBS.c.queue, _JOBS.c.state
    )
    return {(queue, state): int(n) for queue, state, n in conn.execute(query)}
