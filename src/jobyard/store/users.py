"""Users and their API tokens. Only a token's SHA-256 is stored, never the token."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from jobyard.model import JobState
from jobyard.store.tables import JobRow, RegistryCredentialRow, TokenRow, UserRow

_LIVE = [state.value for state in JobState if not state.is_terminal()]


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    is_admin: bool
    created_at: float
    tokens: int


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never the token itself, nor its hash."""

    id: int
    user: str
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_user(conn: Connection, name: str, *, is_admin: bool, now: float) -> User:
    """The user `name`, made if missing. Two servers starting together on one PostgreSQL
    database both find no admin and both insert one: the second insert fails on the unique
    name once the first commits, and then reads the user the first one made."""
    row = conn.execute(select(UserRow).where(UserRow.name == name)).first()
    if row is None:
        try:
            with conn.begin_nested():
                return insert_user(conn, name, is_admin=is_admin, now=now)
        except IntegrityError:
            row = conn.execute(select(UserRow).where(UserRow.name == name)).one()
    return User(id=row.id, name=row.name, is_admin=row.is_admin)


def insert_user(conn: Connection, name: str, *, is_admin: bool, now: float) -> User:
    """A new user; IntegrityError if the name is taken."""
    user_id = conn.execute(
        insert(UserRow).values(name=name, is_admin=is_admin, created_at=now).returning(UserRow.id)
    ).scalar_one()
    return User(id=int(user_id), name=name, is_admin=is_admin)


def find_user(conn: Connection, name: str) -> User | None:
    row = conn.execute(select(UserRow).where(UserRow.name == name)).first()
    return None if row is None else User(id=row.id, name=row.name, is_admin=row.is_admin)


def list_users(conn: Connection) -> list[UserInfo]:
    tokens = (
        select(TokenRow.user_id, func.count().label("n"))
        .where(TokenRow.revoked_at.is_(None))
        .group_by(TokenRow.user_id)
        .subquery()
    )
    rows = conn.execute(
        select(UserRow, func.coalesce(tokens.c.n, 0).label("n"))
        .outerjoin(tokens, tokens.c.user_id == UserRow.id)
        .order_by(UserRow.name)
    )
    return [UserInfo(r.id, r.name, r.is_admin, r.created_at, int(r.n)) for r in rows]


def delete_user(conn: Connection, user_id: int) -> None:
    """The user and (by cascade, and explicitly for databases without it) their tokens and
    registry logins."""
    conn.execute(delete(TokenRow).where(TokenRow.user_id == user_id))
    conn.execute(delete(RegistryCredentialRow).where(RegistryCredentialRow.user_id == user_id))
    conn.execute(delete(UserRow).where(UserRow.id == user_id))


def count_admins(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).where(UserRow.is_admin.is_(True))).scalar_one())


def add_token(
    conn: Connection,
    user: User,
    token: str,
    *,
    name: str,
    now: float,
    expires_at: float | None = None,
) -> int:
    return int(
        conn.execute(
            insert(TokenRow)
            .values(
                user_id=user.id,
                token_hash=hash_token(token),
                name=name,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(TokenRow.id)
        ).scalar_one()
    )


def list_tokens(conn: Connection, user: str | None) -> list[TokenInfo]:
    """Every token (user None), or one user's; newest last."""
    stmt = (
        select(
            TokenRow.id,
            UserRow.name.label("user"),
            TokenRow.name,
            TokenRow.created_at,
            TokenRow.expires_at,
            TokenRow.revoked_at,
        )
        .join(UserRow, TokenRow.user_id == UserRow.id)
        .order_by(TokenRow.id)
    )
    if user is not None:
        stmt = stmt.where(UserRow.name == user)
    return [TokenInfo(*row) for row in conn.execute(stmt)]


def get_token(conn: Connection, token_id: int, user: str | None) -> TokenInfo | None:
    """One token by id; with `user`, only if it is that user's."""
    found = [t for t in list_tokens(conn, user) if t.id == token_id]
    return found[0] if found else None


def revoke_token(conn: Connection, token_id: int, now: float) -> None:
    conn.execute(
        update(TokenRow)
        .where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def user_for_token(conn: Connection, token: str, now: float | None = None) -> User | None:
    """The user a token authenticates, unless it was revoked or (given `now`) has expired."""
    found = token_owner(conn, token, now)
    return None if found is None else found[0]


def token_owner(
    conn: Connection, token: str, now: float | None
) -> tuple[User, float | None] | None:
    """(user, the token's expiry) for a live token; None if unknown, revoked or expired."""
    stmt = (
        select(UserRow.id, UserRow.name, UserRow.is_admin, TokenRow.expires_at)
        .join(TokenRow, TokenRow.user_id == UserRow.id)
        .where(TokenRow.token_hash == hash_token(token), TokenRow.revoked_at.is_(None))
    )
    if now is not None:
        stmt = stmt.where(or_(TokenRow.expires_at.is_(None), TokenRow.expires_at > now))
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return User(id=row.id, name=row.name, is_admin=row.is_admin), row.expires_at


def has_admin(conn: Connection) -> bool:
    return (
        conn.execute(select(UserRow.id).where(UserRow.is_admin.is_(True)).limit(1)).first()
        is not None
    )


def count_live_jobs(conn: Connection, owner: str, states: Sequence[str] = _LIVE) -> int:
    """How many of `owner`'s jobs are not finished (the per-user live-job limit counts these)."""
    return int(
        conn.execute(
            select(func.count()).where(JobRow.owner == owner, JobRow.state.in_(list(states)))
        ).scalar_one()
    )


def owns_jobs(conn: Connection, owner: str) -> bool:
    """Whether any job, finished or not, belongs to `owner`."""
    found = conn.execute(select(JobRow.id).where(JobRow.owner == owner).limit(1)).first()
    return found is not None
