"""Pure placement: (queued jobs, free capacity) -> placements. Gang: all replicas or none.

Order is priority (high first), then submission order. A job that does not fit is skipped and
smaller jobs behind it may start (backfill); fair share and quotas come with the queue work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from jobyard.model import Job, Placement
from jobyard.model.capacity import Capacity, GpuInfo, gpu_matches
from jobyard.model.job import TaskPlacement


@dataclass
class Free:
    """What is left of a pool once the live jobs are subtracted."""

    node: str
    cpus: float
    memory_mib: int
    tasks: int
    gpus: list[GpuInfo] = field(default_factory=list)

    @classmethod
    def of(cls, capacity: Capacity, live: Iterable[Job]) -> Free:
        free = cls(
            capacity.node,
            capacity.cpus,
            capacity.memory_mib,
            capacity.max_tasks,
            list(capacity.gpus),
        )
        for job in live:
            held = [t for t in job.tasks if not t.state.is_finished()]
            free.cpus -= job.spec.resources.cpus * len(held)
            free.memory_mib -= job.spec.resources.memory * len(held)
            free.tasks -= len(held)
            used = {g for t in held for g in t.gpus}
            free.gpus = [g for g in free.gpus if g.index not in used]
        return free

    def take(self, job: Job) -> list[list[int]] | None:
        """Reserve room for every replica of `job`; return the GPUs of each, or None."""
        res, n = job.spec.resources, job.spec.replicas
        matching = [g for g in self.gpus if gpu_matches(g, res)]
        if n > self.tasks or res.cpus * n > self.cpus + 1e-9 or res.memory * n > self.memory_mib:
            return None
        if res.gpus * n > len(matching):
            return None
        assigned = [
            [g.index for g in matching[i * res.gpus : (i + 1) * res.gpus]] for i in range(n)
        ]
        taken = {g for gpus in assigned for g in gpus}
        self.gpus = [g for g in self.gpus if g.index not in taken]
        self.cpus -= res.cpus * n
        self.memory_mib -= res.memory * n
        self.tasks -= n
        return assigned


def place(queued: Sequence[Job], free: Free) -> list[Placement]:
    placements = []
    for job in queued:
        assigned = free.take(job)
        if assigned is None:
            continue
        tasks = [
            TaskPlacement(index=t.index, name=t.name, node=free.node, gpus=assigned[t.index])
            for t in job.tasks
        ]
        placements.append(
            Placement(
                job_id=job.id,
                display_id=job.display_id,
                owner=job.owner,
                spec=job.spec,
                tasks=tasks,
            )
        )
    return placements
