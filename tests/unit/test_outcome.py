from datetime import UTC, datetime

from jobyard.model import JobState, Task, TaskState, TerminationReason
from jobyard.scheduler.outcome import decide
from tests.factories import exited, make_job, running


def test_all_zero_exits_succeed() -> None:
    job = make_job(state=JobState.RUNNING, replicas=2, tasks=[exited(0, 0), exited(1, 0)])
    outcome = decide(job)
    assert outcome is not None
    assert (outcome.final, outcome.exit_code) == (JobState.SUCCEEDED, 0)


def test_nonzero_exit_fails_with_that_code() -> None:
    outcome = decide(make_job(state=JobState.RUNNING, tasks=[exited(0, 3)]))
    assert outcome is not None
    assert (outcome.final, outcome.termination, outcome.exit_code) == (
        JobState.FAILED,
        TerminationReason.EXIT_NONZERO,
        3,
    )


def test_one_failed_worker_stops_the_others() -> None:
    job = make_job(state=JobState.RUNNING, replicas=2, tasks=[exited(0, 1), running(1)])
    outcome = decide(job)
    assert outcome is not None
    assert outcome.final is None and outcome.stop_reason is TerminationReason.EXIT_NONZERO


def test_running_tasks_mean_no_decision() -> None:
    assert decide(make_job(state=JobState.RUNNING, tasks=[running(0)])) is None


def test_user_stop_ends_stopped_even_with_signal_exit_code() -> None:
    job = make_job(state=JobState.STOPPING, tasks=[exited(0, 143)])
    job.stop_reason = TerminationReason.STOPPED_BY_USER
    outcome = decide(job)
    assert outcome is not None
    assert (outcome.final, outcome.exit_code) == (JobState.STOPPED, 143)


def test_max_runtime_stop_ends_failed() -> None:
    job = make_job(state=JobState.STOPPING, max_runtime=1, tasks=[exited(0, 143)])
    job.stop_reason = TerminationReason.MAX_RUNTIME_EXCEEDED
    outcome = decide(job)
    assert outcome is not None
    assert (outcome.final, outcome.termination) == (
        JobState.FAILED,
        TerminationReason.MAX_RUNTIME_EXCEEDED,
    )


def test_lost_task_fails_the_job_as_lost() -> None:
    job = make_job(
        state=JobState.RUNNING, tasks=[Task(index=0, name="t", state=TaskState.LOST, handle={})]
    )
    outcome = decide(job)
    assert outcome is not None
    assert (outcome.final, outcome.termination) == (JobState.FAILED, TerminationReason.LOST)


def test_stopping_job_whose_tasks_never_started_finishes() -> None:
    job = make_job(state=JobState.STOPPING)
    job.stop_reason = TerminationReason.STOPPED_BY_USER
    outcome = decide(job)
    assert outcome is not None and outcome.final is JobState.STOPPED


def test_a_job_stopped_for_a_failed_task_ends_naming_the_task_that_failed_first() -> None:
    early = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    tasks = [
        Task(index=0, name="w-0", state=TaskState.EXITED, exit_code=143),  # stopped for it
        Task(index=1, name="w-1", state=TaskState.EXITED, exit_code=3, finished_at=early),
        Task(index=2, name="w-2", state=TaskState.EXITED, exit_code=137),
    ]
    job = make_job(state=JobState.STOPPING, tasks=tasks, replicas=3)
    job.stop_reason = TerminationReason.EXIT_NONZERO
    outcome = decide(job)
    assert outcome is not None
    assert (outcome.final, outcome.message) == (JobState.FAILED, "w-1 exited with code 3")
