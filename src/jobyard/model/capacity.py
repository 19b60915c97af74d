"""What a pool offers, what is free of it, and how far a request falls short. Pure data.

`shortfall(free, resources, replicas)` is the one fit calculation: the submission asks it of
the whole pool ("never fits", `why_never_fits`), the planner of what is free now ("fits now",
`Free.fits` and `Free.take_spec`) and, for a job that waits, to say why (`policy._why_not`).
CPUs compare with a tolerance of 1e-9 (3 x 0.1 CPUs fit in 0.3), memory, task slots and GPUs
exactly.

A pool that can grow (`Capacity.can_grow`: a Ray cluster, whose autoscaler may add nodes) has
no "never" for CPUs, memory or GPUs: what it lacks now it may have later, so such a job waits.
Its task slots are jobyard's own setting (`max_tasks`) and do not grow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from jobyard.model.job import Job, JobSpec, Resources

_CPU_TOLERANCE = 1e-9


class GpuInfo(BaseModel):
    index: int
    model: str = "unknown"
    memory_mib: int = 0


class Capacity(BaseModel):
    """What one pool offers. Zero-request jobs still count against `max_tasks`.
    `can_grow`: whether CPUs, memory and GPUs may be added to it later (an autoscaler)."""

    node: str
    cpus: float
    memory_mib: int
    gpus: list[GpuInfo] = Field(default_factory=list)
    max_tasks: int
    can_grow: bool = False


def gpu_matches(gpu: GpuInfo, resources: Resources) -> bool:
    wanted = resources.gpu_model
    return not wanted or wanted.lower() in gpu.model.lower()


@dataclass
class Free:
    """What is left of a pool once the live jobs are subtracted."""

    node: str
    cpus: float
    memory_mib: int
    tasks: int
    gpus: list[GpuInfo] = field(default_factory=list)

    @classmethod
    def whole(cls, capacity: Capacity) -> Free:
        """All of the pool, as if nothing ran."""
        return cls(
            capacity.node,
            capacity.cpus,
            capacity.memory_mib,
            capacity.max_tasks,
            list(capacity.gpus),
        )

    @classmethod
    def of(cls, capacity: Capacity, live: Iterable[Job]) -> Free:
        free = cls.whole(capacity)
        for job in live:
            held = [t for t in job.tasks if not t.state.is_finished()]
            free.cpus -= job.spec.resources.cpus * len(held)
            free.memory_mib -= job.spec.resources.memory * len(held)
            free.tasks -= len(held)
            used = {g for t in held for g in t.gpus}
            free.gpus = [g for g in free.gpus if g.index not in used]
        return free

    def matching(self, resources: Resources) -> list[GpuInfo]:
        """The free GPUs of the model `resources` asks for (any model if it names none)."""
        return [g for g in self.gpus if gpu_matches(g, resources)] if resources.gpus else []

    def fits(self, spec: JobSpec) -> bool:
        return not shortfall(self, spec.resources, spec.replicas)

    def take(self, job: Job) -> list[list[int]] | None:
        """Reserve room for every replica of `job`; return the GPUs of each, or None."""
        return self.take_spec(job.spec)

    def take_spec(self, spec: JobSpec) -> list[list[int]] | None:
        res, n = spec.resources, spec.replicas
        if shortfall(self, res, n):
            return None
        matching = self.matching(res)
        assigned = [
            [g.index for g in matching[i * res.gpus : (i + 1) * res.gpus]] for i in range(n)
        ]
        taken = {g for gpus in assigned for g in gpus}
        self.gpus = [g for g in self.gpus if g.index not in taken]
        self.cpus -= res.cpus * n
        self.memory_mib -= res.memory * n
        self.tasks -= n
        return assigned

    def hold(self, spec: JobSpec) -> Free:
        """Set aside as much of what `spec` needs as is free now; return what was held."""
        res, n = spec.resources, spec.replicas
        matching = [g for g in self.gpus if gpu_matches(g, res)][: res.gpus * n]
        taken = {g.index for g in matching}
        held = Free(
            self.node,
            min(max(self.cpus, 0.0), res.cpus * n),
            min(max(self.memory_mib, 0), res.memory * n),
            min(max(self.tasks, 0), n),
            matching,
        )
        self.gpus = [g for g in self.gpus if g.index not in taken]
        self.cpus -= held.cpus
        self.memory_mib -= held.memory_mib
        self.tasks -= held.tasks
        return held

    def plus(self, other: Free) -> Free:
        return Free(
            self.node,
            self.cpus + other.cpus,
            self.memory_mib + other.memory_mib,
            self.tasks + other.tasks,
            [*self.gpus, *other.gpus],
        )


@dataclass(frozen=True)
class Shortage:
    """One thing a request needs more of than there is: `needed` against `free`, named by the
    spec field that asks for it. For GPUs `free` counts those of the model asked for, and
    `any_model` every free GPU."""

    field: str  # "replicas", "resources.cpus", "resources.memory" or "resources.gpus"
    needed: float
    free: float
    any_model: int = 0


def shortfall(free: Free, resources: Resources, replicas: int) -> list[Shortage]:
    """Everything `replicas` tasks of `resources` need more of than `free` has; [] if they fit."""
    n, short = replicas, []
    if n > free.tasks:
        short.append(Shortage("replicas", n, free.tasks))
    if resources.cpus * n > free.cpus + _CPU_TOLERANCE:
        short.append(Shortage("resources.cpus", resources.cpus * n, free.cpus))
    if resources.memory * n > free.memory_mib:
        short.append(Shortage("resources.memory", resources.memory * n, free.memory_mib))
    gpus = resources.gpus * n
    if gpus:
        matching = len(free.matching(resources))
        if gpus > matching:
            short.append(Shortage("resources.gpus", gpus, matching, len(free.gpus)))
    return short


# What a pool that can grow may get more of (its task slots are jobyard's setting).
_GROWS = frozenset({"resources.cpus", "resources.memory", "resources.gpus"})


def beyond_pool(capacity: Capacity, resources: Resources, replicas: int) -> list[Shortage]:
    """What `replicas` tasks of `resources` need more of than the whole pool has now."""
    return shortfall(Free.whole(capacity), resources, replicas)


def waits_to_grow(capacity: Capacity, resources: Resources, replicas: int) -> bool:
    """Whether a job needs more CPUs, memory or GPUs than a pool that can grow has now."""
    return capacity.can_grow and any(
        s.field in _GROWS for s in beyond_pool(capacity, resources, replicas)
    )


def why_never_fits(
    capacity: Capacity, resources: Resources, replicas: int
) -> tuple[str, str] | None:
    """(field, problem) if a job can never run in this pool, else None. In a pool that can
    grow only the task slots are a limit for ever."""
    short = beyond_pool(capacity, resources, replicas)
    if capacity.can_grow:
        short = [s for s in short if s.field not in _GROWS]
    if not short:
        return None
    first = short[0]
    return first.field, _never(first, resources, capacity)


def amount(value: float) -> str:
    """A count as a person writes it: 3, 0.5, 1048576 (not 1.04858e+06)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _never(short: Shortage, resources: Resources, capacity: Capacity) -> str:
    needed = amount(short.needed)
    if short.field == "replicas":
        return f"{needed} exceeds the pool's {capacity.max_tasks} task slots"
    if short.field == "resources.cpus":
        return f"needs {needed} CPUs, the pool has {amount(capacity.cpus)}"
    if short.field == "resources.memory":
        return f"needs {needed} MiB, the pool has {capacity.memory_mib} MiB"
    model = f" of model {resources.gpu_model!r}" if resources.gpu_model else ""
    return f"needs {needed} GPUs{model}, the pool has {amount(short.free)}"
