from jobyard.config import QueueSpec
from jobyard.model import Job, JobState, Placement
from jobyard.model.capacity import Capacity, GpuInfo, why_never_fits
from jobyard.model.job import Resources
from jobyard.scheduler.policy import Candidate, Free, plan
from tests.factories import make_job, running


def place(queued: list[Job], free: Free) -> list[Placement]:
    """The planner over a pool with `free` left (live jobs already subtracted)."""
    capacity = Capacity(
        node=free.node,
        cpus=free.cpus,
        memory_mib=free.memory_mib,
        max_tasks=free.tasks,
        gpus=free.gpus,
    )
    candidates = [
        Candidate(
            id=j.id,
            display_id=j.display_id,
            owner=j.owner,
            queue=j.queue,
            priority=j.priority,
            spec=j.spec,
        )
        for j in queued
    ]
    queues = {"default": QueueSpec(name="default")}
    return plan(candidates, capacity, [], queues, now=0.0, reserve_after=1e9).placements


def pool(cpus: float = 4, gpus: int = 0, model: str = "NVIDIA A100", tasks: int = 100) -> Capacity:
    return Capacity(
        node="n1",
        cpus=cpus,
        memory_mib=8192,
        max_tasks=tasks,
        gpus=[GpuInfo(index=i, model=model) for i in range(gpus)],
    )


def test_higher_priority_is_placed_first_then_oldest() -> None:
    jobs = [
        make_job(1, resources={"cpus": 2}),
        make_job(2, priority=5, resources={"cpus": 2}),
        make_job(3, resources={"cpus": 2}),
    ]
    order = sorted(jobs, key=lambda j: (-j.priority, j.id))
    placed = place(order, Free.of(pool(cpus=4), []))
    assert [p.job_id for p in placed] == [2, 1]


def test_gang_places_all_replicas_or_none() -> None:
    big = make_job(1, replicas=3, resources={"cpus": 2})
    small = make_job(2, replicas=2, resources={"cpus": 2})
    placed = place([big, small], Free.of(pool(cpus=4), []))
    assert [p.job_id for p in placed] == [2]
    assert len(placed[0].tasks) == 2


def test_gpus_are_assigned_distinct_indices_per_replica() -> None:
    job = make_job(1, replicas=2, resources={"gpus": 2})
    placed = place([job], Free.of(pool(gpus=4), []))
    gpus = [t.gpus for t in placed[0].tasks]
    assert gpus == [[0, 1], [2, 3]]


def test_gpus_held_by_live_jobs_are_not_given_twice() -> None:
    live = make_job(
        1,
        state=JobState.RUNNING,
        resources={"gpus": 1},
        tasks=[running(0).model_copy(update={"gpus": [0]})],
    )
    placed = place([make_job(2, resources={"gpus": 1})], Free.of(pool(gpus=2), [live]))
    assert placed[0].tasks[0].gpus == [1]
    assert place([make_job(3, resources={"gpus": 2})], Free.of(pool(gpus=2), [live])) == []


def test_gpu_model_must_match() -> None:
    free = Free.of(pool(gpus=2, model="NVIDIA H100 80GB"), [])
    assert place([make_job(1, resources={"gpus": 1, "gpu_model": "a100"})], free) == []
    assert place([make_job(2, resources={"gpus": 1, "gpu_model": "h100"})], free)


def test_task_slots_bound_zero_request_jobs() -> None:
    placed = place([make_job(i) for i in range(1, 6)], Free.of(pool(tasks=3), []))
    assert [p.job_id for p in placed] == [1, 2, 3]


def test_why_never_fits_names_the_field() -> None:
    assert why_never_fits(pool(gpus=1), Resources(gpus=2), 1) == (
        "resources.gpus",
        "needs 2 GPUs, the pool has 1",
    )
    assert why_never_fits(pool(cpus=4), Resources(cpus=3), 2)[0] == "resources.cpus"  # type: ignore[index]
    assert why_never_fits(pool(tasks=2), Resources(), 3)[0] == "replicas"  # type: ignore[index]
    assert why_never_fits(pool(gpus=8), Resources(gpus=8), 1) is None
