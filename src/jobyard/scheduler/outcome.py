"""Pure decisions: given a job and what its tasks reported, what happens to the job next."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from jobyard.model import Job, JobState, Task, TaskState, TerminationReason


@dataclass(frozen=True)
class Outcome:
    """Either finish the job (`final` set) or begin stopping it (`stop_reason` set)."""

    final: JobState | None = None
    termination: TerminationReason | None = None
    exit_code: int | None = None
    stop_reason: TerminationReason | None = None
    message: str = ""


def _is_done(task: Task, job: Job) -> bool:
    never_started = task.state is TaskState.PENDING and task.handle is None
    return task.state.is_finished() or (job.state is JobState.STOPPING and never_started)


def _first_failure(tasks: list[Task]) -> Task | None:
    return next((t for t in tasks if t.state is TaskState.LOST or (t.exit_code or 0) != 0), None)


def _exit_code(tasks: list[Task]) -> int | None:
    failed = _first_failure(tasks)
    if failed is not None:
        return failed.exit_code
    codes = [t.exit_code for t in tasks if t.exit_code is not None]
    return codes[0] if codes else None


def decide(job: Job) -> Outcome | None:
    """The next step for a started job whose tasks carry their latest reports, or None."""
    tasks = job.tasks
    failed = _first_failure(tasks)
    if all(_is_done(t, job) for t in tasks):
        return _finish(job, failed)
    if failed is not None and job.state in (JobState.STARTING, JobState.RUNNING):
        reason = (
            TerminationReason.LOST
            if failed.state is TaskState.LOST
            else TerminationReason.EXIT_NONZERO
        )
        return Outcome(
            stop_reason=reason,
            message=f"{failed.name} {_describe(failed)}; stopping the other tasks",
        )
    return None


def _finish(job: Job, failed: Task | None) -> Outcome:
    code = _exit_code(job.tasks)
    if job.state is JobState.STOPPING:
        why = job.stop_reason or TerminationReason.STOPPED_BY_USER
        return Outcome(
            final=why.final_state(),
            termination=why,
            exit_code=code,
            message=_stop_message(why, job, failed),
        )
    if failed is None:
        return Outcome(
            final=JobState.SUCCEEDED,
            termination=TerminationReason.SUCCEEDED,
            exit_code=code,
            message="all tasks exited with code 0",
        )
    why = (
        TerminationReason.LOST if failed.state is TaskState.LOST else TerminationReason.EXIT_NONZERO
    )
    return Outcome(
        final=JobState.FAILED,
        termination=why,
        exit_code=code,
        message=f"{failed.name} {_describe(failed)}",
    )


def for_reason(outcome: Outcome, why: TerminationReason, message: str) -> Outcome:
    """The outcome of a job a task of which ended for a reason its executor gave (its image
    could not be pulled): a failure, or the stop that follows one, for that reason and with
    the executor's message. A job stopped for another reason (by its user) keeps it."""
    if outcome.termination in _TASK_FAILURES:
        return replace(outcome, termination=why, message=message)
    if outcome.final is None and outcome.stop_reason in _TASK_FAILURES:
        return replace(outcome, stop_reason=why, message=message)
    return outcome


_TASK_FAILURES = (TerminationReason.EXIT_NONZERO, TerminationReason.LOST)


def _describe(task: Task) -> str:
    if task.state is TaskState.LOST:
        return "was lost (its process is gone and left no exit code)"
    return f"exited with code {task.exit_code}"


def _stop_message(why: TerminationReason, job: Job, failed: Task | None) -> str:
    if why is TerminationReason.STOPPED_BY_USER:
        return "stopped by user"
    if why is TerminationReason.MAX_RUNTIME_EXCEEDED:
        return f"ran longer than max_runtime ({job.spec.max_runtime:g} s)"
    if why is TerminationReason.IMAGE_PULL_FAILED:  # the runtime's words, from the stop
        return job.message or why.value
    if why is TerminationReason.IDLE_GPU:
        limit = job.spec.idle_gpu_timeout or 0
        return f"its GPUs stayed idle longer than idle_gpu_timeout ({limit:g} s)"
    cause = _first_to_fail(job.tasks) if failed is not None else None
    if cause is not None:  # the task whose failure stopped the others
        return f"{cause.name} {_describe(cause)}"
    return job.message or why.value


def _first_to_fail(tasks: list[Task]) -> Task | None:
    """The failed task that ended first: the others were stopped because of it (a task that
    ended in this very pass has no finished_at yet, so counts as the latest)."""
    failed = [t for t in tasks if t.state is TaskState.LOST or (t.exit_code or 0) != 0]
    return min(
        failed,
        key=lambda t: t.finished_at.timestamp() if t.finished_at else math.inf,
        default=None,
    )
