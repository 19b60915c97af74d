"""Pure readings of what Ray says: a job's state as a task report, its driver's output out of
Ray's log, the pool's capacity out of the cluster's nodes, and a job's usage out of the
dashboard's node figures."""

from __future__ import annotations

import re
from typing import Any

from jobyard.executors.base import Capacity, GpuInfo, TaskReport
from jobyard.executors.ray.client import RayJob
from jobyard.executors.usage import GpuReading, ReportedUsage
from jobyard.model import TaskState, TerminationReason

_TERM, _KILL = 128 + 15, 128 + 9
_ACCELERATOR = "accelerator_type:"
# Ray's error types of a job whose driver never ran.
_NOT_STARTED = {
    "RUNTIME_ENV_SETUP_FAILURE",
    "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
    "JOB_SUPERVISOR_ACTOR_START_FAILURE",
    "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE",
    "JOB_ENTRYPOINT_COMMAND_START_ERROR",
}
# A line of Ray's own log format (`2026-01-02 03:04:05,678\tINFO job_manager.py:581 -- ...`).
_RAY_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\t[A-Z]+ \S+:\d+ -- ")
_LINES = re.compile(r"(?<=\n)")


def report_of(job: RayJob, *, killed: bool = False) -> TaskReport:
    """Ray's PENDING/RUNNING/SUCCEEDED/FAILED/STOPPED as a task report, Ray's message with it.

    Ray keeps no exit code for a STOPPED job: 128+9 if Ray's supervisor had to kill it
    (`killed`, from its log), else 128+15 (it ended on the TERM). A FAILED job without a
    driver exit code left no exit code at all: LOST, and the job ends for Ray's reason (its
    runtime environment could not be set up or its driver not started: START_FAILED; its
    supervisor died: LOST) with Ray's message."""
    said = f"Ray: {job.message}" if job.message else ""
    if job.status == "PENDING":
        why = job.message or "waiting in the cluster"
        pending = f"Ray job {job.submission_id} is pending: {why}"
        return TaskReport(TaskState.PENDING, message=pending)
    if job.status == "RUNNING":
        return TaskReport(TaskState.RUNNING, message=said)
    if job.status == "SUCCEEDED":
        return TaskReport(TaskState.EXITED, job.exit_code or 0, message=said)
    if job.status == "STOPPED":
        return TaskReport(TaskState.EXITED, _KILL if killed else _TERM, message=said)
    if job.exit_code is not None:
        return TaskReport(TaskState.EXITED, job.exit_code, message=said)
    kind = f" ({job.error_type})" if job.error_type else ""
    why = (
        TerminationReason.START_FAILED if job.error_type in _NOT_STARTED else TerminationReason.LOST
    )
    message = f"the Ray job failed{kind}: {job.message}"
    return TaskReport(TaskState.LOST, message=message, reason=why)


def was_killed(supervisor_log: str) -> bool:
    """Whether Ray's supervisor KILLed a stopped job (its TERM was not enough in time)."""
    return "force-killed with SIGKILL" in supervisor_log


def header(submission_id: str, entrypoint: str) -> str:
    """The line Ray's supervisor writes into the job's log before the driver's output."""
    return f"Running entrypoint for job {submission_id}: {entrypoint}\n"


def driver_output(text: str, job: RayJob, *, final: bool) -> bytes:
    """What the driver printed, out of Ray's log of the job, without Ray's own lines: the
    runtime env set-up lines at the top (Ray's log format) and the entrypoint line, which Ray's
    supervisor flushes only after it has started the driver, so the driver's first output may
    come before it. Nothing until that line is there; while the job runs, only whole lines (a
    character cut in two by a read would come back changed). A job that ended before its
    driver started keeps Ray's lines: they say why."""
    line = header(job.submission_id, job.entrypoint)
    at = text.find(line)
    if at < 0:
        return text.encode() if final else b""
    early = _LINES.split(text[:at])
    while early and _RAY_LOG_LINE.match(early[0]):
        early.pop(0)
    body = "".join(early) + text[at + len(line) :]
    if not final:
        end = max(body.rfind("\n"), body.rfind("\r"))
        body = body[: end + 1]
    return body.encode()


