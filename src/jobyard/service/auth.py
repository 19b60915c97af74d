"""Tokens: bootstrap the admin token, and turn a bearer token into a User."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from sqlalchemy import Connection

from jobyard.errors import Unauthorized
from jobyard.store import users as u
from jobyard.store.db import Database
from jobyard.store.users import User

__all__ = ["AuthService", "User"]

_CACHE_SECONDS = 30.0


class AuthService:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[str, tuple[User, float]] = {}

    def bootstrap_admin(self, token_path: Path) -> None:
        """Make sure an admin exists and `token_path` (mode 0600) holds a valid admin token."""
        if token_path.exists():
            existing = token_path.read_text().strip()
            user = self._db.read_sync(lambda c: u.user_for_token(c, existing)) if existing else None
            if user is not None and user.is_admin:
                return
        token = new_token()
        now = time.time()

        def create(conn: Connection) -> None:
            admin = u.ensure_user(conn, "admin", is_admin=True, now=now)
            u.add_token(conn, admin, token, name="bootstrap", now=now)

        self._db.write_sync(create)
        _write_secret(token_path, token)

    async def create_user_token(self, name: str, *, is_admin: bool = False) -> str:
        token, now = new_token(), time.time()

        def create(conn: Connection) -> None:
            user = u.ensure_user(conn, name, is_admin=is_admin, now=now)
            u.add_token(conn, user, token, name="api", now=now)

        await self._db.write(create)
        return token

    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        key = u.hash_token(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        user = await self._db.read(lambda c: u.user_for_token(c, token))
        if user is None:
            raise Unauthorized("invalid token")
        self._cache[key] = (user, time.monotonic() + _CACHE_SECONDS)
        return user


def new_token() -> str:
    return "jy_" + secrets.token_urlsafe(32)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
