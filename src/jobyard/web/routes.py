"""The dashboard's routes: pages (`/`, `/login`), sign-in/out and the JSON the pages poll.

Thin handlers as in the native face: read the session, make one core call, shape the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import ValidationError

from jobyard.errors import InvalidInput, JobyardError, NotFound
from jobyard.model import Job, JobState
from jobyard.service import (
    AuthService,
    JobQuery,
    JobRequest,
    JobService,
    LogQuery,
    LogService,
    User,
)
from jobyard.web import assets
from jobyard.web.session import (
    PAGE_HEADERS,
    SESSION_COOKIE,
    CheckedUser,
    SessionUser,
    checked_user,
    close_session,
    open_session,
    same_origin,
    session_user,
)
from jobyard.web.views import activity, field_errors, job_detail, job_row, port_access

router = APIRouter(include_in_schema=False)
_TABLE_POLL_SECONDS = 1.0
_KEEPALIVE_SECONDS = 15.0
_REFUSED = '<p class="error" role="alert">That token was not accepted.</p>'


def _jobs(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


def _logs(request: Request) -> LogService:
    service: LogService = request.app.state.logs
    return service


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInput("request body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object", field="body")
    return body


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


# ---- pages and sign-in ---------------------------------------------------------------------


@router.get("/")
async def index(request: Request) -> Response:
    if not request.cookies.get(SESSION_COOKIE):
        return RedirectResponse("/login", status_code=303)
    return _html(assets.page("index.html"))


@router.get("/login")
async def login_page() -> Response:
    return _html(assets.page("login.html").replace("<!--message-->", ""))


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=512)] = "") -> Response:
    if not same_origin(request):
        return _html("cross-origin sign-in refused", 403)
    auth: AuthService = request.app.state.auth
    try:
        await auth.authenticate(token.strip())
    except JobyardError:
        return _html(assets.page("login.html").replace("<!--message-->", _REFUSED), 401)
    response = RedirectResponse("/", status_code=303)
    open_session(response, token.strip(), secure=request.url.scheme == "https")
    return response


@router.post("/logout", dependencies=[Depends(checked_user)])
async def logout() -> Response:
    response = Response(status_code=204)
    close_session(response)
    return response


@router.get("/static/{name}")
async def static(name: str) -> Response:
    found = assets.static_file(name)
    if found is None:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})


@router.get("/static/vendor/{name}")
async def vendor(name: str) -> Response:
    found = assets.vendor_file(name)
    if found is None:
        raise NotFound(f"{name!r} is not installed (run `make assets`)")
    return FileResponse(found[0], media_type=found[1], headers={"Cache-Control": "max-age=3600"})


# ---- the JSON the pages use ----------------------------------------------------------------

api = APIRouter(prefix="/ui/api")


@api.get("/me")
async def me(request: Request, user: SessionUser) -> dict[str, Any]:
    jobs = _jobs(request)
    return {
        "name": user.name,
        "admin": user.is_admin,
        "queues": [q.name for q in jobs.queues()],
        "terminal": jobs.supports("shell"),
    }


def _states(raw: str) -> list[JobState]:
    try:
        return [JobState(s.strip().upper()) for s in raw.split(",") if s.strip()]
    except ValueError:
        raise InvalidInput("state: not a job state", field="state") from None


@dataclass(frozen=True)
class _Filters:
    """The jobs table's filters, from the query string."""

    state: str = ""
    queue: str = ""
    owner: str = ""
    q: Annotated[str, Query(max_length=256)] = ""
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc"
    limit: Annotated[int, Query(ge=1, le=200)] = 50
    page: Annotated[int, Query(ge=0, le=100_000)] = 0

    def query(self) -> JobQuery:
        return JobQuery(
            states=_states(self.state),
            queue=self.queue or None,
            owner=self.owner or None,
            name_contains=self.q or None,
            descending=self.order == "desc",
            limit=self.limit,
            offset=self.page * self.limit,
        )


FiltersDep = Annotated[_Filters, Depends()]


async def _table(jobs: JobService, user: User, filters: _Filters) -> dict[str, Any]:
    found = await jobs.list_jobs(user, filters.query(), page_field="limit")
    return {"items": [job_row(j) for j in found.items], "total": found.total, "page": filters.page}


@api.get("/jobs")
async def list_jobs(request: Request, user: SessionUser, filters: FiltersDep) -> dict[str, Any]:
    return await _table(_jobs(request), user, filters)


