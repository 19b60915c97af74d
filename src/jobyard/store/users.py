"""Users and their API tokens. Only a token's SHA-256 is stored, never the token."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Connection, insert, select

from jobyard.store.tables import TokenRow, UserRow


@dataclass(frozen=True)
class User:
    id: int
    name: str
    is_admin: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_user(conn: Connection, name: str, *, is_admin: bool, now: float) -> User:
    row = conn.execute(select(UserRow).where(UserRow.name == name)).first()
    if row is None:
        user_id = conn.execute(
            insert(UserRow)
            .values(name=name, is_admin=is_admin, created_at=now)
            .returning(UserRow.id)
        ).scalar_one()
        return User(id=int(user_id), name=name, is_admin=is_admin)
    return User(id=row.id, name=row.name, is_admin=row.is_admin)


def add_token(conn: Connection, user: User, token: str, *, name: str, now: float) -> None:
    conn.execute(
        insert(TokenRow).values(
            user_id=user.id, token_hash=hash_token(token), name=name, created_at=now
        )
    )


def user_for_token(conn: Connection, token: str) -> User | None:
    row = conn.execute(
        select(UserRow.id, UserRow.name, UserRow.is_admin)
        .join(TokenRow, TokenRow.user_id == UserRow.id)
        .where(TokenRow.token_hash == hash_token(token))
    ).first()
    return None if row is None else User(id=row.id, name=row.name, is_admin=row.is_admin)


def has_admin(conn: Connection) -> bool:
    return (
        conn.execute(select(UserRow.id).where(UserRow.is_admin.is_(True)).limit(1)).first()
        is not None
    )
