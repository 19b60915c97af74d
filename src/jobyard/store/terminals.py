"""Web terminal tokens: issued by one process, redeemed (once) by whichever one the client's
WebSocket reaches. Only the token's SHA-256 is stored."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from jobyard.store.tables import TerminalTokenRow, UserRow
from jobyard.store.users import User, hash_token


@dataclass(frozen=True)
class StoredGrant:
    user: User
    job: str
    task: str
    expires_at: float


def add(conn: Connection, token: str, grant: StoredGrant, now: float) -> None:
    """Store the token's grant; drop every expired one on the way (they are few: 60 s each)."""
    conn.execute(delete(TerminalTokenRow).where(TerminalTokenRow.expires_at <= now))
    conn.execute(
        insert(TerminalTokenRow).values(
            token_hash=hash_token(token),
            user_id=grant.user.id,
            job=grant.job,
            task=grant.task,
            expires_at=grant.expires_at,
        )
    )


def take(conn: Connection, token: str, now: float) -> StoredGrant | None:
    """The token's grant, used up (deleted in the same statement, so two processes never both
    get it); None if unknown, used, expired, or its user is gone."""
    row = conn.execute(
        delete(TerminalTokenRow)
        .where(TerminalTokenRow.token_hash == hash_token(token))
        .returning(
            TerminalTokenRow.user_id,
            TerminalTokenRow.job,
            TerminalTokenRow.task,
            TerminalTokenRow.expires_at,
        )
    ).first()
    if row is None or row.expires_at <= now:
        return None
    user = conn.execute(select(UserRow).where(UserRow.id == row.user_id)).first()
    if user is None:
        return None
    found = User(id=user.id, name=user.name, is_admin=user.is_admin)
    return StoredGrant(found, row.job, row.task, row.expires_at)
