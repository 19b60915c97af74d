"""The PaaS job API under /v1/job: create, get, stats, list, cancel.

Every answer is HTTP 200 with `{code, msg, ...}`; failures are rendered by
`mapping.render_problem` (registered for this prefix in `api/app.py`)."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response

from jobyard.api.deps import CurrentUser, JobsDep
from jobyard.api.paas.mapping import CORE_STATES, Code, Status, status_of
from jobyard.api.paas.schemas import JobExtras, PaasCreate, job_object, refused
from jobyard.api.responses import JSONResponse
from jobyard.errors import ExecutorRefused, InvalidInput, NotFound
from jobyard.model import Job, JobState
from jobyard.service import JobQuery, JobService, User

router = APIRouter(prefix="/v1/job", tags=["paas"])

DEFAULT_PER_PAGE = 10
MAX_PER_PAGE = 100
MAX_PAGE = 10_000_000
# The stats answer lists this many of the newest jobs; its counts cover all of them.
STATS_JOBS = 500
# Without the scheduler's position, a queued job's place is counted by id, at most this far.
_SCAN_PAGE = 500
_SCAN_PAGES = 20


def ok(**body: Any) -> JSONResponse:
    return JSONResponse({"code": int(Code.OK), "msg": "", **body})


# ---- reading requests -----------------------------------------------------------------------


async def _create_fields(request: Request) -> dict[str, Any]:
    """The create request's fields: multipart/urlencoded form fields, or a JSON object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as exc:  # the parser's own errors: a malformed body
            raise InvalidInput(f"the form could not be read ({exc})", field="body") from None
        return dict(form.items())
    if kind == "application/json" or kind.endswith("+json"):
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"the body is not valid JSON ({exc})", field="body") from None
        if not isinstance(body, dict):
            raise InvalidInput("the JSON body must be an object of fields", field="body")
        return body
    raise InvalidInput(
        "send the fields as multipart/form-data (or as a JSON object)", field="content-type"
    )


def _positive(raw: str | None, field: str, *, default: int | None = None, top: int) -> int:
    if raw is None or raw.strip() == "":
        if default is None:
            raise InvalidInput("is required", field=field)
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= top:
        raise InvalidInput(f"must be an integer from 1 to {top}, got {raw!r}", field=field)
    return int(text)


def _job_id(raw: str | None) -> int:
    return _positive(raw, "id", top=2**31 - 1)


def _order(raw: str | None) -> bool:
    """`order`: true = oldest first, false (the default) = newest first."""
    value = (raw or "false").strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise InvalidInput(f"must be true or false, got {raw!r}", field="order")


# ---- rendering jobs -------------------------------------------------------------------------


class _Access(Protocol):
    """The interactive-access service (gateway URLs), where the server runs one."""

    async def urls_many(self, jobs: Sequence[Job]) -> dict[int, dict[str, list[str]]]: ...


