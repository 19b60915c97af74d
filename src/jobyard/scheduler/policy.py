"""Pure placement: (queued jobs, free capacity) -> placements, and why the rest wait.

Order: the queue's priority, then the job's (high first); between the users of a queue at one
priority, the user with the smallest dominant share of what runs now goes next (fair share);
each user's jobs in submission order. Gang: all replicas or none. A job that does not fit is
skipped and smaller jobs behind it may start (backfill), except that the first job blocked for
longer than the reservation delay holds what it needs as it frees up, so it cannot starve
(unless it asks for more than the whole pool has: holding could not make it fit, and would
stop every other job). Queue and per-user limits (jobs, GPUs, CPUs) hold a job back without
blocking the others. In a pool that can grow (a Ray cluster), a job larger than the whole pool
waits for it to grow, saying so in Ray's words.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jobyard.config import QueueSpec
from jobyard.model import Job, JobSpec, PendingReason, Placement
from jobyard.model.capacity import (
    Capacity,
    Free,
    Shortage,
    amount,
    beyond_pool,
    shortfall,
    waits_to_grow,
)
from jobyard.model.job import TaskPlacement, task_name

__all__ = ["Candidate", "Free", "Plan", "Usage", "plan"]


# ---- the planner: queues, priorities, fair share, quotas, reservation, pending reasons ------


_Shape = tuple[float, int, int, str | None, int]  # what a job asks for, as the planner compares


@dataclass
class Candidate:
    """A queued job as the planner sees it."""

    id: int
    display_id: str
    owner: str
    queue: str
    priority: int
    spec: JobSpec
    not_before: float | None = None
    attempt: int = 0
    pending: tuple[PendingReason | None, str] = (None, "")
    waiting_since: float = 0.0
    shape: _Shape = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        res = self.spec.resources
        self.shape = (res.cpus, res.memory, res.gpus, res.gpu_model, self.spec.replicas)


@dataclass
class Usage:
    jobs: int = 0
    gpus: int = 0
    cpus: float = 0.0

    def add(self, spec: JobSpec) -> None:
        self.jobs += 1
        self.gpus += spec.resources.gpus * spec.replicas
        self.cpus += spec.resources.cpus * spec.replicas


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    pending: dict[int, tuple[PendingReason, str]] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)  # 1-based, per queue
    # The candidates whose pending reason differs from the one they carried in.
    changed: list[Candidate] = field(default_factory=list)
    next_backoff_end: float | None = None


def _quota_problem(spec: JobSpec, queue: QueueSpec, total: Usage, mine: Usage) -> str | None:
    gpus = spec.resources.gpus * spec.replicas
    cpus = spec.resources.cpus * spec.replicas
    checks = (
        (queue.max_running_jobs, total.jobs + 1, "running jobs", "queue"),
        (queue.max_gpus, total.gpus + gpus, "GPUs", "queue"),
        (queue.max_cpus, total.cpus + cpus, "CPUs", "queue"),
        (queue.max_running_jobs_per_user, mine.jobs + 1, "running jobs", "user"),
        (queue.max_gpus_per_user, mine.gpus + gpus, "GPUs", "user"),
        (queue.max_cpus_per_user, mine.cpus + cpus, "CPUs", "user"),
    )
    for limit, wanted, what, whose in checks:
        if limit is not None and wanted > limit + 1e-9:
            scope = f"queue {queue.name!r}" if whose == "queue" else "each user of this queue"
            return f"{scope} may use at most {limit:g} {what}; this job would make it {wanted:g}"
    return None


def _has_limits(queue: QueueSpec) -> bool:
    return any(
        value is not None
        for value in (
            queue.max_running_jobs,
            queue.max_gpus,
            queue.max_cpus,
            queue.max_running_jobs_per_user,
            queue.max_gpus_per_user,
            queue.max_cpus_per_user,
        )
    )


def _share(usage: Usage, mem: float, capacity: Capacity) -> float:
    """Dominant resource share: the largest fraction of any one resource the user holds."""
    shares = [usage.cpus / capacity.cpus if capacity.cpus else 0.0]
    if capacity.gpus:
        shares.append(usage.gpus / len(capacity.gpus))
    if capacity.memory_mib:
        shares.append(mem / capacity.memory_mib)
    return max(shares)


def _why_not(
    spec: JobSpec, free: Free, unreserved: Free | None, holder: str | None
) -> tuple[PendingReason, str]:
    res, n = spec.resources, spec.replicas
    if holder is not None and unreserved is not None and unreserved.fits(spec):
        return (
            PendingReason.PRIORITY,
            f"the resources it needs are held for {holder}, which is ahead",
        )
    short = shortfall(free, res, n)
    gpus = next((s for s in short if s.field == "resources.gpus"), None)
    if gpus is not None and res.gpu_model and gpus.needed <= gpus.any_model:
        return (
            PendingReason.NO_MATCHING_GPU_MODEL,
            f"needs {amount(gpus.needed)} GPUs of model {res.gpu_model!r}; "
            f"{amount(gpus.free)} of the {gpus.any_model} free GPUs match",
        )
    what = "needs " + ", ".join(_need(s) for s in short) if short else "does not fit now"
    if n > 1 and free.fits(spec.model_copy(update={"replicas": 1})):
        return PendingReason.GANG_DOES_NOT_FIT_YET, f"all {n} workers start together; {what}"
    return PendingReason.WAITING_FOR_CAPACITY, what


_NEEDS = {
    "replicas": "{needed} task slots ({free} free)",
    "resources.cpus": "{needed} CPUs ({free} free)",
    "resources.memory": "{needed} MiB ({free} MiB free)",
    "resources.gpus": "{needed} GPUs ({free} free)",
}


# Ray's words for a job that waits for resources (its job_manager's PENDING message).
GROWING = (
    "more than the whole pool has now; it may be waiting for resources (CPUs, GPUs, memory, "
    "custom resources) to become available (the pool can grow)"
)


def _need(short: Shortage) -> str:
    return _NEEDS[short.field].format(needed=amount(short.needed), free=amount(max(short.free, 0)))


def plan(
    candidates: Iterable[Candidate],
    capacity: Capacity,
    live: Iterable[Job],
    queues: dict[str, QueueSpec],
    *,
    now: float,
    reserve_after: float,
) -> Plan:
    """One scheduling pass over every queued job: what starts, and why the others wait."""
    return _Pass(capacity, list(live), queues, now, reserve_after).run(candidates)


_Key = tuple[str, str]  # (queue, owner)
_BY_ID = operator.attrgetter("id")


class _Pass:
    def __init__(
        self,
        capacity: Capacity,
        live: list[Job],
        queues: dict[str, QueueSpec],
        now: float,
        reserve_after: float,
    ) -> None:
        self.capacity, self.queues, self.now = capacity, queues, now
        self.reserve_after = reserve_after
        self.free = Free.of(capacity, live)
        self.total: dict[str, Usage] = {}
        self.mine: dict[_Key, Usage] = {}
        self.memory: dict[_Key, float] = {}
        self.shares: dict[_Key, float] = {}
        for job in live:
            self._count(job.queue, (job.queue, job.owner), job.spec)
        self.limited = {name: q for name, q in queues.items() if _has_limits(q)}
        self.reasons: dict[_Shape, tuple[PendingReason, str]] = {}
        self.beyond: dict[_Shape, bool] = {}  # shapes larger than the whole pool
        self.held: Free | None = None  # what the reserved job holds, once there is one
        self.holder: str | None = None
        self.result = Plan()

    def _count(self, queue: str, key: _Key, spec: JobSpec) -> None:
        self.total.setdefault(queue, Usage()).add(spec)
        self.mine.setdefault(key, Usage()).add(spec)
        self.memory[key] = self.memory.get(key, 0.0) + spec.resources.memory * spec.replicas
        self.shares.pop(key, None)

    def share_of(self, key: _Key) -> float:
        found = self.shares.get(key)
        if found is None:
            usage = self.mine.get(key, Usage())
            found = self.shares[key] = _share(usage, self.memory.get(key, 0.0), self.capacity)
        return found

    def run(self, candidates: Iterable[Candidate]) -> Plan:
        # Levels: (queue priority, job priority), highest first; in one, per-user FIFO lists.
        ranks = {name: queue.priority for name, queue in self.queues.items()}
        groups: dict[tuple[int, int, str, str], list[Candidate]] = {}
        for c in candidates:
            group_key = (ranks.get(c.queue, 0), c.priority, c.queue, c.owner)
            group = groups.get(group_key)
            if group is None:
                groups[group_key] = [c]
            else:
                group.append(c)
        levels: dict[tuple[int, int], dict[_Key, list[Candidate]]] = {}
        for (rank, priority, queue_name, owner), group in groups.items():
            levels.setdefault((rank, priority), {})[(queue_name, owner)] = group
        positions: dict[str, int] = {}
        result = self.result
        for level in sorted(levels, reverse=True):
            for c in self._fair_order(levels[level]):
                position = positions[c.queue] = positions.get(c.queue, 0) + 1
                result.positions[c.id] = position
                why = self._decide(c)
                if why is not None:
                    result.pending[c.id] = why
                    if c.pending != why:
                        result.changed.append(c)
        return result

    def _fair_order(self, users: dict[_Key, list[Candidate]]) -> Iterator[Candidate]:
        """Each user's jobs in order; between users, the smallest dominant share first, as
        it stands after the previous job was considered (and perhaps admitted)."""
        heap = []
        for key, jobs in users.items():
            jobs.sort(key=_BY_ID)
            heap.append((self.share_of(key), jobs[0].id, key, 0))
        heapq.heapify(heap)
        shares = self.shares
        while heap:
            _, _, key, index = heap[0]
            jobs = users[key]
            yield jobs[index]  # may be admitted, which changes this user's share
            index += 1
            if index < len(jobs):
                share = shares.get(key)
                if share is None:
                    share = self.share_of(key)
                heapq.heapreplace(heap, (share, jobs[index].id, key, index))
            else:
                heapq.heappop(heap)

    def _decide(self, c: Candidate) -> tuple[PendingReason, str] | None:
        """Admit `c` (None) or say why it waits."""
        spec, key = c.spec, (c.queue, c.owner)
        if c.not_before is not None and c.not_before > self.now:
            soonest = self.result.next_backoff_end
            if soonest is None or c.not_before < soonest:
                self.result.next_backoff_end = c.not_before
            when = datetime.fromtimestamp(c.not_before, UTC).strftime("%H:%M:%S UTC")
            return (
                PendingReason.BACKOFF,
                f"attempt {c.attempt + 1} starts no sooner than {when} (retry backoff)",
            )
        queue = self.limited.get(c.queue)
        if queue is not None:
            problem = _quota_problem(
                spec, queue, self.total.get(c.queue, Usage()), self.mine.get(key, Usage())
            )
            if problem is not None:
                return (PendingReason.QUOTA_EXCEEDED, problem)
        # A shape that did not fit still does not, until something is admitted or held (both
        # clear `reasons`): most of a long queue is decided by this one lookup.
        known = self.reasons.get(c.shape)
        assigned = self.free.take_spec(spec) if known is None else None
        if assigned is None:
            why = known or self._why_waiting(c)
            if self._may_hold(c):
                self.held = self.free.hold(spec)
                self.holder = f"job {c.display_id}"
                self.reasons.clear()
            return why
        self.reasons.clear()
        self._count(c.queue, key, spec)
        node = self.free.node
        tasks = [
            TaskPlacement(index=i, name=task_name(c.display_id, i), node=node, gpus=gpus)
            for i, gpus in enumerate(assigned)
        ]
        self.result.placements.append(
            Placement(job_id=c.id, display_id=c.display_id, owner=c.owner, spec=spec, tasks=tasks)
        )
        return None

    def _why_waiting(self, c: Candidate) -> tuple[PendingReason, str]:
        # Many queued jobs ask for the same thing: say why once per shape and state.
        unreserved = self.free.plus(self.held) if self.held is not None else None
        why = _why_not(c.spec, self.free, unreserved, self.holder)
        if waits_to_grow(self.capacity, c.spec.resources, c.spec.replicas):
            why = (why[0], f"{why[1]}, {GROWING}")
        self.reasons[c.shape] = why
        return why

    def _may_hold(self, c: Candidate) -> bool:
        """Whether `c` is the job that holds what frees up: the first one blocked past the
        reservation delay that could fit the whole pool."""
        return (
            self.held is None
            and self.now - c.waiting_since >= self.reserve_after
            and not self._beyond_pool(c)
        )

    def _beyond_pool(self, c: Candidate) -> bool:
        found = self.beyond.get(c.shape)
        if found is None:
            short = beyond_pool(self.capacity, c.spec.resources, c.spec.replicas)
            found = self.beyond[c.shape] = bool(short)
        return found
