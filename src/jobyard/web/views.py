"""What the dashboard shows of a job: plain JSON shaped for the pages (no tokens, no secrets)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from jobyard.model import Event, Job


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _resources(job: Job) -> dict[str, Any]:
    return job.spec.resources.model_dump(mode="json", exclude_defaults=True)


def job_row(job: Job) -> dict[str, Any]:
    """One line of the jobs table."""
    return {
        "id": job.id,
        "display_id": job.display_id,
        "name": job.name,
        "owner": job.owner,
        "queue": job.queue,
        "pool": job.pool,
        "state": job.state.value,
        "resources": _resources(job),
        "replicas": job.spec.replicas,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "exit_code": job.exit_code,
        "pending_reason": job.pending_reason.value if job.pending_reason else None,
        "pending_message": job.pending_message,
        "queue_position": job.queue_position,
    }


def job_detail(job: Job, events: list[Event]) -> dict[str, Any]:
    """The job page: the row plus spec, state log, tasks, attempts and events."""
    return {
        **job_row(job),
        "submission_id": job.submission_id,
        "priority": job.priority,
        "labels": job.labels,
        "reason": job.reason.value if job.reason else None,
        "message": job.message,
        "spec": job.spec.model_dump(mode="json", exclude_defaults=True),
        "state_log": [
            {"state": e.state.value, "timestamp": _time(e.timestamp)} for e in job.state_log
        ],
        "tasks": [
            {
                "index": t.index,
                "name": t.name,
                "state": t.state.value,
                "node": t.node,
                "gpus": t.gpus,
                "exit_code": t.exit_code,
                "started_at": _time(t.started_at),
                "finished_at": _time(t.finished_at),
            }
            for t in job.tasks
        ],
        "events": [e.model_dump(mode="json") for e in events],
    }


def port_access(job: Job, urls: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Each declared port with its gateway URL (the job's own port token, not an API token)
    and, for SSH ports, the command to run; no URL while nothing is leased."""
    out: list[dict[str, Any]] = []
    for spec in job.spec.ports:
        url = (urls.get(f"port_{spec.port}") or [""])[0]
        ssh = None
        if url.startswith("ssh://"):
            host, _, port = url.removeprefix("ssh://").rpartition(":")
            ssh = f"ssh -p {port} {job.display_id}@{host}"
        out.append({"port": spec.port, "protocol": spec.protocol.value, "url": url, "ssh": ssh})
    return out


def activity(jobs: Iterable[Job], now: datetime, minutes: int = 60) -> dict[str, Any]:
    """Jobs that ran, and jobs that waited, during each of the last `minutes` minutes (a job
    that did both within one minute counts in both), from the jobs' own timestamps (created,
    started, finished): no history table needed, and no short job slips between samples."""
    minute = timedelta(minutes=1)
    points = [now - (minutes - 1 - i) * minute for i in range(minutes)]
    running = [0] * minutes
    queued = [0] * minutes
    for job in jobs:
        end, start = job.finished_at, job.started_at
        for i, t in enumerate(points):
            if job.created_at > t or (end is not None and end <= t - minute):
                continue
            if start is not None and start <= t:
                running[i] += 1
            if start is None or start > t - minute:
                queued[i] += 1
    return {"times": [_time(t) for t in points], "running": running, "queued": queued}


_PLACES = {"spec", "body"}


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's problems as {field, message}, with the form's field names (spec.* dropped)."""
    out: list[dict[str, str]] = []
    for problem in exc.errors():
        parts = [str(p) for p in problem["loc"] if p not in _PLACES]
        field = ".".join(parts) or "form"
        message = str(problem.get("msg", "invalid value")).removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "unknown field"
        if all(e["field"] != field for e in out):
            out.append({"field": field, "message": message})
    return out
