"""Enforce: what must stop. Pure `plan(jobs, ...)`: STARTING jobs stuck past
`start_timeout_seconds` fail (START_FAILED), RUNNING jobs past their `max_runtime` begin
stopping (MAX_RUNTIME_EXCEEDED); `apply(conn, changes)` writes both in one transaction.
`to_signal(jobs)` names the tasks of STOPPING jobs that the executor is to stop."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection

from jobyard.executors.base import Handle
from jobyard.model import Job, JobState, TerminationReason
from jobyard.scheduler.observe import begin_stops
from jobyard.store import jobs as q


@dataclass
class Changes:
    stuck: list[int] = field(default_factory=list)
    overdue: list[tuple[int, TerminationReason, str]] = field(default_factory=list)
    start_timeout: float = 0.0

    def job_ids(self) -> set[int]:
        return set(self.stuck) | {job_id for job_id, _, _ in self.overdue}

    def __bool__(self) -> bool:
        return bool(self.stuck or self.overdue)


def plan(
    jobs: Mapping[int, Job], *, now: float, start_timeout: float, held: Collection[int]
) -> Changes:
    """`held`: jobs a crash caught mid-start, kept until the executor says what it left."""
    return Changes(
        stuck=[job.id for job in jobs.values() if _is_stuck(job, now, start_timeout, held)],
        overdue=[
            (job.id, TerminationReason.MAX_RUNTIME_EXCEEDED, _overdue_message(job))
            for job in jobs.values()
            if _is_overdue(job, now)
        ],
        start_timeout=start_timeout,
    )


def _is_stuck(job: Job, now: float, limit: float, held: Collection[int]) -> bool:
    """STARTING too long without every task handed over (a job queued in Slurm has them all)."""
    return (
        job.state is JobState.STARTING
        and now - job.updated_at.timestamp() > limit
        and not all(t.handle is not None for t in job.tasks)
        and job.id not in held
    )


def _is_overdue(job: Job, now: float) -> bool:
    limit, started = job.spec.max_runtime, job.started_at
    if job.state is not JobState.RUNNING or limit is None or started is None:
        return False
    return now - started.timestamp() > limit


def _overdue_message(job: Job) -> str:
    return f"ran longer than max_runtime ({job.spec.max_runtime:g} s)"


def apply(conn: Connection, changes: Changes, now: float) -> None:
    if changes.stuck:
        fail = q.Transition(
            JobState.FAILED,
            f"stuck in STARTING for more than {changes.start_timeout:g} s",
            termination=TerminationReason.START_FAILED,
        )
        q.transition_many(conn, [(job_id, fail) for job_id in changes.stuck], now)
    begin_stops(conn, changes.overdue, now)


def to_signal(jobs: Mapping[int, Job]) -> list[Handle]:
    """The handles of every task of a STOPPING job that has not ended (stop is idempotent)."""
    return [
        task.handle
        for job in jobs.values()
        if job.state is JobState.STOPPING
        for task in job.tasks
        if task.handle is not None and not task.state.is_finished()
    ]
