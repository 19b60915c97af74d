"""A task that ended for a reason its executor gave (its container image was not pulled)."""

from jobyard.model import JobState, Task, TerminationReason
from jobyard.scheduler.outcome import Outcome, decide, for_reason
from tests.factories import exited, make_job, running

PULL = TerminationReason.IMAGE_PULL_FAILED
SAID = "Error: initializing source docker://127.0.0.1:5000/x:missing: manifest unknown"


def _decided(
    job_state: JobState, *tasks: Task, stop_reason: TerminationReason | None = None
) -> Outcome:
    job = make_job(state=job_state, replicas=len(tasks), tasks=list(tasks))
    job.stop_reason, job.message = stop_reason, SAID if stop_reason is PULL else ""
    outcome = decide(job)
    assert outcome is not None
    return outcome


def test_a_failed_job_fails_for_the_reason_with_the_runtimes_words() -> None:
    outcome = for_reason(_decided(JobState.STARTING, exited(0, 125)), PULL, SAID)
    assert (outcome.final, outcome.termination, outcome.exit_code) == (JobState.FAILED, PULL, 125)
    assert outcome.message == SAID


def test_the_other_workers_are_stopped_for_the_reason() -> None:
    stopping = for_reason(_decided(JobState.RUNNING, exited(0, 125), running(1)), PULL, SAID)
    assert (stopping.final, stopping.stop_reason, stopping.message) == (None, PULL, SAID)
    final = _decided(JobState.STOPPING, exited(0, 125), exited(1, 143), stop_reason=PULL)
    assert (final.final, final.termination, final.message) == (JobState.FAILED, PULL, SAID)


def test_a_stop_for_another_reason_keeps_it() -> None:
    for why in (TerminationReason.STOPPED_BY_USER, TerminationReason.IDLE_GPU):
        outcome = _decided(JobState.STOPPING, exited(0, 125), stop_reason=why)
        assert for_reason(outcome, PULL, SAID) == outcome
