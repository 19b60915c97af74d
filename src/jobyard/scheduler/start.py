"""Start: claim what the planner placed, then record what the executor started.

`claim(conn, placements)` moves each placed job from QUEUED to STARTING with its tasks' nodes
and GPUs, in one transaction before anything starts; the jobs it returns are the ones to
start (a job stopped meanwhile is not). SCHEDULED is not stored on the way: a claimed job is
one whose start may have begun, which is what a restarted server looks for.

After the executor's starts, pure `plan(started, ...)` says what each start makes of its job:
RUNNING, handed to the executor's own queue (STARTING with a pending reason), retried, or
FAILED with START_FAILED; `apply(conn, changes)` writes it. After a restart, pure
`plan_found(jobs, found, ...)` does the same for the starts a crash interrupted, from what the
executor found of them; `apply_found` writes that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from jobyard.executors.base import StartedTask
from jobyard.model import Job, JobState, PendingReason, Placement, TaskState, TerminationReason
from jobyard.model.job import TaskPlacement
from jobyard.scheduler.observe import begin_stops
from jobyard.scheduler.policy import Plan
from jobyard.scheduler.retry import RetryPolicy
from jobyard.store import jobs as q, scheduling as sq
from jobyard.store.scheduling import Retry

NOT_FOUND = "server restarted while starting; the process was not found"
_HANDED_OVER = "handed to the executor's scheduler"


@dataclass(frozen=True)
class Started:
    """One job's start: the tasks started, or why none is (all or nothing)."""

    placement: Placement
    tasks: list[StartedTask]
    error: str | None = None
    found: bool = False  # found after a restart (find_started), not started by this server

    @property
    def job_id(self) -> int:
        return self.placement.job_id

    @property
    def waiting(self) -> bool:
        """Every task handed to the executor's own scheduler, none running yet (Slurm)."""
        return bool(self.tasks) and all(t.waiting for t in self.tasks)


# ---- claiming ---------------------------------------------------------------------------------


def claim(conn: Connection, placements: Sequence[Placement], now: float) -> set[int]:
    """QUEUED -> STARTING for each placement, and its tasks' nodes and GPUs; the ids claimed."""
    changes = [(p.job_id, _claimed(p)) for p in placements]
    claimed = set(q.transition_many(conn, changes, now))
    q.update_tasks(
        conn,
        [
            (p.job_id, t.index, q.TaskUpdate(node=t.node, gpus=t.gpus))
            for p in placements
            if p.job_id in claimed
            for t in p.tasks
        ],
    )
    return claimed


def _claimed(placement: Placement) -> q.Transition:
    """STARTING, with the event Kubernetes names Scheduled: placed, its start under way."""
    where = f"placed on {placement.tasks[0].node}: starting {len(placement.tasks)} task(s)"
    return q.Transition(JobState.STARTING, where)


def pending_of(result: Plan) -> tuple[list[tuple[int, PendingReason | None, str]], set[int]]:
    """The pending reasons of the queued jobs that wait, where they changed, and the jobs whose
    reason code changed (an event says each)."""
    changes: list[tuple[int, PendingReason | None, str]] = []
    events: set[int] = set()
    for candidate in result.changed:
        code, message = result.pending[candidate.id]
        if candidate.pending[0] is not code:
            events.add(candidate.id)
        changes.append((candidate.id, code, message))
    return changes, events


# ---- what the starts made -------------------------------------------------------------------


@dataclass
class Changes:
    running: list[Started] = field(default_factory=list)
    waiting: list[Started] = field(default_factory=list)  # in the executor's own queue
    failed: list[Started] = field(default_factory=list)
    retries: list[Retry] = field(default_factory=list)

    def job_ids(self) -> set[int]:
        starts = [*self.running, *self.waiting, *self.failed]
        return {s.job_id for s in starts} | {r.job_id for r in self.retries}


def plan(
    started: Sequence[Started], attempts: Mapping[int, int], *, retry: RetryPolicy, now: float
) -> Changes:
    """`attempts`: each job's attempt number, for the retry of a start that failed."""
    changes = Changes()
    for start in started:
        if start.error is None:
            (changes.waiting if start.waiting else changes.running).append(start)
            continue
        attempt, spec = attempts[start.job_id], start.placement.spec
        if retry.retryable(attempt, spec, TerminationReason.START_FAILED):
            changes.retries.append(
                retry.retry(
                    start.job_id,
                    attempt,
                    spec,
                    why=TerminationReason.START_FAILED,
                    message=start.error,
                    now=now,
                )
            )
        else:
            changes.failed.append(start)
    return changes


def apply(conn: Connection, changes: Changes, now: float) -> None:
    sq.requeue_for_retry(conn, changes.retries, now)
    q.update_tasks(
        conn,
        [
            (s.job_id, t.index, _start_update(t, now))
            for s in (*changes.running, *changes.waiting)
            for t in s.tasks
        ],
    )
    handed = [(s.job_id, *_waiting_for(s.tasks[0])) for s in changes.waiting]
    sq.set_pending(conn, handed, now, events={s.job_id for s in changes.waiting})
    failed = [
        (
            s.job_id,
            q.Transition(
                JobState.FAILED, s.error or "", termination=TerminationReason.START_FAILED
            ),
        )
        for s in changes.failed
    ]
    running = [
        (s.job_id, q.Transition(JobState.RUNNING, _started_message(s))) for s in changes.running
    ]
    q.transition_many(conn, [*failed, *running], now)


