"""Registry logins (docs/executors.md, "Private registries"): a user's username and password
per container registry, for the pulls of their jobs' images. Answers never carry a password."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from jobyard.api.deps import CurrentUser
from jobyard.api.errors import NATIVE_ERRORS, described
from jobyard.api.strict import RequestModel
from jobyard.errors import NotFound
from jobyard.service.registries import RegistryCredential, RegistryService

router = APIRouter(prefix="/api/v1", tags=["registry credentials"], responses=NATIVE_ERRORS)


async def _registries(request: Request) -> RegistryService:
    service: RegistryService | None = getattr(request.app.state, "registries", None)
    if service is None:
        raise NotFound("registry logins are not served by this app", field="registry")
    return service


RegistriesDep = Annotated[RegistryService, Depends(_registries)]


class CredentialCreate(RequestModel):
    model_config = ConfigDict(extra="forbid")

    registry: Annotated[
        str, Field(min_length=1, max_length=300, description="host[:port], e.g. docker.io")
    ]
    username: Annotated[str, Field(min_length=1, max_length=255)]
    password: Annotated[SecretStr, Field(min_length=1, max_length=16384)]


class CredentialPublic(BaseModel):
    registry: str
    username: str
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, found: RegistryCredential) -> CredentialPublic:
        return cls(**found.__dict__)


class CredentialList(BaseModel):
    items: list[CredentialPublic]


@router.post(
    "/registry-credentials",
    response_model=CredentialPublic,
    responses={201: {"model": CredentialPublic, "description": "stored (there was none)"}},
)
async def put_credential(
    body: CredentialCreate, user: CurrentUser, registries: RegistriesDep, response: Response
) -> CredentialPublic:
    """Store your login to a registry, replacing the one you had there (200) or not (201)."""
    found, new = await registries.put(
        user, body.registry, body.username, body.password.get_secret_value()
    )
    response.status_code = 201 if new else 200
    return CredentialPublic.of(found)


@router.get("/registry-credentials", response_model=CredentialList)
async def list_credentials(user: CurrentUser, registries: RegistriesDep) -> CredentialList:
    """Your registry logins: registry and username only."""
    return CredentialList(items=[CredentialPublic.of(c) for c in await registries.list(user)])


@router.delete(
    "/registry-credentials/{registry}",
    status_code=204,
    responses={404: described("no login of yours to that registry")},
)
async def delete_credential(
    registry: Annotated[str, Path(min_length=1, max_length=300)],
    user: CurrentUser,
    registries: RegistriesDep,
) -> Response:
    await registries.delete(user, registry)
    return Response(status_code=204)
