"""submit · get · list · stop · delete · events: ownership and the state machine live here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from jobyard.config import MAX_PAGE_SIZE, EnvironmentSpec, PoolSpec, QueueSpec, Settings
from jobyard.errors import (
    Conflict,
    ExecutorRefused,
    InvalidInput,
    LimitExceeded,
    NotFound,
)
from jobyard.executors import containers
from jobyard.executors.base import Executor, Shell, ShellCommand, TerminalSize
from jobyard.model import (
    LIVE_STATES,
    Event,
    EventType,
    Job,
    JobSpec,
    JobState,
    Placement,
    Task,
    TerminationReason,
)
from jobyard.model.capacity import GpuInfo, why_never_fits
from jobyard.model.job import (
    JobName,
    Labels,
    Priority,
    QueueName,
    SubmissionId,
    TaskPlacement,
)
from jobyard.service.auth import User
from jobyard.store import (
    jobs as q,
    scheduling as store_scheduling,
    secrets as store_secrets,
    users as store_users,
)
from jobyard.store.db import Database
from jobyard.store.feed import Watch

_T = TypeVar("_T")


class GpuView(BaseModel):
    index: int
    model: str
    in_use: bool


class ResourceUse(BaseModel):
    cpus: float = 0
    memory_mib: int = 0
    gpus: int = 0
    tasks: int = 0


class PoolView(BaseModel):
    """A pool: what it has, what its live jobs hold, and how many run and wait."""

    name: str
    executor: str
    node: str
    capacity: ResourceUse
    in_use: ResourceUse
    gpus: list[GpuView]
    running_jobs: int
    queued_jobs: int


class QueueView(BaseModel):
    name: str
    pool: str
    priority: int
    limits: dict[str, float | None]
    running_jobs: int
    queued_jobs: int
    in_use: ResourceUse


class JobRequest(BaseModel):
    """A face's submission, translated: the spec plus where and how to queue it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: JobSpec
    name: JobName | None = None
    queue: QueueName | None = None
    pool: QueueName | None = None
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
    # Matches the name or display_id (substring), or the exact id or submission_id.
    keyword: str | None = None
    labels: Sequence[tuple[str, str | None]] = ()
    descending: bool = True
    limit: int = 50
    cursor: int | None = None
    # Rows to skip (faces with numbered pages); the cursor is the cheaper way through a list.
    offset: int = 0


def _scope(user: User) -> str | None:
    """Whose jobs a user may see: an admin sees everyone's (None); others only their own."""
    return None if user.is_admin else user.name


def _found(ref: str, value: _T | None) -> _T:
    """Another user's job is reported exactly like a missing one: 404, never 403."""
    if value is None:
        raise NotFound(f"job {ref!r} not found", field="job")
    return value


def _use_of(jobs: Sequence[Job]) -> ResourceUse:
    use = ResourceUse()
    for job in jobs:
        held = sum(1 for t in job.tasks if not t.state.is_finished())
        res = job.spec.resources
        use.cpus += res.cpus * held
        use.memory_mib += res.memory * held
        use.gpus += res.gpus * held
        use.tasks += held
    return use


def find_task(job: Job, name: str | None) -> Task:
    """A task of the job by name or index, or the first when none is named (the one lookup
    every face and service uses: a log, a shell, a terminal)."""
    if name is None or name == "":
        if not job.tasks:
            raise Conflict(f"job {job.display_id} has no tasks yet", field="task")
        return job.tasks[0]
    for task in job.tasks:
        if name in (task.name, str(task.index)):
            return task
    names = ", ".join(t.name for t in job.tasks)
    raise NotFound(f"job {job.display_id} has no task {name!r}; tasks: {names}", field="task")


def _new_secrets(spec: JobSpec) -> dict[str, str]:
    """A job that declares ports gets its own SSH password and port token, made here once."""
    if not spec.ports:
        return {}
    return {
        "ssh_password": secrets.token_urlsafe(18),
        "port_token": secrets.token_urlsafe(24),
    }


