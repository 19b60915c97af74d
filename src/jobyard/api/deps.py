"""FastAPI dependencies: the core services (put on app.state by create_app) and the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobyard.service import AuthService, JobService, LogService, User

_bearer = HTTPBearer(auto_error=False, description="API token (see $JOBYARD_HOME/admin.token)")


async def _jobs(request: Request) -> JobService:
    service: JobService = request.app.state.jobs
    return service


async def _auth(request: Request) -> AuthService:
    service: AuthService = request.app.state.auth
    return service


async def _logs(request: Request) -> LogService:
    service: LogService = request.app.state.logs
    return service


async def _user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    auth: AuthService = request.app.state.auth
    return await auth.authenticate(credentials.credentials if credentials else None)


AuthDep = Annotated[AuthService, Depends(_auth)]
JobsDep = Annotated[JobService, Depends(_jobs)]
LogsDep = Annotated[LogService, Depends(_logs)]
CurrentUser = Annotated[User, Depends(_user)]
