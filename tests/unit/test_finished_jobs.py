"""The cache of finished jobs behind list pages: only what can never change again, bounded."""

from __future__ import annotations

from jobyard.model import JobState
from jobyard.store.jobs import FinishedJobs
from tests.factories import exited, make_job, running


def test_keeps_finished_jobs_whose_tasks_have_all_ended() -> None:
    cache = FinishedJobs()
    done = make_job(1, state=JobState.SUCCEEDED, tasks=[exited(0, 0)])
    queued_then_stopped = make_job(2, state=JobState.STOPPED)  # its tasks never started
    cache.put_many([done, queued_then_stopped])
    assert cache.get_many([1, 2, 3]) == {1: done, 2: queued_then_stopped}


def test_never_keeps_a_live_job_or_a_finished_one_with_a_task_still_running() -> None:
    cache = FinishedJobs()
    live = make_job(1, state=JobState.RUNNING, tasks=[running(0)])
    failing = make_job(2, state=JobState.FAILED, replicas=2, tasks=[exited(0, 1), running(1)])
    cache.put_many([live, failing])
    assert cache.get_many([1, 2]) == {}


def test_holds_at_most_its_size_dropping_the_least_recently_read() -> None:
    cache = FinishedJobs(size=2)
    jobs = [make_job(i, state=JobState.SUCCEEDED, tasks=[exited(0, 0)]) for i in (1, 2, 3)]
    cache.put_many(jobs[:2])
    assert set(cache.get_many([1])) == {1}  # 1 is now the most recently read
    cache.put_many(jobs[2:])
    assert set(cache.get_many([1, 2, 3])) == {1, 3}
