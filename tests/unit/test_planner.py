"""The planner, deterministic: a declared inventory (4 x A16, 2 x H100, 8 CPUs), no sleeps."""

from __future__ import annotations

from typing import Any

from jobyard.config import QueueSpec
from jobyard.model import Job, JobSpec, JobState, PendingReason, Task, TaskState
from jobyard.model.capacity import Capacity, GpuInfo
from jobyard.scheduler.policy import Candidate, Plan, plan

NOW = 1_000_000.0
CAPACITY = Capacity(
    node="n1",
    cpus=8,
    memory_mib=65536,
    max_tasks=64,
    gpus=[
        *(GpuInfo(index=i, model="NVIDIA A16") for i in range(4)),
        *(GpuInfo(index=4 + i, model="NVIDIA H100 80GB HBM3") for i in range(2)),
    ],
)
QUEUES = {
    "default": QueueSpec(name="default"),
    "urgent": QueueSpec(name="urgent", priority=100),
}


def job(
    job_id: int,
    owner: str = "alice",
    *,
    queue: str = "default",
    priority: int = 0,
    waited: float = 0.0,
    not_before: float | None = None,
    **spec: Any,
) -> Candidate:
    return Candidate(
        id=job_id,
        display_id=f"j{job_id}",
        owner=owner,
        queue=queue,
        priority=priority,
        spec=JobSpec(**{"entrypoint": "true", **spec}),
        not_before=not_before,
        waiting_since=NOW - waited,
    )


def running(job_id: int, owner: str = "alice", gpus: list[int] | None = None, **spec: Any) -> Job:
    from tests.factories import make_job

    live = make_job(job_id, state=JobState.RUNNING, **spec)
    tasks = [
        Task(
            index=t.index, name=t.name, state=TaskState.RUNNING, handle={"pid": 1}, gpus=gpus or []
        )
        for t in live.tasks
    ]
    return live.model_copy(update={"owner": owner, "tasks": tasks})


def run(
    candidates: list[Candidate],
    live: list[Job] | None = None,
    *,
    queues: dict[str, QueueSpec] | None = None,
    reserve_after: float = 3600.0,
) -> Plan:
    return plan(
        candidates,
        CAPACITY,
        live or [],
        queues or QUEUES,
        now=NOW,
        reserve_after=reserve_after,
    )


def placed(result: Plan) -> list[int]:
    return [p.job_id for p in result.placements]


def test_priority_first_then_submission_order() -> None:
    result = run(
        [
            job(1, resources={"cpus": 4}),
            job(2, resources={"cpus": 4}, priority=5),
            job(3, resources={"cpus": 4}),
        ]
    )
    assert placed(result) == [2, 1]
    assert result.pending[3][0] is PendingReason.WAITING_FOR_CAPACITY
    assert result.positions == {2: 1, 1: 2, 3: 3}


def test_a_queues_priority_outranks_job_priorities() -> None:
    result = run(
        [job(1, resources={"cpus": 8}, priority=50), job(2, resources={"cpus": 8}, queue="urgent")]
    )
    assert placed(result) == [2]


def test_fair_share_alternates_between_users_of_a_queue() -> None:
    alice = [job(i, "alice", resources={"cpus": 2}) for i in (1, 2, 3)]
    bob = [job(i, "bob", resources={"cpus": 2}) for i in (4, 5, 6)]
    assert placed(run([*alice, *bob])) == [1, 4, 2, 5]


def test_fair_share_counts_what_users_already_run() -> None:
    live = [running(10, "alice", resources={"cpus": 4})]
    alice = [job(1, "alice", resources={"cpus": 2})]
    bob = [job(2, "bob", resources={"cpus": 2}), job(3, "bob", resources={"cpus": 2})]
    # Alice holds half the CPUs: Bob's two jobs go before her next one.
    assert placed(run([*alice, *bob], live)) == [2, 3]


def test_per_user_quota_holds_a_job_back_without_blocking_others() -> None:
    queues = {"default": QueueSpec(name="default", max_running_jobs_per_user=1)}
    live = [running(10, "alice", resources={"cpus": 1})]
    result = run(
        [job(1, "alice", resources={"cpus": 1}), job(2, "bob", resources={"cpus": 1})],
        live,
        queues=queues,
    )
    assert placed(result) == [2]
    code, message = result.pending[1]
    assert code is PendingReason.QUOTA_EXCEEDED
    assert "at most 1 running jobs" in message


