"""Users' logins to container registries, for the pulls of their jobs' images.

A user stores one login (username and password) per registry host; a listing shows the host
and the username, never the password, and no one sees or uses another user's. The scheduler
reads the job owner's logins as it starts a container job (scheduler/reconciler.py) and the
executor writes the one for the image's registry to a private auth file for that pull alone.
Like the jobs' own secrets (store/secrets.py) they are kept in the database as given: whoever
can read the database can read them, as with those.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Connection

from jobyard.errors import InvalidInput, NotFound
from jobyard.model.registry import normalize_registry, registry_problem
from jobyard.service.auth import User
from jobyard.store import registries as store
from jobyard.store.db import Database

MAX_LOGINS = 64  # per user


@dataclass(frozen=True)
class RegistryCredential:
    """What is shown of a stored login: the registry and the username, never the password."""

    registry: str
    username: str
    created_at: float
    updated_at: float


class RegistryService:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def put(
        self, user: User, registry: str, username: str, password: str
    ) -> tuple[RegistryCredential, bool]:
        """Store (or replace) the user's login to `registry`; True: there was none before."""
        host = _host(registry)
        if not username or ":" in username or any(ord(c) < 32 or ord(c) == 127 for c in username):
            raise InvalidInput(
                "username: must be non-empty, without ':' or a control character",
                field="username",
            )
        if not password or "\x00" in password:
            raise InvalidInput("password: must be non-empty, without NUL", field="password")
        now = self._clock()
        row, new = await self._db.write(
            lambda c: self._put(c, user.id, host, username, password, now)
        )
        return RegistryCredential(*row), new

    @staticmethod
    def _put(
        conn: Connection, user_id: int, host: str, username: str, password: str, now: float
    ) -> tuple[store.CredentialRow, bool]:
        if store.count_of(conn, user_id) >= MAX_LOGINS and not any(
            row.registry == host for row in store.list_of(conn, user_id)
        ):
            raise InvalidInput(f"at most {MAX_LOGINS} registry logins per user", field="registry")
        return store.put(conn, user_id, host, username, password, now)

    async def list(self, user: User) -> list[RegistryCredential]:
        rows = await self._db.read(partial(store.list_of, user_id=user.id))
        return [RegistryCredential(*row) for row in rows]

    async def delete(self, user: User, registry: str) -> None:
        host = normalize_registry(registry)
        if registry_problem(host) is None and await self._db.write(
            partial(store.remove, user_id=user.id, registry=host)
        ):
            return
        raise NotFound(f"no login to the registry {host[:80]!r}", field="registry")


def _host(registry: str) -> str:
    host = normalize_registry(registry)
    problem = registry_problem(host)
    if problem is not None:
        raise InvalidInput(f"registry: {problem}", field="registry")
    return host


__all__ = ["MAX_LOGINS", "RegistryCredential", "RegistryService"]
