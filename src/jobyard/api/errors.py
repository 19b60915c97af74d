"""JobyardError -> HTTP status, in one table; and the native error envelope.

Every error leaves as JSON `{"error": {"code", "message", "field"?}}`; never a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from jobyard import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.JobyardError], int] = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.JobyardError)
    async def _domain(_request: Request, exc: errors.JobyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, errors.Unauthorized) else None
        return JSONResponse(error_body(exc.code, exc.message, exc.field), status_for(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message, field = validation_problem(exc)
        return JSONResponse(error_body(code, message, field), status)

    @app.exception_handler(ValidationError)
    async def _model(_request: Request, exc: ValidationError) -> JSONResponse:
        status, code, message, field = validation_problem(RequestValidationError(exc.errors()))
        return JSONResponse(error_body(code, message, field), status)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_body("internal", "internal server error"), 500)
