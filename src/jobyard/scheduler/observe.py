"""Observe: what the tasks did, and what that makes of their jobs.

`watched(jobs)` names the tasks to poll; `plan(jobs, watched, reports, ...)` is pure: from the
live jobs as stored and one report per watched task it says which tasks ended or began, which
STARTING jobs now run (an executor's own scheduler started them) or wait with a new pending
reason, and each job's outcome (finish it, begin stopping the rest of it, or retry it), never
touching the jobs it was given. `apply(conn, changes)` writes all of that in one transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from jobyard.executors.base import TaskReport
from jobyard.model import (
    EventType,
    Job,
    JobState,
    PendingReason,
    Task,
    TaskState,
    TerminationReason,
)
from jobyard.scheduler.outcome import Outcome, decide, for_reason
from jobyard.scheduler.retry import RetryPolicy
from jobyard.store import jobs as q, scheduling as sq
from jobyard.store.scheduling import Retry

_ENDED = (TaskState.EXITED, TaskState.LOST)


@dataclass
class Changes:
    tasks: list[tuple[int, int, q.TaskUpdate]] = field(default_factory=list)
    began: list[int] = field(default_factory=list)  # STARTING -> RUNNING
    pending: list[tuple[int, PendingReason, str]] = field(default_factory=list)
    outcomes: dict[int, Outcome] = field(default_factory=dict)  # retried jobs left out
    retries: list[Retry] = field(default_factory=list)

    def job_ids(self) -> set[int]:
        """Every job these changes touch: what the view reads back once they are written."""
        return (
            {job_id for job_id, _, _ in self.tasks}
            | set(self.began)
            | {job_id for job_id, _, _ in self.pending}
            | set(self.outcomes)
            | {r.job_id for r in self.retries}
        )

    def finished(self) -> list[int]:
        """The jobs that end (or go back to the queue): their tasks' handles are released."""
        ends = [job_id for job_id, o in self.outcomes.items() if o.final is not None]
        return ends + [r.job_id for r in self.retries]

    def __bool__(self) -> bool:
        return bool(self.tasks or self.pending or self.outcomes or self.retries)


def watched(jobs: Mapping[int, Job]) -> list[tuple[Job, Task]]:
    """The tasks to poll: every started task that has not ended."""
    return [
        (job, task)
        for job in jobs.values()
        for task in job.tasks
        if task.handle is not None and not task.state.is_finished()
    ]


def plan(
    jobs: Mapping[int, Job],
    polled: Sequence[tuple[Job, Task]],
    reports: Sequence[TaskReport],
    *,
    now: float,
    full: bool,
    held: Collection[int],
    retry: RetryPolicy,
) -> Changes:
    """What the reports make of the jobs. `full`: decide every live job, not only those whose
    tasks changed (and the STOPPING ones). `held`: jobs a crash caught mid-start, never
    finished until the executor has said what of them it started."""
    changes = Changes()
    updated = _task_changes(polled, reports, now, changes)
    _began(jobs, updated, changes)
    outcomes = {
        job.id: o
        for job in _to_decide(jobs, updated, full)
        if job.id not in held and (o := decide(job)) is not None
    }
    _with_executor_reasons(outcomes, polled, reports)
    for job_id, o in outcomes.items():
        job = updated.get(job_id) or jobs[job_id]
        if o.final is JobState.FAILED and retry.retryable(job.attempt, job.spec, o.termination):
            changes.retries.append(
                retry.retry(
                    job.id,
                    job.attempt,
                    job.spec,
                    why=o.termination,
                    message=o.message,
                    now=now,
                    exit_code=o.exit_code,
                    started_at=job.started_at,
                )
            )
        else:
            changes.outcomes[job_id] = o
    return changes


def _task_changes(
    polled: Sequence[tuple[Job, Task]], reports: Sequence[TaskReport], now: float, out: Changes
) -> dict[int, Job]:
    """The task updates the reports call for, and each touched job as it would then stand (a
    copy: the jobs given stay as stored). Pending reasons of STARTING jobs still waiting."""
    tasks: dict[int, dict[int, Task]] = {}
    waiting: dict[int, tuple[PendingReason, str]] = {}
    for (job, task), report in zip(polled, reports, strict=True):
        update = _task_update(task, report, now)
        if update is not None:
            out.tasks.append((job.id, task.index, update))
            state = report.state if report.state in _ENDED else TaskState.RUNNING
            changed = task.model_copy(update={"state": state, "exit_code": report.exit_code})
            tasks.setdefault(job.id, {})[task.index] = changed
        elif report.state is TaskState.PENDING and job.state is JobState.STARTING:
            waiting.setdefault(job.id, _waiting_for(report))
    by_id = {job.id: job for job, _ in polled}
    updated = {
        job_id: by_id[job_id].model_copy(
            update={"tasks": [changed.get(t.index, t) for t in by_id[job_id].tasks]}
        )
        for job_id, changed in tasks.items()
    }
    out.pending = [
        (job_id, code, message)
        for job_id, (code, message) in waiting.items()
        if job_id not in updated
        and (by_id[job_id].pending_reason, by_id[job_id].pending_message) != (code, message)
    ]
    return updated