@api.get("/jobs/events")
async def job_table_events(request: Request, user: SessionUser, filters: FiltersDep) -> Response:
    """The same table as server-sent events: one `data:` line whenever it changes (read again
    when a job changes, at most once a second), a comment every 15 s otherwise; ends when the
    client goes away."""
    _states(filters.state)  # a bad filter is a 422 now, not a broken stream
    stream = _table_events(request, _jobs(request), user, filters)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _table_events(
    request: Request, jobs: JobService, user: User, filters: _Filters
) -> AsyncIterator[str]:
    """The table is read again when a job changed (the change feed), at most once a second
    however busy the server, and after the feed's recheck (another server's changes)."""
    last, sent = "", time.monotonic()
    yield "retry: 2000\n\n"
    with jobs.watch() as changed:
        while not await request.is_disconnected():
            body = json.dumps(await _table(jobs, user, filters), separators=(",", ":"))
            if body != last:
                last, sent = body, time.monotonic()
                yield f"data: {body}\n\n"
            await asyncio.sleep(_TABLE_POLL_SECONDS)
            told = await changed.wait(min(changed.recheck_seconds, _KEEPALIVE_SECONDS))
            if not told and time.monotonic() - sent >= _KEEPALIVE_SECONDS:
                sent = time.monotonic()
                yield ": keepalive\n\n"


@api.get("/jobs/{ref}")
async def get_job(request: Request, ref: str, user: SessionUser) -> dict[str, Any]:
    jobs = _jobs(request)
    job = await jobs.get(user, ref)
    detail = job_detail(job, await jobs.events(user, ref))
    access = request.app.state.access  # None where the server runs no gateway
    urls = await access.urls(job) if access is not None and job.spec.ports else {}
    detail["ports"] = port_access(job, urls)
    return detail


@api.post("/jobs")
async def submit_job(request: Request, user: CheckedUser) -> Response:
    body = await _json_object(request)
    try:
        job_request = JobRequest.model_validate(body)
        submitted = await _jobs(request).submit(user, job_request)
    except ValidationError as exc:
        return JSONResponse({"errors": field_errors(exc)}, status_code=422)
    except InvalidInput as exc:
        field = (exc.field or "form").removeprefix("spec.")
        return JSONResponse({"errors": [{"field": field, "message": exc.message}]}, 422)
    return JSONResponse(job_row(submitted.job), status_code=201)


@api.post("/jobs/{ref}/stop")
async def stop_job(request: Request, ref: str, user: CheckedUser) -> dict[str, Any]:
    return job_row(await _jobs(request).stop(user, ref))


@api.delete("/jobs/{ref}")
async def delete_job(
    request: Request, ref: str, user: CheckedUser, force: bool = False
) -> Response:
    await _jobs(request).delete(user, ref, force=force)
    return Response(status_code=204)


@api.get("/jobs/{ref}/logs")
async def job_logs(
    request: Request,
    ref: str,
    user: SessionUser,
    task: str | None = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000)] = None,
    follow: bool = False,
) -> Response:
    logs = _logs(request)
    query = LogQuery(task=task, tail=tail)
    media = "text/plain; charset=utf-8"
    if follow:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(
            await logs.follow(user, ref, query), media_type=media, headers=headers
        )
    # Download: the whole file as it is now (up to the service's read limit).
    headers = {"Content-Disposition": f'attachment; filename="{ref}.log"'}
    return Response(await logs.read(user, ref, query), media_type=media, headers=headers)


@api.post("/jobs/{ref}/terminal")
async def open_terminal(request: Request, ref: str, user: CheckedUser) -> dict[str, str]:
    """A single-use, short-lived terminal URL (the training face's WebSocket terminal)."""
    jobs = _jobs(request)
    body = await _json_object(request)
    task = str(body.get("task") or "") or None
    job, _ = await jobs.shell(user, ref, task)  # refuses a job or task that is not running
    name = next((t.name for t in job.tasks if task in (None, t.name, str(t.index))), "")
    token = await request.app.state.terminals.issue(user, str(job.id), name)
    scheme = "wss" if request.url.scheme == "https" else "ws"
    return {"url": f"{scheme}://{request.url.netloc}/webterminal?token={token}"}


_LIVE = [s for s in JobState if not s.is_terminal()]
_ACTIVITY_PAGES = 20  # at most 10,000 live jobs and the 500 latest finished ones are counted


@api.get("/activity")
async def job_activity(request: Request, user: SessionUser) -> dict[str, Any]:
    """The caller's (an admin's: everyone's) running and queued jobs over the last hour."""
    jobs = _jobs(request)
    seen: dict[int, Job] = {}
    cursor: int | None = None
    for _ in range(_ACTIVITY_PAGES):
        page = await jobs.list_jobs(user, JobQuery(states=_LIVE, limit=500, cursor=cursor))
        seen.update((j.id, j) for j in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    recent = await jobs.list_jobs(user, JobQuery(limit=500))
    seen.update((j.id, j) for j in recent.items)
    return activity(seen.values(), datetime.now(UTC))


@api.get("/pools", dependencies=[Depends(session_user)])
async def pools(request: Request) -> dict[str, Any]:
    views = await _jobs(request).pool_views()
    return {"items": [v.model_dump(mode="json") for v in views]}


@api.get("/queues", dependencies=[Depends(session_user)])
async def queues(request: Request) -> dict[str, Any]:
    views = await _jobs(request).queue_views()
    return {"items": [v.model_dump(mode="json") for v in views]}


router.include_router(api)
