"""The reconciler's pure halves: observe.plan, enforce.plan, start.plan and start.plan_found
take the live jobs as stored and what the executor said, and say what changes, never changing
the jobs they were given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobyard.executors.base import StartedTask, TaskReport
from jobyard.model import (
    Job,
    JobState,
    PendingReason,
    Placement,
    Task,
    TaskState,
    TerminationReason as Why,
)
from jobyard.model.job import TaskPlacement
from jobyard.scheduler import enforce, observe, start
from jobyard.scheduler.retry import RetryPolicy
from tests.factories import exited, make_job, running

NOW = datetime(2026, 1, 1, tzinfo=UTC).timestamp() + 100
RETRY = RetryPolicy(backoff=30, backoff_max=600)


def _plan(jobs: list[Job], reports: list[TaskReport], **kw: object) -> observe.Changes:
    view = {job.id: job for job in jobs}
    polled = observe.watched(view)
    assert len(polled) == len(reports)
    options = {"now": NOW, "full": False, "held": (), "retry": RETRY, **kw}
    return observe.plan(view, polled, reports, **options)  # type: ignore[arg-type]


def _dump(jobs: list[Job]) -> list[dict[str, object]]:
    return [job.model_dump() for job in jobs]


def test_observe_finishes_a_job_whose_tasks_all_ended_without_touching_it() -> None:
    jobs = [make_job(1, state=JobState.RUNNING, replicas=2, tasks=[running(0), running(1)])]
    before = _dump(jobs)
    changes = _plan(jobs, [TaskReport(TaskState.EXITED, 0), TaskReport(TaskState.EXITED, 0)])
    assert _dump(jobs) == before  # the view stays as stored: the store is the one truth
    assert [(j, i, u.state, u.exit_code) for j, i, u in changes.tasks] == [
        (1, 0, TaskState.EXITED, 0),
        (1, 1, TaskState.EXITED, 0),
    ]
    assert changes.outcomes[1].final is JobState.SUCCEEDED
    assert changes.finished() == [1] and changes.job_ids() == {1}


def test_observe_stops_the_rest_of_a_job_whose_worker_failed() -> None:
    job = make_job(1, state=JobState.RUNNING, replicas=2, tasks=[running(0), running(1)])
    changes = _plan([job], [TaskReport(TaskState.EXITED, 3), TaskReport(TaskState.RUNNING)])
    outcome = changes.outcomes[1]
    assert (outcome.final, outcome.stop_reason) == (None, Why.EXIT_NONZERO)
    assert changes.finished() == []


def test_observe_retries_a_failed_attempt_that_max_retries_allows() -> None:
    job = make_job(1, state=JobState.RUNNING, tasks=[running(0)], max_retries=2)
    job.attempt = 1
    changes = _plan([job], [TaskReport(TaskState.EXITED, 9)])
    assert changes.outcomes == {}
    (retry,) = changes.retries
    assert (retry.attempt, retry.exit_code, retry.retries_left) == (1, 9, 0)
    assert retry.not_before == NOW + 60  # 30 s doubled once
    assert changes.finished() == [1]  # its handles are released too


def test_observe_never_retries_a_stop_by_its_user() -> None:
    job = make_job(1, state=JobState.STOPPING, tasks=[running(0)], max_retries=3)
    job.stop_reason = Why.STOPPED_BY_USER
    changes = _plan([job], [TaskReport(TaskState.EXITED, 143)])
    assert changes.retries == [] and changes.outcomes[1].final is JobState.STOPPED


def test_a_starting_job_whose_executor_started_it_runs_and_is_decided_as_running() -> None:
    waiting = Task(index=0, name="t-worker-0", state=TaskState.PENDING, handle={"slurm": "7"})
    slurm = make_job(1, state=JobState.STARTING, tasks=[waiting])
    quick = make_job(2, state=JobState.STARTING, tasks=[waiting.model_copy()])
    changes = _plan(
        [slurm, quick], [TaskReport(TaskState.RUNNING), TaskReport(TaskState.EXITED, 0)]
    )
    assert sorted(changes.began) == [1, 2]
    assert 1 not in changes.outcomes
    assert changes.outcomes[2].final is JobState.SUCCEEDED  # RUNNING, then done, in one pass
    assert slurm.state is JobState.STARTING and slurm.tasks[0].state is TaskState.PENDING


def test_a_starting_job_still_held_gets_its_pending_reason_once() -> None:
    waiting = Task(index=0, name="t-worker-0", state=TaskState.PENDING, handle={"slurm": "7"})
    job = make_job(1, state=JobState.STARTING, tasks=[waiting])
    report = TaskReport(TaskState.PENDING, message="Slurm job 7 is pending (Resources)")
    changes = _plan([job], [report])
    assert changes.pending == [(1, PendingReason.EXECUTOR, "Slurm job 7 is pending (Resources)")]
    job.pending_reason, job.pending_message = PendingReason.EXECUTOR, report.message
    assert not _plan([job], [report])  # unchanged: nothing to write


def test_observe_holds_jobs_a_crash_caught_mid_start() -> None:
    job = make_job(1, state=JobState.RUNNING, tasks=[running(0)])
    changes = _plan([job], [TaskReport(TaskState.EXITED, 0)], held={1})
    assert changes.tasks and not changes.outcomes


def test_a_full_pass_decides_jobs_that_reported_nothing_new() -> None:
    done = make_job(1, state=JobState.RUNNING, tasks=[exited(0, 0)])  # stored ended, not decided
    assert not _plan([done], [])
    assert _plan([done], [], full=True).outcomes[1].final is JobState.SUCCEEDED


def test_an_executor_reason_names_the_failure() -> None:
    job = make_job(1, state=JobState.STARTING, tasks=[running(0)])
    report = TaskReport(
        TaskState.EXITED, 125, message="manifest unknown", reason=Why.IMAGE_PULL_FAILED
    )
    outcome = _plan([job], [report]).outcomes[1]
    assert (outcome.termination, outcome.message) == (Why.IMAGE_PULL_FAILED, "manifest unknown")


def test_enforce_fails_stuck_starts_and_stops_overdue_jobs() -> None:
    old = datetime.fromtimestamp(NOW - 120, UTC)
    stuck = make_job(1, state=JobState.STARTING).model_copy(update={"updated_at": old})
    held = make_job(2, state=JobState.STARTING).model_copy(update={"updated_at": old})
    slurm = make_job(3, state=JobState.STARTING, tasks=[running(0)])
    slurm = slurm.model_copy(update={"updated_at": old})
    overdue = make_job(4, state=JobState.RUNNING, tasks=[running(0)], max_runtime=60)
    overdue = overdue.model_copy(update={"started_at": old})
    young = make_job(5, state=JobState.RUNNING, tasks=[running(0)], max_runtime=600)
    young = young.model_copy(update={"started_at": old})
    jobs = {j.id: j for j in (stuck, held, slurm, overdue, young)}
    changes = enforce.plan(jobs, now=NOW, start_timeout=60, held={2})
    assert changes.stuck == [1]  # held: kept; all tasks handed over (Slurm queues it): kept
    assert changes.overdue == [(4, Why.MAX_RUNTIME_EXCEEDED, "ran longer than max_runtime (60 s)")]
    assert changes.job_ids() == {1, 4}


def test_enforce_signals_the_live_tasks_of_stopping_jobs() -> None:
    stopping = make_job(1, state=JobState.STOPPING, replicas=2, tasks=[exited(0, 0), running(1)])
    jobs = {1: stopping, 2: make_job(2, state=JobState.RUNNING, tasks=[running(0)])}
    assert enforce.to_signal(jobs) == [{"pid": 1}]


def _placement(job_id: int, tasks: int = 1) -> Placement:
    return Placement(
        job_id=job_id,
        display_id=f"job{job_id:03d}",
        owner="alice",
        spec=make_job(job_id, replicas=tasks, max_retries=1).spec,
        tasks=[TaskPlacement(index=i, name=f"t-{i}", node="n1") for i in range(tasks)],
    )


def _task(index: int, waiting: bool = False) -> StartedTask:
    return StartedTask(index, 100 + index, "n1", {"pid": 100 + index}, waiting=waiting)


def test_start_sorts_runs_waits_retries_and_failures() -> None:
    started = [
        start.Started(_placement(1), [_task(0)]),
        start.Started(_placement(2), [_task(0, waiting=True)]),
        start.Started(_placement(3), [], error="program 'x' not found in PATH"),
        start.Started(_placement(4), [], error="no room for its log"),
    ]
    changes = start.plan(started, {1: 0, 2: 0, 3: 0, 4: 1}, retry=RETRY, now=NOW)
    assert [s.job_id for s in changes.running] == [1]
    assert [s.job_id for s in changes.waiting] == [2]
    assert [(r.job_id, r.termination, r.message) for r in changes.retries] == [
        (3, Why.START_FAILED, "program 'x' not found in PATH")
    ]
    assert [s.job_id for s in changes.failed] == [4]  # its one retry was used already
    assert changes.job_ids() == {1, 2, 3, 4}


def test_found_starts_are_taken_over_stopped_or_lost() -> None:
    def starting(job_id: int, replicas: int = 1, retries: int = 0) -> Job:
        job = make_job(job_id, state=JobState.STARTING, replicas=replicas, max_retries=retries)
        return job

    jobs = [starting(1), starting(2, replicas=2), starting(3), starting(4, retries=1)]
    stopped = make_job(5, state=JobState.STOPPING)
    found = [
        start.Started(_placement(1), [_task(0)], found=True),
        start.Started(_placement(2, tasks=2), [_task(0)], found=True),
        start.Started(_placement(3), [], found=True),
        start.Started(_placement(4), [], found=True),
        start.Started(_placement(5), [_task(0)], found=True),
    ]
    out = start.plan_found([*jobs, stopped], found, retry=RETRY, now=NOW)
    assert [s.job_id for s in out.starts.running] == [1]  # whole: as if its start returned
    assert out.lost == [3]
    assert [r.job_id for r in out.starts.retries] == [4]
    assert [(job_id, why) for job_id, why, _ in out.stops] == [(2, Why.LOST)]
    assert [(j, i, u.state) for j, i, u in out.tasks] == [
        (2, 0, TaskState.RUNNING),
        (2, 1, TaskState.LOST),
        (5, 0, TaskState.RUNNING),  # stopped meanwhile: watched, and ended once gone
    ]
    assert out.job_ids() == {1, 2, 3, 4, 5}
    assert timedelta(seconds=out.starts.retries[0].not_before - NOW) == timedelta(seconds=30)
