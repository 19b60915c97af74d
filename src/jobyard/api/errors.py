"""JobyardError -> HTTP status, in one table; and the native error envelope.

Every error leaves as JSON `{"error": {"code", "message", "field"?}}`; never a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from jobyard import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.JobyardError], int] = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.LimitExceeded: 429,
    errors.ExecutorRefused: 400,
    errors.ExecutorUnavailable: 503,
}


def status_for(exc: errors.JobyardError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return {"error": body}


_UNION_TAG = re.compile(
    r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|constrained-.*)$"
)
_PLACES = frozenset({"body", "query", "path", "header"})


def _field(loc: Sequence[Any]) -> str | None:
    """A dotted field path, without pydantic's request places and union member tags."""
    parts = [str(p) for p in loc if p not in _PLACES and not _UNION_TAG.match(str(p))]
    return ".".join(parts) or None


def _message(problem: dict[str, Any]) -> str:
    kind = problem.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    return str(problem.get("msg", "invalid value")).removeprefix("Value error, ")


def validation_problem(exc: RequestValidationError) -> tuple[int, str, str, str | None]:
    """(status, code, message, field) for the first field pydantic found wrong."""
    problems = [dict(p) for p in exc.errors()] or [{"msg": "invalid request"}]
    first = problems[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return 400, "invalid_json", f"request body is not valid JSON: {detail}".rstrip(": "), "body"
    field = _field(first.get("loc", ()))
    # A union (str | list[str]) reports one problem per member: say them together.
    same = [p for p in problems if _field(p.get("loc", ())) == field]
    message = " or ".join(dict.fromkeys(_message(p) for p in same))
    return 422, "invalid", f"{field}: {message}" if field else message, field


class ErrorDetail(BaseModel):
    code: str = Field(description="a machine code: invalid, not_found, conflict, ...")
    message: str
    field: str | None = Field(default=None, description="the field at fault, dotted")


class ErrorEnvelope(BaseModel):
    """Every error of the native face."""

    error: ErrorDetail


def described(description: str) -> dict[str, Any]:
    """An error answer in the OpenAPI of the native face (`responses=`)."""
    return {"model": ErrorEnvelope, "description": description}


# The errors any native route may answer, declared once (each router's `responses=`); a
# route names its own meaning of one with `described(...)`.
NATIVE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: described(
        "a malformed body (JSON that does not parse, or nests too deep), or what this server "
        "cannot run (`unsupported`)"
    ),
    401: described("missing or invalid token"),
    404: described("not found (another user's job is not found either)"),
    409: described("conflicts with the current state"),
    422: described("invalid input; `field` names it"),
}


@dataclass(frozen=True)
class Problem:
    """An error, face-neutral: each face renders it in its own envelope."""

    status: int
    code: str
    message: str
    field: str | None = None
    headers: dict[str, str] | None = None


ErrorRenderer = Callable[[Problem], Response]


def render_native(problem: Problem) -> Response:
    body = error_body(problem.code, problem.message, problem.field)
    return JSONResponse(body, problem.status, problem.headers)


def register_face_errors(app: FastAPI, prefix: str, render: ErrorRenderer) -> None:
    """Errors on paths under `prefix` leave in that face's envelope (longest prefix wins)."""
    renderers: list[tuple[str, ErrorRenderer]] = app.state.error_renderers
    renderers.append((prefix, render))
    renderers.sort(key=lambda item: len(item[0]), reverse=True)


def renderer_for(app: Any, path: str) -> ErrorRenderer:
    """The error renderer of the face that owns `path` in `app` (see register_face_errors)."""
    state = getattr(app, "state", None)
    renderers: list[tuple[str, ErrorRenderer]] = getattr(state, "error_renderers", [])
    for prefix, render in renderers:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return render
    return render_native


def _render(request: Request, problem: Problem) -> Response:
    return renderer_for(request.app, request.url.path)(problem)


def problem_for(exc: errors.JobyardError) -> Problem:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, errors.Unauthorized) else None
    return Problem(status_for(exc), exc.code, exc.message, exc.field, headers)


def install_error_handlers(app: FastAPI) -> None:
    app.state.error_renderers = []

    @app.exception_handler(errors.JobyardError)
    async def _domain(request: Request, exc: errors.JobyardError) -> Response:
        return _render(request, problem_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        status, code, message, field = validation_problem(exc)
        return _render(request, Problem(status, code, message, field))

    @app.exception_handler(ValidationError)
    async def _model(request: Request, exc: ValidationError) -> Response:
        status, code, message, field = validation_problem(RequestValidationError(exc.errors()))
        return _render(request, Problem(status, code, message, field))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        problem = Problem(exc.status_code, code, str(exc.detail), None, headers)
        return _render(request, problem)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return _render(request, Problem(500, "internal", "internal server error"))
