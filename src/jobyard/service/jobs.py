"""submit · get · list · stop · delete · events: ownership and the state machine live here."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from jobyard.config import Settings
from jobyard.errors import Conflict, InvalidInput, NotFound
from jobyard.executors.base import Executor
from jobyard.model import Event, Job, JobSpec, JobState, TerminationReason
from jobyard.model.capacity import why_never_fits
from jobyard.model.job import JobName, Labels, Priority, QueueName, SubmissionId
from jobyard.service.auth import User
from jobyard.store import jobs as q
from jobyard.store.db import Database

MAX_PAGE = 500
_T = TypeVar("_T")


class JobRequest(BaseModel):
    """A face's submission, translated: the spec plus where and how to queue it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: JobSpec
    name: JobName | None = None
    queue: QueueName | None = None
    priority: Priority = 0
    labels: Labels = Field(default_factory=dict)
    submission_id: SubmissionId | None = None

    def fingerprint(self) -> str:
        """Same body, same fingerprint: how a repeated submission_id is told from a clash."""
        body = self.model_dump(mode="json", exclude={"submission_id"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool


@dataclass(frozen=True)
class JobQuery:
    states: Sequence[JobState] = ()
    queue: str | None = None
    owner: str | None = None
    name_contains: str | None = None
    labels: Sequence[tuple[str, str | None]] = ()
    descending: bool = True
    limit: int = 50
    cursor: int | None = None


def _scope(user: User) -> str | None:
    """Whose jobs a user may see: an admin sees everyone's (None); others only their own."""
    return None if user.is_admin else user.name


def _found(ref: str, value: _T | None) -> _T:
    """Another user's job is reported exactly like a missing one: 404, never 403."""
    if value is None:
        raise NotFound(f"job {ref!r} not found", field="job")
    return value


def _default_name(spec: JobSpec) -> str:
    first = spec.entrypoint.split()[0] if isinstance(spec.entrypoint, str) else spec.entrypoint[0]
    return os.path.basename(first)[:64] or "job"


class JobService:
    def __init__(
        self,
        db: Database,
        executor: Executor,
        settings: Settings,
        wake: Callable[[int | None], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._executor = executor
        self._settings = settings
        self._wake = wake
        self._clock = clock

    # ---- submit -------------------------------------------------------------------------------

    async def submit(self, user: User, request: JobRequest) -> Submitted:
        self._check_runnable(request.spec)
        new = q.NewJob(
            owner=user.name,
            submission_id=request.submission_id or f"jobyard-{uuid.uuid4().hex}",
            request_hash=request.fingerprint(),
            name=request.name or _default_name(request.spec),
            queue=request.queue or self._settings.default_queue,
            pool=self._settings.default_pool,
            priority=request.priority,
            labels=request.labels,
            spec=request.spec,
        )
        outcome = await self._write_once(new)
        if isinstance(outcome, Job):
            self._wake(None)
            return Submitted(outcome, created=True)
        return Submitted(await self._load(outcome), created=False)

    async def _write_once(self, new: q.NewJob) -> Job | int:
        for attempt in range(3):
            try:
                return await self._db.write(lambda c: self._insert_once(c, new))
            except IntegrityError:  # a display_id clash, or a twin on another server: again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert_once(self, conn: Connection, new: q.NewJob) -> Job | int:
        """The new job, or the id of the job this submission_id already made."""
        job = q.insert_new_job_if_absent(conn, new, self._clock())
        if job is not None:
            return job
        found = q.find_by_submission(conn, new.owner, new.submission_id)
        if found is None:  # the twin was deleted in between: the key is free again
            return q.insert_new_job(conn, new, self._clock())
        job_id, fingerprint = found
        if fingerprint != new.request_hash:
            raise Conflict(
                f"submission_id {new.submission_id!r} was already used for a different job",
                field="submission_id",
            )
        return job_id

    def _check_runnable(self, spec: JobSpec) -> None:
        self._executor.check_spec_supported(spec)
        problem = why_never_fits(self._executor.capacity(), spec.resources, spec.replicas)
        if problem is not None:
            raise InvalidInput(f"{problem[0]}: {problem[1]}", field=problem[0])

    # ---- read ---------------------------------------------------------------------------------

    async def get(self, user: User, ref: str) -> Job:
        scope = _scope(user)
        return _found(ref, await self._db.read(lambda c: q.find_job(c, ref, scope)))

    async def list_jobs(self, user: User, query: JobQuery) -> q.JobPage:
        if not 1 <= query.limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}", field="limit")
        owner = query.owner if user.is_admin else user.name
        if not user.is_admin and query.owner not in (None, user.name):
            return q.JobPage(items=[], total=0)
        flt = q.JobFilter(
            owner=owner,
            states=query.states,
            queue=query.queue,
            name_contains=query.name_contains,
            labels=query.labels,
        )
        return await self._db.read(
            lambda c: q.list_jobs(
                c, flt, limit=query.limit, cursor=query.cursor, descending=query.descending
            )
        )

    async def events(self, user: User, ref: str) -> list[Event]:
        job_id = await self._resolve(user, ref)
        return await self._db.read(lambda c: q.list_events(c, job_id))

    async def _resolve(self, user: User, ref: str) -> int:
        scope = _scope(user)
        return _found(ref, await self._db.read(lambda c: q.resolve_ref(c, ref, scope)))

    async def _load(self, job_id: int) -> Job:
        job = await self._db.read(lambda c: q.get_job(c, job_id))
        if job is None:
            raise NotFound(f"job {job_id} not found", field="job")
        return job

    # ---- stop and delete ----------------------------------------------------------------------

    async def stop(self, user: User, ref: str) -> Job:
        """Record the intent; the reconciler signals the processes. Idempotent while stopping."""
        job_id = await self._resolve(user, ref)
        await self._db.write(lambda c: self._stop(c, job_id))
        self._wake(job_id)
        return await self._load(job_id)

    def _stop(self, conn: Connection, job_id: int) -> None:
        state, now = q.get_state(conn, job_id), self._clock()
        if state is None:
            raise NotFound(f"job {job_id} not found", field="job")
        if state.is_terminal():
            raise Conflict(f"job {job_id} already finished ({state.value})", field="state")
        if state is JobState.STOPPING:
            return
        q.request_stop(conn, job_id, TerminationReason.STOPPED_BY_USER, now)
        if state in (JobState.QUEUED, JobState.SCHEDULED):
            q.transition(
                conn,
                job_id,
                q.Transition(
                    JobState.STOPPED,
                    "stopped by user before it started",
                    termination=TerminationReason.STOPPED_BY_USER,
                ),
                now,
            )
        else:
            q.transition(
                conn, job_id, q.Transition(JobState.STOPPING, "stop requested by user"), now
            )

    async def delete(self, user: User, ref: str, *, force: bool = False) -> None:
        job = await self.get(user, ref)
        if not job.state.is_terminal() and not force:
            raise Conflict(
                f"job {ref!r} is {job.state.value}; stop it first or delete with force=true",
                field="state",
            )
        for task in job.tasks:
            if task.handle is not None:
                if not job.state.is_terminal():
                    await self._executor.stop(task.handle, grace=0)
                self._executor.release(task.handle, remove_files=True)
        await self._db.write(lambda c: q.delete_job(c, job.id))
        self._wake(job.id)
