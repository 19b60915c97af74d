"""Users and tokens of the native face: /api/v1/users and /api/v1/tokens (thin handlers).

Admins manage every user and token; anyone may make, list and revoke their own tokens.
A token's value appears once, in the answer that created it; listings never show it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field, model_validator

from jobyard.api.bounds import MAX_ID
from jobyard.api.deps import AuthDep, CurrentUser
from jobyard.api.errors import NATIVE_ERRORS, described
from jobyard.api.strict import RequestModel
from jobyard.service.auth import NewToken, TokenInfo, UserInfo

router = APIRouter(prefix="/api/v1", responses=NATIVE_ERRORS)

UserName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
TokenName = Annotated[str, Field(max_length=128, pattern=r"^[^\x00-\x1f]*$")]
_MAX_EXPIRY = 10 * 365 * 86400.0
_ADMIN: dict[int | str, dict[str, Any]] = {403: described("admins only")}


class UserCreate(RequestModel):
    name: UserName
    admin: bool = False


class UserCreated(BaseModel):
    """The new user and their first token (shown only here)."""

    name: str
    admin: bool = False
    token: str
    token_id: int


class UserPublic(BaseModel):
    name: str
    admin: bool
    created_at: datetime
    tokens: int = Field(description="tokens not revoked")


class UserList(BaseModel):
    items: list[UserPublic]


class TokenCreate(RequestModel):
    user: UserName | None = Field(default=None, description="whose token (default: yours)")
    name: TokenName = ""
    expires_at: datetime | None = Field(default=None, description="when it stops working")
    expires_in: float | None = Field(
        default=None, gt=0, le=_MAX_EXPIRY, description="or: seconds from now"
    )

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenCreate:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        return self

    def expiry(self, now: float) -> float | None:
        if self.expires_in is not None:
            return now + self.expires_in
        if self.expires_at is None:
            return None
        moment = self.expires_at
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class TokenPublic(BaseModel):
    id: int
    user: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the token itself: shown only in this answer")


class TokenList(BaseModel):
    items: list[TokenPublic]


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _token_public(info: TokenInfo) -> TokenPublic:
    return TokenPublic(
        id=info.id,
        user=info.user,
        name=info.name,
        created_at=datetime.fromtimestamp(info.created_at, UTC),
        expires_at=_time(info.expires_at),
        revoked_at=_time(info.revoked_at),
    )


def _user_public(info: UserInfo) -> UserPublic:
    created = datetime.fromtimestamp(info.created_at, UTC)
    return UserPublic(name=info.name, admin=info.is_admin, created_at=created, tokens=info.tokens)


def _created(made: NewToken) -> TokenCreated:
    return TokenCreated(**_token_public(made.info).model_dump(), token=made.token)


# ---- users ------------------------------------------------------------------------------------


@router.post(
    "/users",
    tags=["users"],
    status_code=201,
    response_model=UserCreated,
    responses={**_ADMIN, 409: described("the name is taken")},
)
async def create_user(body: UserCreate, user: CurrentUser, auth: AuthDep) -> UserCreated:
    made = await auth.add_user(user, body.name, is_admin=body.admin)
    return UserCreated(name=body.name, admin=body.admin, token=made.token, token_id=made.info.id)


@router.get("/users", tags=["users"], response_model=UserList, responses=_ADMIN)
async def list_users(user: CurrentUser, auth: AuthDep) -> UserList:
    return UserList(items=[_user_public(info) for info in await auth.list_users(user)])


@router.delete(
    "/users/{name}",
    tags=["users"],
    status_code=204,
    responses={**_ADMIN, 404: described("no such user"), 409: described("the last admin")},
)
async def remove_user(
    name: Annotated[str, Path(max_length=64)], user: CurrentUser, auth: AuthDep
) -> Response:
    await auth.remove_user(user, name)
    return Response(status_code=204)


# ---- tokens -----------------------------------------------------------------------------------


@router.post(
    "/tokens",
    tags=["users"],
    status_code=201,
    response_model=TokenCreated,
    responses={**_ADMIN, 404: described("no such user")},
)
async def create_token(body: TokenCreate, user: CurrentUser, auth: AuthDep) -> TokenCreated:
    expires_at = body.expiry(time.time())
    made = await auth.create_token(user, user=body.user, name=body.name, expires_at=expires_at)
    return _created(made)


@router.get("/tokens", tags=["users"], response_model=TokenList)
async def list_tokens(
    user: CurrentUser,
    auth: AuthDep,
    owner: Annotated[str | None, Query(alias="user", max_length=64)] = None,
) -> TokenList:
    infos = await auth.list_tokens(user, user=owner)
    return TokenList(items=[_token_public(info) for info in infos])


@router.delete(
    "/tokens/{token_id}",
    tags=["users"],
    response_model=TokenPublic,
    responses={404: described("no such token (or not yours)")},
)
async def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, auth: AuthDep
) -> TokenPublic:
    return _token_public(await auth.revoke_token(user, token_id))