def capacity_of(
    nodes: list[dict[str, Any]], *, node: str, max_tasks: int, can_grow: bool = False
) -> Capacity:
    """The ALIVE nodes' total CPUs, memory (Ray's `memory` resource) and GPUs, whose model is
    the node's `accelerator_type:<model>` resource (else "unknown"), numbered across nodes.
    `can_grow`: whether the cluster may get more (an autoscaler; `ray.pool_can_grow`)."""
    alive = [n for n in nodes if n.get("state") == "ALIVE"]
    cpus, memory, gpus = 0.0, 0, list[GpuInfo]()
    for item in alive:
        resources: dict[str, float] = item.get("resources_total") or {}
        cpus += float(resources.get("CPU", 0))
        memory += int(resources.get("memory", 0)) // 2**20
        model = next(
            (k.removeprefix(_ACCELERATOR) for k in resources if k.startswith(_ACCELERATOR)),
            "unknown",
        )
        for _ in range(int(resources.get("GPU", 0))):
            gpus.append(GpuInfo(index=len(gpus), model=model))
    return Capacity(
        node=node, cpus=cpus, memory_mib=memory, gpus=gpus, max_tasks=max_tasks, can_grow=can_grow
    )


def job_processes(
    job: RayJob,
    workers: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    actors: list[dict[str, Any]],
) -> dict[str, set[int]]:
    """The processes Ray knows of a job, by node, out of its State API: its driver, once
    `ray.init()` made it one (a DRIVER worker whose worker id begins with the job's id), the
    workers running its tasks (RUNNING tasks' worker_pid) and its live actors."""
    found: dict[str, set[int]] = {}
    ray_job = job.ray_job_id
    if not ray_job:
        return found

    def add(node: Any, pid: Any) -> None:
        if node and isinstance(pid, int) and pid > 0:
            found.setdefault(str(node), set()).add(pid)

    for worker in workers:
        if worker.get("worker_type") == "DRIVER" and str(worker.get("worker_id", "")).startswith(
            ray_job
        ):
            add(worker.get("node_id"), worker.get("pid"))
    for task in tasks:
        if task.get("job_id") == ray_job and task.get("state") == "RUNNING":
            add(task.get("node_id"), task.get("worker_pid"))
    for actor in actors:
        if actor.get("job_id") == ray_job and actor.get("state") == "ALIVE":
            add(actor.get("node_id"), actor.get("pid"))
    return found


def usage_of(
    processes: dict[str, set[int]], nodes: dict[str, dict[str, Any]]
) -> ReportedUsage | None:
    """A job's figures out of the dashboard's node figures (`/nodes/<id>`: each worker
    process's cpuPercent, of one core, and memoryInfo.rss; each GPU's utilizationGpu,
    memoryUsed/memoryTotal in MiB and the processes on it). None where Ray has figures of none
    of its processes; GPUs None where its nodes report no GPU at all, else those its
    processes are on (each by its index on its node)."""
    cpu, rss, seen, gpus = 0.0, 0, False, list[GpuReading]()
    any_gpus = False
    for node_id in sorted(nodes):
        stats, pids = nodes[node_id], processes.get(node_id, set())
        for worker in stats.get("workers") or ():
            if worker.get("pid") in pids:
                seen = True
                cpu += float(worker.get("cpuPercent") or 0.0) / 100
                rss += int((worker.get("memoryInfo") or {}).get("rss") or 0)
        devices = stats.get("gpus") or []
        any_gpus = any_gpus or bool(devices)
        for gpu in devices:
            users = {p.get("pid") for p in gpu.get("processesPids") or () if isinstance(p, dict)}
            if users & pids:
                gpus.append(
                    GpuReading(
                        index=int(gpu.get("index") or 0),
                        utilization_percent=float(gpu.get("utilizationGpu") or 0.0),
                        memory_used_bytes=int(gpu.get("memoryUsed") or 0) * 2**20,
                        memory_total_bytes=int(gpu.get("memoryTotal") or 0) * 2**20,
                    )
                )
    if not seen:
        return None
    return ReportedUsage(
        cpu_seconds=None, rss_bytes=rss, cpu_cores=cpu, gpus=gpus if any_gpus else None
    )
