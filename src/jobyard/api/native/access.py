"""Interactive access (docs/access.md): a job's URLs and credentials, users' public keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from jobyard.api.bounds import MAX_ID
from jobyard.api.deps import CurrentUser
from jobyard.api.errors import NATIVE_ERRORS, described
from jobyard.api.strict import RequestModel
from jobyard.errors import ExecutorRefused
from jobyard.service.access import AccessService, PublicKey

router = APIRouter(prefix="/api/v1", tags=["access"], responses=NATIVE_ERRORS)


async def _access(request: Request) -> AccessService:
    service: AccessService | None = getattr(request.app.state, "access", None)
    if service is None:
        raise ExecutorRefused("interactive access is not enabled on this server")
    return service


AccessDep = Annotated[AccessService, Depends(_access)]


class SshCredentials(BaseModel):
    user: str
    password: str | None
    host_key: str = Field(description="the gateway's public host key (OpenSSH)")


class AccessPublic(BaseModel):
    urls: dict[str, list[str]] = Field(description="keyed port_<declared port>, as app.urls")
    ssh: SshCredentials
    token: str | None = Field(description="the port token of the job's HTTP ports")


class KeyCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=128)] = ""
    public_key: Annotated[str, Field(min_length=1, max_length=16384)]


class KeyPublic(BaseModel):
    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: float

    @classmethod
    def of(cls, key: PublicKey) -> KeyPublic:
        return cls(**key.__dict__)


class KeyList(BaseModel):
    items: list[KeyPublic]


@router.get(
    "/jobs/{ref}/access",
    response_model=AccessPublic,
    responses={404: described("no such job (or not yours)")},
)
async def job_access(ref: str, user: CurrentUser, access: AccessDep) -> AccessPublic:
    """URLs and credentials of a job (its owner and admins; 404 for anyone else)."""
    found = await access.access(user, ref)
    return AccessPublic(
        urls=found.urls,
        ssh=SshCredentials(
            user=found.ssh_user, password=found.ssh_password, host_key=found.host_key
        ),
        token=found.token,
    )


@router.post("/keys", status_code=201, response_model=KeyPublic)
async def add_key(body: KeyCreate, user: CurrentUser, access: AccessDep) -> KeyPublic:
    return KeyPublic.of(await access.add_key(user, body.name, body.public_key))


@router.get("/keys", response_model=KeyList)
async def list_keys(user: CurrentUser, access: AccessDep) -> KeyList:
    return KeyList(items=[KeyPublic.of(key) for key in await access.list_keys(user)])


@router.delete(
    "/keys/{key_id}", status_code=204, responses={404: described("no such key (or not yours)")}
)
async def delete_key(
    key_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, access: AccessDep
) -> Response:
    await access.delete_key(user, key_id)
    return Response(status_code=204)