class _Views:
    """Builds job objects for one request: the extras each needs from other core calls."""

    def __init__(self, request: Request, jobs: JobService, user: User) -> None:
        self._jobs = jobs
        self._user = user
        self._access: _Access | None = getattr(request.app.state, "access", None)
        self._queued: dict[str, list[int]] = {}

    async def one(self, job: Job) -> dict[str, Any]:
        return (await self.many([job]))[0]

    async def many(self, jobs: list[Job]) -> list[dict[str, Any]]:
        urls: dict[int, dict[str, list[str]]] = {}
        if self._access is not None and any(job.spec.ports for job in jobs):
            urls = await self._access.urls_many(jobs)
        return [await self._object(job, urls.get(job.id, {})) for job in jobs]

    async def _object(self, job: Job, urls: dict[str, list[str]]) -> dict[str, Any]:
        secrets: dict[str, str] = {}
        if job.spec.ports:  # only the owner and admins get here: others' jobs are not found
            secrets = await self._jobs.secrets(self._user, str(job.id))
        entry = self._jobs.find_environment(job.spec.image)
        extras = JobExtras(
            queue_len=await self._queue_len(job),
            ssh_password=secrets.get("ssh_password"),
            owner_id=self._user.id if job.owner == self._user.name else 0,
            environment_id=entry.id if entry is not None else job.spec.image or "0",
            urls=urls,
        )
        return job_object(job, extras)

    async def _queue_len(self, job: Job) -> int:
        """1 for the next job to start in its queue, 2 behind it...; 0 when not queued."""
        if job.state is not JobState.QUEUED:
            return 0
        if job.queue_position:
            return int(job.queue_position)
        return await self._ahead_by_id(job) + 1

    async def _ahead_by_id(self, job: Job) -> int:
        """Before the scheduler has placed a new job in its queue: the queued jobs of that
        queue this user can see with smaller ids (the order of equal priorities). Each queue
        is read once per request, at most _SCAN_PAGES pages."""
        ids = self._queued.get(job.queue)
        if ids is None:
            ids = self._queued[job.queue] = await self._queued_ids(job.queue)
        return bisect.bisect_left(ids, job.id)

    async def _queued_ids(self, queue: str) -> list[int]:
        ids: list[int] = []
        cursor: int | None = None
        for _ in range(_SCAN_PAGES):
            query = JobQuery(
                states=[JobState.QUEUED],
                queue=queue,
                descending=False,
                limit=_SCAN_PAGE,
                cursor=cursor,
            )
            page = await self._jobs.list_jobs(self._user, query)
            ids.extend(item.id for item in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return ids


async def _own_job(jobs: JobService, user: User, job_id: int) -> Job:
    """The job with this id, if the user may see it (another user's job: not found)."""
    job = await jobs.get(user, str(job_id))
    if job.id != job_id:  # the core also resolves display and submission ids; not here
        raise NotFound(f"job {job_id} not found", field="id")
    return job


# ---- routes ---------------------------------------------------------------------------------


@router.post("")
async def create_job(request: Request, user: CurrentUser, jobs: JobsDep) -> Response:
    create = PaasCreate.model_validate(await _create_fields(request))
    field, ref = create.environment_ref()
    entry = jobs.find_environment(ref)
    if entry is None:
        known = ", ".join(item.id for item in jobs.environments()) or "none"
        raise InvalidInput(f"unknown id {ref!r}; known ids: {known}", field=field)
    create.check_gpu_name(jobs.gpus())
    job_request = create.to_request(entry.id if ref is not None else None)
    try:
        submitted = await jobs.submit(user, job_request)
    except (InvalidInput, ExecutorRefused) as exc:
        raise refused(exc, create) from None
    return ok(job=await _Views(request, jobs, user).one(submitted.job))


@router.get("")
async def get_job(
    request: Request, user: CurrentUser, jobs: JobsDep, id: str | None = None
) -> Response:
    job = await _own_job(jobs, user, _job_id(id))
    return ok(job=await _Views(request, jobs, user).one(job))


@router.delete("")
async def cancel_job(user: CurrentUser, jobs: JobsDep, id: str | None = None) -> Response:
    """Accepted: a queued job is cancelled at once (1 -> 5 -> 4); a running one is stopped
    (SIGTERM, the grace period, SIGKILL) and ends in 4."""
    job = await _own_job(jobs, user, _job_id(id))
    await jobs.stop(user, str(job.id))
    return ok()


@router.get("/stats")
async def job_stats(user: CurrentUser, jobs: JobsDep) -> Response:
    counts: dict[str, int] = {}
    for status in Status:
        states = CORE_STATES[status]
        if not states:
            counts[str(int(status))] = 0
            continue
        page = await jobs.list_jobs(user, JobQuery(states=states, limit=1))
        counts[str(int(status))] = page.total
    newest = await jobs.list_jobs(user, JobQuery(limit=STATS_JOBS))
    listed = [{"id": job.id, "status": int(status_of(job))} for job in newest.items]
    return ok(total=newest.total, counts=counts, jobs=listed)


@router.get("/jobs")
async def list_jobs(
    request: Request,
    user: CurrentUser,
    jobs: JobsDep,
    page: str | None = None,
    per_page: str | None = None,
    order: str | None = None,
) -> Response:
    number = _positive(page, "page", default=1, top=MAX_PAGE)
    size = _positive(per_page, "per_page", default=DEFAULT_PER_PAGE, top=MAX_PER_PAGE)
    query = JobQuery(descending=not _order(order), limit=size, offset=(number - 1) * size)
    found = await jobs.list_jobs(user, query, page_field="per_page")
    pagination = {
        "total": found.total,
        "numPages": math.ceil(found.total / size),
        "page": number,
        "perPage": size,
    }
    return ok(pagination=pagination, job=await _Views(request, jobs, user).many(found.items))
