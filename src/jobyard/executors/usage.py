"""Measuring what tasks use on this machine: their process trees' CPU and memory, and GPUs.

Pure of HTTP and the database; the service's sampler (service/usage.py) calls it once a pass.

- `ProcessTable.scan()` reads `/proc/<pid>/stat` of every process once: one short read gives a
  process's parent, session, CPU ticks (its own and those of the children it reaped) and RSS.
  A pass over 200 tasks costs one scan, where psutil's `children(recursive=True)` would walk
  all of /proc once per task (and read more files per process).
- A task's processes are its executor's pids (`Executor.task_pids`), their descendants, and
  every member of their sessions (a local task's supervisor leads one: a child that was
  reparented to init but kept the session still counts).
- `CpuMeter` turns CPU seconds into cores: the difference since the task's last sample over
  the time between them (since its process started, for the first sample it gets).
- `ReportedUsage` is what an executor whose tasks run elsewhere says they use
  (`Executor.task_usage`: Slurm's sstat), where there are no pids here to measure.
- `GpuSource` gives each GPU's utilisation and memory; `NvmlGpuSource` asks NVML (pynvml, from
  nvidia-ml-py, imported on first use) and gives None, not zeros, where NVML is not there.

RSS is summed over the processes, so pages they share count once per process (as `ps` and
`top` would show them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

_PROC = "/proc"


@dataclass(frozen=True)
class ProcStat:
    """What one read of /proc/<pid>/stat says of a process."""

    ppid: int
    session: int
    cpu_ticks: int  # utime + stime + cutime + cstime: its own and its reaped children's
    rss_pages: int
    start_ticks: int  # clock ticks after boot


@dataclass(frozen=True)
class TreeUsage:
    """A task's processes together, now."""

    cpu_seconds: float  # since they started, reaped children included
    rss_bytes: int
    started_at: float  # epoch seconds: when the oldest of them started
    processes: int


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


@functools.cache
def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _boot_time() -> float:
    with open(f"{_PROC}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return time.time() - time.monotonic()  # pragma: no cover - every Linux has btime


def parse_stat(data: bytes) -> ProcStat | None:
    """A /proc/<pid>/stat line; None if it is not one. The command name (in parentheses) may
    hold anything, spaces and ')' included: the fields after its last ')' are what count."""
    try:
        fields = data.rsplit(b")", 1)[1].split()
        return ProcStat(
            ppid=int(fields[1]),
            session=int(fields[3]),
            cpu_ticks=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
            rss_pages=int(fields[21]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


class ProcessTable:
    """Every process of this machine at one moment, by pid."""

    def __init__(self, stats: dict[int, ProcStat]) -> None:
        self.stats = stats
        self._children: dict[int, list[int]] = {}
        self._sessions: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            self._children.setdefault(stat.ppid, []).append(pid)
            self._sessions.setdefault(stat.session, []).append(pid)

    @classmethod
    def scan(cls) -> ProcessTable:
        stats: dict[int, ProcStat] = {}
        for name in os.listdir(_PROC):
            if not name.isdigit():
                continue
            try:
                stat = parse_stat(_read(f"{_PROC}/{name}/stat"))
            except OSError:  # it ended since the listing
                continue
            if stat is not None:
                stats[int(name)] = stat
        return cls(stats)

    def members(self, roots: Iterable[int]) -> set[int]:
        """The roots that exist, their descendants, and the members of the sessions they lead."""
        found: set[int] = set()
        present = [pid for pid in roots if pid in self.stats]
        todo = list(present)
        for pid in present:
            if self.stats[pid].session == pid:
                todo.extend(self._sessions.get(pid, ()))
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(self._children.get(pid, ()))
        return found

    def usage(self, roots: Sequence[int]) -> TreeUsage | None:
        """The roots' processes together; None when none of them exists."""
        pids = self.members(roots)
        if not pids:
            return None
        stats = [self.stats[pid] for pid in pids]
        ticks = _clock_ticks()
        return TreeUsage(
            cpu_seconds=sum(s.cpu_ticks for s in stats) / ticks,
            rss_bytes=sum(s.rss_pages for s in stats) * _page_size(),
            started_at=_boot_time() + min(s.start_ticks for s in stats) / ticks,
            processes=len(stats),
        )


class CpuMeter:
    """CPU seconds to cores, per task: the growth since its last reading over the time since.

    A process that ended unreaped by the others takes its CPU time with it, so the total may
    shrink between readings: that interval counts as 0 cores, and the next one starts anew."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[float, float]] = {}  # key -> (cpu seconds, at)

    def cores(self, key: Any, usage: TreeUsage, now: float) -> float | None:
        before_cpu, before_at = self._last.get(key, (0.0, usage.started_at))
        self._last[key] = (usage.cpu_seconds, now)
        wall = now - before_at
        if wall <= 0:
            return None
        return max(usage.cpu_seconds - before_cpu, 0.0) / wall

    def keep_only(self, keys: Iterable[Any]) -> None:
        """Forget the tasks not in `keys` (they ended)."""
        wanted = set(keys)
        for key in [k for k in self._last if k not in wanted]:
            del self._last[key]


@dataclass(frozen=True)
class ReportedUsage:
    """A task's figures as its executor measured them where it runs (Slurm's sstat), for tasks
    this machine cannot see: its CPU time so far and its resident memory now; None where the
    executor has no figure."""

    cpu_seconds: float | None
    rss_bytes: int | None
    # Where the executor's source gives a rate rather than a total (Ray's dashboard: each
    # process's cpuPercent), the cores now; and the GPUs the task's processes are on where it
    # reports GPUs (None: no GPU figures).
    cpu_cores: float | None = None
    gpus: list[GpuReading] | None = None


@dataclass(frozen=True)
class GpuReading:
    index: int
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


class GpuSource(Protocol):
    """Where GPU figures come from (NVML here; a scripted one in tests)."""

    def read(self) -> dict[int, GpuReading] | None:
        """Each GPU's figures now, by index; None where this machine gives no GPU figures.
        A GPU missing from the answer could not be read this time."""

    def close(self) -> None: ...


class NoGpus:
    """A source for servers whose tasks run elsewhere: no GPU figures at all."""

    def read(self) -> dict[int, GpuReading] | None:
        return None

    def close(self) -> None:
        pass


class NvmlGpuSource:
    """Every GPU NVML sees, by NVML index (the indices the local executor hands out). NVML is
    started on the first read; if it cannot be (no nvidia-ml-py, no driver, no GPU), it says
    why once in the log and every read is None."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._tried = False

    def read(self) -> dict[int, GpuReading] | None:
        if not self._started():
            return None
        nvml, found = self._nvml, {}
        for index, handle in enumerate(self._handles):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as exc:  # e.g. a GPU fallen off the bus: absent, not zero
                log.debug("NVML cannot read GPU %d: %s", index, exc)
                continue
            found[index] = GpuReading(index, float(rates.gpu), int(memory.used), int(memory.total))
        return found

    def _started(self) -> bool:
        if self._tried:
            return self._nvml is not None
        self._tried = True
        try:
            import pynvml  # optional dependency: jobyard[gpu] (nvidia-ml-py)
        except ImportError:
            log.info("no GPU figures: nvidia-ml-py is not installed (pip install jobyard[gpu])")
            return False
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            log.info("no GPU figures: NVML is not available (%s)", exc)
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            return False
        self._nvml = pynvml
        return True

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml, self._handles = None, []