def _task_update(task: Task, report: TaskReport, now: float) -> q.TaskUpdate | None:
    if report.state in _ENDED:
        return q.TaskUpdate(state=report.state, exit_code=report.exit_code, finished_at=now)
    if report.state is TaskState.RUNNING and task.state is TaskState.PENDING:
        # the executor's own scheduler (Slurm) started it
        return q.TaskUpdate(state=TaskState.RUNNING, started_at=now)
    return None


def _began(jobs: Mapping[int, Job], updated: dict[int, Job], out: Changes) -> None:
    """STARTING jobs a task of which changed run now: decided as RUNNING in this very pass."""
    for job_id, job in list(updated.items()):
        if jobs[job_id].state is JobState.STARTING:
            out.began.append(job_id)
            updated[job_id] = job.model_copy(update={"state": JobState.RUNNING})


def _to_decide(jobs: Mapping[int, Job], updated: dict[int, Job], full: bool) -> list[Job]:
    if full:
        return [updated.get(job_id, job) for job_id, job in jobs.items()]
    stopping = [j for j in jobs.values() if j.state is JobState.STOPPING and j.id not in updated]
    return [*updated.values(), *stopping]


def _waiting_for(report: TaskReport) -> tuple[PendingReason, str]:
    """Why a STARTING job's task waits, as its executor reported (its own queue by default)."""
    why = report.pending_reason or PendingReason.EXECUTOR
    return why, report.message or "waiting in the executor's queue"


def _with_executor_reasons(
    outcomes: dict[int, Outcome],
    polled: Sequence[tuple[Job, Task]],
    reports: Sequence[TaskReport],
) -> None:
    """A job a task of which ended for a reason its executor gave (its image could not be
    pulled) ends, or begins stopping, for that reason (the first such task's)."""
    for (job, _), report in zip(polled, reports, strict=True):
        if job.id in outcomes and report.reason is not None and report.state.is_finished():
            outcomes[job.id] = for_reason(outcomes[job.id], report.reason, report.message)


def apply(conn: Connection, changes: Changes, now: float) -> None:
    """Write the changes: pending reasons, jobs that began, task updates, retries, then each
    job's end or the beginning of its stop."""
    if changes.pending:  # only changes are written: an event says each
        events = {job_id for job_id, _, _ in changes.pending}
        sq.set_pending(conn, list(changes.pending), now, events=events)
    if changes.began:  # no longer waiting in the executor's queue
        sq.set_pending(conn, [(job_id, None, "") for job_id in changes.began], now)
        running = q.Transition(JobState.RUNNING, "started by the executor's scheduler")
        q.transition_many(conn, [(job_id, running) for job_id in changes.began], now)
    q.update_tasks(conn, changes.tasks)
    sq.requeue_for_retry(conn, changes.retries, now)
    finals = [
        (job_id, q.Transition(o.final, o.message, termination=o.termination, exit_code=o.exit_code))
        for job_id, o in changes.outcomes.items()
        if o.final is not None
    ]
    q.transition_many(conn, finals, now)
    stops = [
        (job_id, o.stop_reason, o.message)
        for job_id, o in changes.outcomes.items()
        if o.final is None and o.stop_reason is not None
    ]
    begin_stops(conn, stops, now)


def begin_stops(
    conn: Connection, stops: Sequence[tuple[int, TerminationReason, str]], now: float
) -> None:
    """Record why each job stops, then move it to STOPPING (a Warning event with the reason)."""
    if not stops:
        return
    q.request_stops(conn, [(job_id, why) for job_id, why, _ in stops], now)
    changes = [
        (job_id, q.Transition(JobState.STOPPING, message, event_type=EventType.WARNING))
        for job_id, _, message in stops
    ]
    q.transition_many(conn, changes, now)