def _waiting_for(task: StartedTask) -> tuple[PendingReason, str]:
    """Why a task handed over waits, until a poll says (the executor's own queue by default)."""
    return task.pending_reason or PendingReason.EXECUTOR, task.pending_message or _HANDED_OVER


def _start_update(task: StartedTask, now: float) -> q.TaskUpdate:
    handle = dict(task.handle)  # the executor's own TypedDict, stored as JSON
    if task.waiting:  # in the executor's own queue: RUNNING once a poll says so
        return q.TaskUpdate(pid=task.pid, node=task.node, handle=handle)
    return q.TaskUpdate(
        state=TaskState.RUNNING, pid=task.pid, node=task.node, started_at=now, handle=handle
    )


def _started_message(started: Started) -> str:
    pids = ", ".join(str(t.pid) for t in started.tasks)
    if started.found:
        return f"server restarted while starting; found {len(started.tasks)} task(s) (pid {pids})"
    return f"started {len(started.tasks)} task(s) (pid {pids})"


# ---- starts a crash interrupted -------------------------------------------------------------


def unrecorded(job: Job) -> Placement:
    """The placement of a job's tasks whose handles were never stored, as it was claimed."""
    tasks = [
        TaskPlacement(index=t.index, name=t.name, node=t.node or "", gpus=t.gpus)
        for t in job.tasks
        if t.handle is None
    ]
    return Placement(
        job_id=job.id, display_id=job.display_id, owner=job.owner, spec=job.spec, tasks=tasks
    )


@dataclass
class Found:
    """What find_started() said of the interrupted starts, as changes."""

    starts: Changes = field(default_factory=Changes)  # found whole while STARTING: a start
    tasks: list[tuple[int, int, q.TaskUpdate]] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # nothing found: FAILED (LOST)
    stops: list[tuple[int, TerminationReason, str]] = field(default_factory=list)  # in part

    def job_ids(self) -> set[int]:
        stopped = {job_id for job_id, _, _ in self.stops}
        return self.starts.job_ids() | {i for i, _, _ in self.tasks} | set(self.lost) | stopped


def plan_found(
    jobs: Sequence[Job],
    found: Sequence[Started],
    *,
    retry: RetryPolicy,
    now: float,
) -> Found:
    """`found[i]`: the tasks of `jobs[i]` the executor found. Found whole while STARTING: its
    start. Otherwise what was found is recorded (so it is watched, and stopped): a STARTING job
    missing some tasks begins stopping (LOST, those tasks LOST), one missing all fails LOST
    unless it is retried. A job stopped meanwhile (STOPPING) gets its tasks found, and ends
    once they are gone."""
    out = Found()
    whole = [f for job, f in zip(jobs, found, strict=True) if _found_whole(job, f)]
    out.starts = plan(whole, {}, retry=retry, now=now)
    done = {f.job_id for f in whole}
    for job, start in zip(jobs, found, strict=True):
        if job.id in done:
            continue
        if job.state is JobState.STARTING and not start.tasks:
            if retry.retryable(job.attempt, job.spec, TerminationReason.LOST):
                why = TerminationReason.LOST
                out.starts.retries.append(
                    retry.retry(job.id, job.attempt, job.spec, why=why, message=NOT_FOUND, now=now)
                )
            else:
                out.lost.append(job.id)
            continue
        out.tasks += [(job.id, t.index, _start_update(t, now)) for t in start.tasks]
        if job.state is JobState.STARTING:  # found in part
            gone = q.TaskUpdate(state=TaskState.LOST, finished_at=now)
            out.tasks += [(job.id, t.index, gone) for t in _missing(start)]
            out.stops.append((job.id, TerminationReason.LOST, _missing_message(start)))
    return out


def _found_whole(job: Job, found: Started) -> bool:
    return (
        job.state is JobState.STARTING
        and bool(found.tasks)
        and len(found.tasks) == len(found.placement.tasks)
    )


def apply_found(conn: Connection, found: Found, now: float) -> None:
    apply(conn, found.starts, now)
    q.update_tasks(conn, found.tasks)
    lost = q.Transition(JobState.FAILED, NOT_FOUND, termination=TerminationReason.LOST)
    q.transition_many(conn, [(job_id, lost) for job_id in found.lost], now)
    begin_stops(conn, found.stops, now)


def _missing(found: Started) -> list[TaskPlacement]:
    have = {t.index for t in found.tasks}
    return [t for t in found.placement.tasks if t.index not in have]


def _missing_message(found: Started) -> str:
    names = ", ".join(t.name for t in _missing(found))
    return f"server restarted while starting; {names} not found: stopping the other tasks"