def test_queue_gpu_quota() -> None:
    queues = {"default": QueueSpec(name="default", max_gpus=2)}
    result = run([job(1, resources={"gpus": 2}), job(2, resources={"gpus": 1})], queues=queues)
    assert placed(result) == [1]
    assert result.pending[2][0] is PendingReason.QUOTA_EXCEEDED


def test_backfill_starts_smaller_jobs_when_the_head_does_not_fit() -> None:
    live = [running(10, resources={"gpus": 2}, gpus=[0, 1])]
    head = job(1, resources={"gpus": 6})
    result = run([head, job(2, resources={"gpus": 1}), job(3, resources={"cpus": 1})], live)
    assert placed(result) == [2, 3]
    assert result.pending[1][0] is PendingReason.WAITING_FOR_CAPACITY
    assert "6 GPUs (4 free)" in result.pending[1][1]


def test_a_long_blocked_head_holds_what_it_needs_so_it_is_not_starved() -> None:
    live = [running(10, resources={"gpus": 2}, gpus=[0, 1])]
    head = job(1, resources={"gpus": 6}, waited=120)
    result = run(
        [head, job(2, resources={"gpus": 1}), job(3, resources={"cpus": 1})],
        live,
        reserve_after=60,
    )
    # The GPU job would take a GPU the head is collecting: it waits; the CPU job backfills.
    assert placed(result) == [3]
    code, message = result.pending[2]
    assert code is PendingReason.PRIORITY
    assert "job j1" in message
    # Once the running job ends, the head gets every GPU before the small job.
    assert placed(run([head, job(2, resources={"gpus": 1})], [], reserve_after=60)) == [1]


def test_gang_starts_all_workers_or_none() -> None:
    live = [running(10, resources={"gpus": 2}, gpus=[0, 1])]
    result = run([job(1, replicas=3, resources={"gpus": 2})], live)
    assert placed(result) == []
    assert result.pending[1][0] is PendingReason.GANG_DOES_NOT_FIT_YET
    result = run([job(1, replicas=2, resources={"gpus": 2})], live)
    (placement,) = result.placements
    assert [t.gpus for t in placement.tasks] == [[2, 3], [4, 5]]


def test_gpu_model_lands_only_on_that_model() -> None:
    result = run([job(1, resources={"gpus": 2, "gpu_model": "H100"})])
    assert [t.gpus for t in result.placements[0].tasks] == [[4, 5]]
    live = [running(10, resources={"gpus": 2, "gpu_model": "H100"}, gpus=[4, 5])]
    result = run([job(2, resources={"gpus": 1, "gpu_model": "h100"})], live)
    assert placed(result) == []
    code, message = result.pending[2]
    assert code is PendingReason.NO_MATCHING_GPU_MODEL
    assert "0 of the 4 free GPUs match" in message


def test_no_gpu_is_given_twice() -> None:
    live = [running(10, resources={"gpus": 1}, gpus=[3])]
    result = run([job(i, resources={"gpus": 1}) for i in range(1, 8)], live)
    given = [g for p in result.placements for t in p.tasks for g in t.gpus]
    assert sorted(given) == [0, 1, 2, 4, 5]
    assert len(result.pending) == 2


def test_a_job_in_backoff_waits_and_says_until_when() -> None:
    result = run([job(1, not_before=NOW + 30), job(2)])
    assert placed(result) == [2]
    code, message = result.pending[1]
    assert code is PendingReason.BACKOFF
    assert "no sooner than" in message
    assert placed(run([job(1, not_before=NOW - 1)])) == [1]


def test_ten_thousand_queued_jobs_plan_in_one_pass() -> None:
    candidates = [
        job(i, f"user{i % 20}", queue="urgent" if i % 4 == 0 else "default", resources={"cpus": 1})
        for i in range(1, 10_001)
    ]
    result = run(candidates)
    assert len(result.placements) == 8
    assert len(result.pending) == 10_000 - 8
    assert sorted(result.positions.values())[-1] == 7_500
