"""Users' registry logins (`registry_credentials`): one per user and registry host.

Listing never reads a password; only `logins_of_owner` does, for the pull of a job's image.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import SecretStr
from sqlalchemy import Connection, delete, insert, select, update

from jobyard.model.registry import RegistryLogin
from jobyard.store.tables import RegistryCredentialRow, UserRow

_ROW = RegistryCredentialRow


class CredentialRow(NamedTuple):
    """What a listing shows of a login: never its password."""

    registry: str
    username: str
    created_at: float
    updated_at: float


def put(
    conn: Connection, user_id: int, registry: str, username: str, password: str, now: float
) -> tuple[CredentialRow, bool]:
    """Store the user's login to `registry`, replacing the one there was; True: it is new."""
    found = conn.execute(
        select(_ROW.created_at).where(_ROW.user_id == user_id, _ROW.host == registry)
    ).first()
    values = {"username": username, "password": password, "updated_at": now}
    if found is None:
        conn.execute(insert(_ROW).values(user_id=user_id, host=registry, created_at=now, **values))
        return CredentialRow(registry, username, now, now), True
    conn.execute(
        update(_ROW).where(_ROW.user_id == user_id, _ROW.host == registry).values(**values)
    )
    return CredentialRow(registry, username, float(found[0]), now), False


def list_of(conn: Connection, user_id: int) -> list[CredentialRow]:
    rows = conn.execute(
        select(_ROW.host, _ROW.username, _ROW.created_at, _ROW.updated_at)
        .where(_ROW.user_id == user_id)
        .order_by(_ROW.host)
    )
    return [CredentialRow(*row) for row in rows]


def remove(conn: Connection, user_id: int, registry: str) -> bool:
    result = conn.execute(delete(_ROW).where(_ROW.user_id == user_id, _ROW.host == registry))
    return bool(result.rowcount)


def count_of(conn: Connection, user_id: int) -> int:
    return len(conn.execute(select(_ROW.id).where(_ROW.user_id == user_id)).all())


def logins_of_owner(conn: Connection, owner: str) -> list[RegistryLogin]:
    """The logins of the user called `owner` (a job's owner), passwords included."""
    rows = conn.execute(
        select(_ROW.host, _ROW.username, _ROW.password)
        .join(UserRow, UserRow.id == _ROW.user_id)
        .where(UserRow.name == owner)
        .order_by(_ROW.host)
    )
    return [RegistryLogin(registry=r, username=u, password=SecretStr(p)) for r, u, p in rows]