def _check_image(settings: Settings, spec: JobSpec) -> None:
    """`image` names a catalog entry, or a plain word does (the executor says which are
    there), or it is a container image reference: a malformed one is refused here, whatever
    the executor."""
    image = spec.image
    if not image or settings.find_environment(image) is not None:
        return
    if containers.looks_like_reference(image) and (problem := containers.reference_problem(image)):
        raise InvalidInput(f"image: {problem}", field="image")


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
        positions: Callable[[int], int | None] | None = None,
        on_submitted: Callable[[], None] | None = None,
    ) -> None:
        self._positions = positions
        self._on_submitted = on_submitted or (lambda: None)
        self._db = db
        self._finished = q.FinishedJobs()  # pages of finished jobs, read once
        self._executor = executor
        self._settings = settings
        self._wake = wake
        self._clock = clock

    # ---- submit -------------------------------------------------------------------------------

    # ---- what can be asked for ------------------------------------------------------------------

    def pools(self) -> list[PoolSpec]:
        return self._settings.effective_pools

    def queues(self) -> list[QueueSpec]:
        return self._settings.effective_queues

    def environments(self) -> list[EnvironmentSpec]:
        return list(self._settings.environments)

    def gpus(self) -> list[GpuInfo]:
        """The pool's GPUs as the executor found them (NVML, the declared inventory, Slurm)."""
        return list(self._executor.capacity().gpus)

    async def pool_views(self) -> list[PoolView]:
        views, _counts = await self.pool_views_and_counts()
        return views

    async def pool_views_and_counts(self) -> tuple[list[PoolView], dict[tuple[str, str], int]]:
        """The pool views and how many jobs each (queue, state) holds, from one read (what a
        /metrics scrape needs: counting 100,000 jobs twice was most of its time)."""
        live, counts = await self._db.read(self._usage)
        return self._pool_views(live, counts), counts

    def _pool_views(self, live: list[Job], counts: dict[tuple[str, str], int]) -> list[PoolView]:
        capacity = self._executor.capacity()
        held = {g for job in live for t in job.tasks if not t.state.is_finished() for g in t.gpus}
        views = []
        for pool in self.pools():
            mine = [job for job in live if job.pool == pool.name]
            views.append(
                PoolView(
                    name=pool.name,
                    executor=pool.executor,
                    node=capacity.node,
                    capacity=ResourceUse(
                        cpus=capacity.cpus,
                        memory_mib=capacity.memory_mib,
                        gpus=len(capacity.gpus),
                        tasks=capacity.max_tasks,
                    ),
                    in_use=_use_of(mine),
                    gpus=[
                        GpuView(index=g.index, model=g.model, in_use=g.index in held)
                        for g in capacity.gpus
                    ],
                    running_jobs=len(mine),
                    queued_jobs=sum(
                        n
                        for (queue, state), n in counts.items()
                        if state == JobState.QUEUED.value
                        and any(q.name == queue and q.pool == pool.name for q in self.queues())
                    ),
                )
            )
        return views

    async def queue_views(self) -> list[QueueView]:
        live, counts = await self._db.read(self._usage)
        views = []
        for queue in self.queues():
            mine = [job for job in live if job.queue == queue.name]
            limits = queue.model_dump(exclude={"name", "pool", "priority"})
            views.append(
                QueueView(
                    name=queue.name,
                    pool=queue.pool,
                    priority=queue.priority,
                    limits=limits,
                    running_jobs=len(mine),
                    queued_jobs=counts.get((queue.name, JobState.QUEUED.value), 0),
                    in_use=_use_of(mine),
                )
            )
        return views

    @staticmethod
    def _usage(conn: Connection) -> tuple[list[Job], dict[tuple[str, str], int]]:
        live = q.load_jobs(conn, q.ids_in_states(conn, LIVE_STATES), with_log=False)
        return live, store_scheduling.counts_by_queue(conn)

    def find_environment(self, ref: str | None) -> EnvironmentSpec | None:
        """The catalog entry an image id or name refers to (None or "": the default entry)."""
        return self._settings.find_environment(ref)

    def placement_of(self, request: JobRequest) -> tuple[str, str]:
        """(queue, pool) for a request; an unknown name is an error that lists the valid ones."""
        queues = {item.name: item for item in self.queues()}
        pools = [item.name for item in self.pools()]
        if request.pool is not None and request.pool not in pools:
            raise InvalidInput(
                f"unknown pool {request.pool!r}; valid pools: {', '.join(pools)}", field="pool"
            )
        if request.queue is None:
            candidates = [item for item in queues.values() if request.pool in (None, item.pool)]
            default = queues.get(self._settings.default_queue)
            if default is not None and default in candidates:
                queue = default
            elif candidates:
                queue = candidates[0]
            else:
                raise InvalidInput(f"pool {request.pool!r} has no queue", field="pool")
        elif request.queue not in queues:
            raise InvalidInput(
                f"unknown queue {request.queue!r}; valid queues: {', '.join(queues)}",
                field="queue",
            )
        else:
            queue = queues[request.queue]
        if request.pool is not None and queue.pool != request.pool:
            raise InvalidInput(
                f"queue {queue.name!r} belongs to pool {queue.pool!r}, not {request.pool!r}",
                field="queue",
            )
        return queue.name, queue.pool

    async def submit(self, user: User, request: JobRequest) -> Submitted:
        self._check_size(request)
        queue, pool = self.placement_of(request)
        self._check_runnable(request.spec)
        new = q.NewJob(
            owner=user.name,
            submission_id=request.submission_id or f"jobyard-{uuid.uuid4().hex}",
            request_hash=request.fingerprint(),
            name=request.name or _default_name(request.spec),
            queue=queue,
            pool=pool,
            priority=request.priority,
            labels=request.labels,
            spec=request.spec,
        )
        secrets = _new_secrets(request.spec)
        outcome = await self._write_once(new, secrets)
        if isinstance(outcome, Job):
            self._changed(outcome.id, new=True)
            self._on_submitted()
            return Submitted(outcome, created=True)
        return Submitted(await self._load(outcome), created=False)

    async def _write_once(self, new: q.NewJob, secrets: dict[str, str]) -> Job | int:
        for attempt in range(3):
            try:
                return await self._db.write(lambda c: self._insert_once(c, new, secrets))
            except IntegrityError:  # a display_id clash, or a twin on another server: again
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert_once(self, conn: Connection, new: q.NewJob, secrets: dict[str, str]) -> Job | int:
        """The new job, or the id of the job this submission_id already made."""
        self._check_live_limit(conn, new)
        job = q.insert_new_job_if_absent(conn, new, self._clock())
        if job is None:
            found = q.find_by_submission(conn, new.owner, new.submission_id)
            if found is not None:
                return self._same_submission(new, found)
            # the twin was deleted in between: the key is free again
            job = q.insert_new_job(conn, new, self._clock())
        store_secrets.insert_secrets(conn, job.id, secrets)
        return job

    def _check_size(self, request: JobRequest) -> None:
        """The configured limits on what one job carries (the model holds the ceilings)."""
        settings, spec = self._settings, request.spec
        parts = [spec.entrypoint] if isinstance(spec.entrypoint, str) else spec.entrypoint
        size = sum(len(part.encode()) for part in parts)
        if size > settings.max_entrypoint_bytes:
            raise InvalidInput(
                f"entrypoint is {size} bytes, longer than max_entrypoint_bytes "
                f"({settings.max_entrypoint_bytes})",
                field="entrypoint",
            )
        if len(spec.env) > settings.max_env_vars:
            raise InvalidInput(
                f"env has {len(spec.env)} variables, more than max_env_vars "
                f"({settings.max_env_vars})",
                field="env",
            )
        env_bytes = sum(len(k) + len(v) for k, v in spec.env.items())
        if env_bytes > settings.max_env_bytes:
            raise InvalidInput(
                f"env is {env_bytes} bytes, larger than max_env_bytes ({settings.max_env_bytes})",
                field="env",
            )
        if request.name is not None and len(request.name) > settings.max_name_length:
            raise InvalidInput(
                f"name is {len(request.name)} characters, longer than max_name_length "
                f"({settings.max_name_length})",
                field="name",
            )

    def _check_live_limit(self, conn: Connection, new: q.NewJob) -> None:
        """max_live_jobs_per_user: a new job past it is refused (a repeated one is not)."""
        limit = self._settings.max_live_jobs_per_user
        if limit is None or q.find_by_submission(conn, new.owner, new.submission_id) is not None:
            return
        live = store_users.count_live_jobs(conn, new.owner)
        if live >= limit:
            raise LimitExceeded(
                f"max_live_jobs_per_user: {new.owner!r} has {live} unfinished jobs, the limit "
                f"is {limit}; wait for some to finish or stop them",
                field="max_live_jobs_per_user",
            )

    @staticmethod
    def _same_submission(new: q.NewJob, found: tuple[int, str]) -> int:
        job_id, fingerprint = found
        if fingerprint != new.request_hash:
            raise Conflict(
                f"submission_id {new.submission_id!r} was already used for a different job",
                field="submission_id",
            )
        return job_id

    def _check_runnable(self, spec: JobSpec) -> None:
        if spec.ports and not self.supports("ports"):
            raise ExecutorRefused(
                f"the {self._executor.kind} executor cannot reach a job's ports from this "
                "server (no SSH or HTTP access through the gateway); submit without ports",
                field="ports",
            )
        _check_image(self._settings, spec)
        self._executor.check_spec_supported(spec)
        # Beyond the pool: refused where it cannot grow; where it can (Ray), the job waits.
        problem = why_never_fits(self._executor.capacity(), spec.resources, spec.replicas)
        if problem is not None:
            raise InvalidInput(f"{problem[0]}: {problem[1]}", field=problem[0])

    # ---- read ---------------------------------------------------------------------------------

    async def secrets(self, user: User, ref: str) -> dict[str, str]:
        """The job's secrets (ssh_password, port_token), for its owner and admins only."""
        job_id = await self._resolve(user, ref)
        return await self._db.read(lambda c: store_secrets.get_secrets(c, job_id))

    async def job_of_secret(self, kind: str, value: str) -> Job | None:
        """The job a secret opens (a port token, an SSH password), whoever asks: the secret
        itself is the credential. Compared in the database by exact value."""
        if not value:
            return None
        job_id = await self._db.read(lambda c: store_secrets.find_job_by_secret(c, kind, value))
        return None if job_id is None else await self._load(job_id)

    async def get(self, user: User, ref: str) -> Job:
        scope = _scope(user)
        job = _found(ref, await self._db.read(lambda c: q.find_job(c, ref, scope)))
        return self._with_position(job)

    def _with_position(self, job: Job) -> Job:
        if job.state is JobState.QUEUED and self._positions is not None:
            job.queue_position = self._positions(job.id)
        return job

    async def list_jobs(
        self, user: User, query: JobQuery, *, page_field: str | None = None
    ) -> q.JobPage:
        """A page of the jobs `user` may see. `page_field`: the face's name for a page size
        the client chose, which max_page_size bounds (the faces' own scans are not bound)."""
        top = self._settings.max_page_size if page_field is not None else MAX_PAGE_SIZE
        if not 1 <= query.limit <= top:
            raise InvalidInput(
                f"{page_field or 'limit'} must be between 1 and {top} (max_page_size)",
                field=page_field or "limit",
            )
        if query.offset < 0:
            raise InvalidInput("offset must not be negative", field="offset")
        owner = query.owner if user.is_admin else user.name
        if not user.is_admin and query.owner not in (None, user.name):
            return q.JobPage(items=[], total=0)
        flt = q.JobFilter(
            owner=owner,
            states=query.states,
            queue=query.queue,
            name_contains=query.name_contains,
            labels=query.labels,
            keyword=query.keyword,
        )
        page = await self._db.read(
            lambda c: q.list_jobs(
                c,
                flt,
                limit=query.limit,
                cursor=query.cursor,
                descending=query.descending,
                offset=query.offset,
                finished=self._finished,
            )
        )
        for job in page.items:
            self._with_position(job)
        return page

    async def events(self, user: User, ref: str) -> list[Event]:
        job_id = await self._resolve(user, ref)
        return await self._db.read(lambda c: q.list_events(c, job_id))

    async def record_event(self, job_id: int, type_: EventType, reason: str, message: str) -> None:
        """An event on a job from outside the state machine (e.g. an SSH session opened).
        The message must never carry a secret."""
        now = self._clock()
        await self._db.write(lambda c: q.add_event(c, job_id, type_, reason, message, now))

    async def _resolve(self, user: User, ref: str) -> int:
        scope = _scope(user)
        return _found(ref, await self._db.read(lambda c: q.resolve_ref(c, ref, scope)))

    async def _load(self, job_id: int) -> Job:
        job = await self._db.read(lambda c: q.get_job(c, job_id))
        if job is None:
            raise NotFound(f"job {job_id} not found", field="job")
        return job

    # ---- inside a running task ----------------------------------------------------------------

    def supports(self, capability: str) -> bool:
        """Whether this server's executor can do `capability` ("shell", "ports")."""
        return capability in self._executor.capabilities

    async def shell(
        self, user: User, ref: str, task_name: str | None = None, command: str | None = None
    ) -> tuple[Job, ShellCommand]:
        """How to open a shell (or run `command`) inside a running task of the user's job.

        `task_name` is a task's name or index; None means the first task. What it describes
        is what `open_shell` starts (the SSH gateway's SFTP serves its cwd)."""
        job, placement, task, handle = await self._running_task(user, ref, task_name)
        return job, self._executor.shell_command(placement, task.index, handle, command)

    async def open_shell(
        self,
        user: User,
        ref: str,
        task_name: str | None = None,
        command: str | None = None,
        *,
        size: TerminalSize | None = None,
        term: str | None = None,
    ) -> tuple[Job, Shell]:
        """Start a shell (or `command`) inside a running task of the user's job: under a
        pseudo-terminal of `size`, or with pipes when size is None (Executor.open_shell). The
        caller relays its bytes and ends it (Shell.end) when the job ends or the client goes."""
        job, placement, task, handle = await self._running_task(user, ref, task_name)
        shell = await self._executor.open_shell(
            placement, task.index, handle, command=command, size=size, term=term
        )
        return job, shell

    async def _running_task(
        self, user: User, ref: str, task_name: str | None
    ) -> tuple[Job, Placement, Task, dict[str, Any]]:
        job = await self.get(user, ref)
        task = find_task(job, task_name)
        if job.state is not JobState.RUNNING or task.handle is None or task.state.is_finished():
            raise Conflict(
                f"task {task.name} of job {ref!r} is not running (job is {job.state.value})",
                field="task",
            )
        placement = Placement(
            job_id=job.id,
            display_id=job.display_id,
            owner=job.owner,
            spec=job.spec,
            tasks=[
                TaskPlacement(index=t.index, name=t.name, node=t.node or "", gpus=t.gpus)
                for t in job.tasks
            ],
        )
        return job, placement, task, task.handle

    # ---- changes ------------------------------------------------------------------------------

    def _changed(self, job_id: int, *, new: bool = False) -> None:
        """A change to a job is committed: the reconciler (a new job: its queue) and whoever
        follows the job are told."""
        self._db.feed.publish([job_id])
        self._wake(None if new else job_id)

    def watch(self, job_id: int | None = None) -> AbstractContextManager[Watch]:
        """Be told of every committed change to a job (None: to any job), from before the
        next read (store/feed.py): a reader waits on it rather than reading on a timer."""
        return self._db.feed.watch(job_id)

    # ---- stop and delete ----------------------------------------------------------------------

    async def stop(self, user: User, ref: str) -> Job:
        """Record the intent; the reconciler signals the processes. Idempotent while stopping."""
        job_id = await self._resolve(user, ref)
        await self._db.write(lambda c: self._stop(c, job_id))
        self._changed(job_id)
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

    async def stop_for(self, job_id: int, reason: TerminationReason, message: str) -> bool:
        """Begin stopping a RUNNING job for a policy (not a person): `reason` decides its final
        state, and `message` goes on the STOPPING event, a Warning. False (nothing written)
        if the job is not RUNNING any more."""
        stopping = await self._db.write(lambda c: self._stop_for(c, job_id, reason, message))
        if stopping:
            self._changed(job_id)
        return stopping

    def _stop_for(
        self, conn: Connection, job_id: int, reason: TerminationReason, message: str
    ) -> bool:
        if q.get_state(conn, job_id) is not JobState.RUNNING:
            return False
        now = self._clock()
        q.request_stop(conn, job_id, reason, now)
        change = q.Transition(JobState.STOPPING, message, event_type=EventType.WARNING)
        return bool(q.transition_many(conn, [(job_id, change)], now))

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
        self._changed(job.id)
        # The directory jobyard made for the job (its working directory unless the spec named
        # one): deleted with it, as Kubernetes deletes a pod's emptyDir. A symlink is left.
        await asyncio.to_thread(shutil.rmtree, self._settings.jobs_dir / str(job.id), True)
