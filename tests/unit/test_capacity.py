"""One fit calculation (model/capacity.shortfall) for "never fits", "fits now" and "why not";
a pool that can grow (a Ray cluster) has no "never" but for its task slots."""

from __future__ import annotations

from jobyard.config import QueueSpec
from jobyard.model import JobSpec, PendingReason
from jobyard.model.capacity import Capacity, Free, GpuInfo, Shortage, shortfall, why_never_fits
from jobyard.model.job import Resources
from jobyard.scheduler.policy import GROWING, Candidate, plan


def pool(cpus: float = 0.3, memory: int = 2**21, gpus: int = 2) -> Capacity:
    models = ["NVIDIA A100", "NVIDIA H100"]
    return Capacity(
        node="n1",
        cpus=cpus,
        memory_mib=memory,
        max_tasks=4,
        gpus=[GpuInfo(index=i, model=models[i % 2]) for i in range(gpus)],
    )


def why_waiting(capacity: Capacity, spec: JobSpec) -> tuple[PendingReason, str]:
    candidate = Candidate(id=1, display_id="j1", owner="a", queue="q", priority=0, spec=spec)
    result = plan([candidate], capacity, [], {"q": QueueSpec(name="q")}, now=0, reserve_after=9)
    assert not result.placements
    return result.pending[1]


def test_every_shortage_is_named_with_what_is_needed_and_free() -> None:
    short = shortfall(Free.whole(pool()), Resources(cpus=1, memory=2**22, gpus=3), 5)
    assert short == [
        Shortage("replicas", 5, 4),
        Shortage("resources.cpus", 5, 0.3),
        Shortage("resources.memory", 5 * 2**22, 2**21),
        Shortage("resources.gpus", 15, 2, any_model=2),
    ]


def test_the_same_cpu_tolerance_for_never_fits_and_fits_now() -> None:
    """3 x 0.1 CPUs is 0.30000000000000004 in floating point: it fits a 0.3-CPU pool, both at
    submission and in the planner (the submission once refused what the planner would place)."""
    spec = JobSpec(entrypoint="true", replicas=3, resources=Resources(cpus=0.1))
    assert why_never_fits(pool(), spec.resources, spec.replicas) is None
    assert Free.whole(pool()).fits(spec)
    assert Free.whole(pool()).take_spec(spec) == [[], [], []]


def test_never_fits_names_the_first_field_in_the_pools_words() -> None:
    big = Resources(memory=2**22)
    assert why_never_fits(pool(), big, 1) == (
        "resources.memory",
        "needs 4194304 MiB, the pool has 2097152 MiB",
    )
    a100 = Resources(gpus=2, gpu_model="a100")
    assert why_never_fits(pool(), a100, 1) == (
        "resources.gpus",
        "needs 2 GPUs of model 'a100', the pool has 1",
    )


def test_why_not_says_each_shortage_or_the_gpu_model() -> None:
    busy = pool(cpus=1)
    reason, message = why_waiting(busy, JobSpec(entrypoint="true", resources=Resources(cpus=2)))
    assert (reason, message) == (PendingReason.WAITING_FOR_CAPACITY, "needs 2 CPUs (1 free)")
    h100s = JobSpec(entrypoint="true", resources=Resources(gpus=2, gpu_model="h100"))
    assert why_waiting(busy, h100s) == (
        PendingReason.NO_MATCHING_GPU_MODEL,
        "needs 2 GPUs of model 'h100'; 1 of the 2 free GPUs match",
    )
    gang = JobSpec(entrypoint="true", replicas=2, resources=Resources(cpus=0.75))
    assert why_waiting(busy, gang) == (
        PendingReason.GANG_DOES_NOT_FIT_YET,
        "all 2 workers start together; needs 1.5 CPUs (1 free)",
    )


def growing(**sizes: float) -> Capacity:
    return pool(**sizes).model_copy(update={"can_grow": True})  # type: ignore[arg-type]


def test_a_pool_that_can_grow_refuses_only_asks_beyond_its_task_slots() -> None:
    huge = Resources(cpus=64, memory=2**30, gpus=8, gpu_model="tpu-v5")
    assert why_never_fits(growing(), huge, 1) is None
    assert why_never_fits(pool(), huge, 1) == ("resources.cpus", "needs 64 CPUs, the pool has 0.3")
    assert why_never_fits(growing(), Resources(), 5) == (
        "replicas",
        "5 exceeds the pool's 4 task slots",
    )


def test_a_job_larger_than_a_pool_that_can_grow_waits_in_rays_words() -> None:
    spec = JobSpec(entrypoint="true", resources=Resources(cpus=2, gpus=4))
    assert why_waiting(growing(), spec) == (
        PendingReason.WAITING_FOR_CAPACITY,
        f"needs 2 CPUs (0.3 free), 4 GPUs (2 free), {GROWING}",
    )
    assert "waiting for resources (CPUs, GPUs, memory, custom resources)" in GROWING
    first, second = (
        Candidate(id=i, display_id=f"j{i}", owner="a", queue="q", priority=0, spec=spec)
        for i, spec in enumerate([JobSpec(entrypoint="true", resources=Resources(cpus=0.3))] * 2)
    )
    busy = plan([first, second], growing(), [], {"q": QueueSpec(name="q")}, now=0, reserve_after=9)
    assert busy.pending[1][1] == "needs 0.3 CPUs (0 free)"  # fits once the first one ends
    assert why_waiting(pool(), spec)[1] == "needs 2 CPUs (0.3 free), 4 GPUs (2 free)"


def test_a_job_larger_than_the_whole_pool_holds_nothing_for_itself() -> None:
    """Past the reservation delay a blocked job holds what frees up, but one that could not fit
    the whole pool would hold it all and fit no better: the jobs behind it run."""
    queue = {"q": QueueSpec(name="q")}

    def job(i: int, cpus: float) -> Candidate:
        spec = JobSpec(entrypoint="true", resources=Resources(cpus=cpus))
        return Candidate(id=i, display_id=f"j{i}", owner="a", queue="q", priority=0, spec=spec)

    for capacity in (growing(cpus=1), pool(cpus=1)):
        result = plan([job(1, 2), job(2, 0.5)], capacity, [], queue, now=100, reserve_after=9)
        assert [p.job_id for p in result.placements] == [2]
        assert result.pending[1][0] is PendingReason.WAITING_FOR_CAPACITY
    held = plan([job(1, 0.75), job(2, 0.5)], pool(cpus=1), [], queue, now=100, reserve_after=9)
    assert [p.job_id for p in held.placements] == [1]  # fits: placed; the next one waits
