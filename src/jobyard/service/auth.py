"""Users and tokens: bootstrap the admin token, turn a bearer token into a User, and let admins
(and users, for their own tokens) manage them. Tokens are stored as SHA-256 hashes only."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from jobyard.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from jobyard.store import users as u
from jobyard.store.db import Database
from jobyard.store.users import TokenInfo, User, UserInfo

__all__ = ["AuthService", "NewToken", "TokenInfo", "User", "UserInfo"]

# A token is looked up at most this often; a revoke or a user's removal clears the cache.
_CACHE_SECONDS = 30.0
_CACHE_MAX = 10_000


class NewToken:
    """A token just made: the only time its value is seen."""

    def __init__(self, info: TokenInfo, token: str) -> None:
        self.info = info
        self.token = token

    def __repr__(self) -> str:  # never the token itself
        return f"NewToken(id={self.info.id}, user={self.info.user!r})"


class AuthService:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._cache: dict[str, tuple[User, float]] = {}

    def bootstrap_admin(self, token_path: Path) -> None:
        """Make sure an admin exists and `token_path` (mode 0600) holds a valid admin token."""
        if token_path.exists():
            existing = token_path.read_text().strip()
            now = self._clock()
            user = (
                self._db.read_sync(lambda c: u.user_for_token(c, existing, now))
                if existing
                else None
            )
            if user is not None and user.is_admin:
                return
        token = new_token()
        now = self._clock()

        def create(conn: Connection) -> None:
            admin = u.ensure_user(conn, "admin", is_admin=True, now=now)
            u.add_token(conn, admin, token, name="bootstrap", now=now)

        self._db.write_sync(create)
        _write_secret(token_path, token)

    # ---- authentication -----------------------------------------------------------------------

    async def authenticate(self, token: str | None) -> User:
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        key = u.hash_token(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        now = self._clock()
        found = await self._db.read(lambda c: u.token_owner(c, token, now))
        if found is None:
            self._cache.pop(key, None)
            raise Unauthorized("invalid token")
        user, expires_at = found
        keep = _CACHE_SECONDS if expires_at is None else min(_CACHE_SECONDS, expires_at - now)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (user, time.monotonic() + keep)
        return user

    def forget_cached(self) -> None:
        """Drop every cached authentication: the next request of each token is checked again."""
        self._cache.clear()

    # ---- users --------------------------------------------------------------------------------

    async def create_user_token(self, name: str, *, is_admin: bool = False) -> str:
        """A user (made if missing) and a new token of theirs. Kept for callers that only
        need the token; `add_user` refuses an existing name."""
        token, now = new_token(), self._clock()

        def create(conn: Connection) -> None:
            user = u.ensure_user(conn, name, is_admin=is_admin, now=now)
            u.add_token(conn, user, token, name="api", now=now)

        await self._db.write(create)
        return token

    async def add_user(self, caller: User, name: str, *, is_admin: bool = False) -> NewToken:
        """Admin only: a new user and their first token."""
        _require_admin(caller, "create users")
        token, now = new_token(), self._clock()

        def create(conn: Connection) -> TokenInfo:
            if u.find_user(conn, name) is not None:
                raise Conflict(f"user {name!r} already exists", field="name")
            if u.owns_jobs(conn, name):  # a removed user's: the new one must not inherit them
                raise Conflict(
                    f"the name {name!r} still owns the jobs of a removed user; delete those "
                    "jobs first, or choose another name",
                    field="name",
                )
            user = u.insert_user(conn, name, is_admin=is_admin, now=now)
            token_id = u.add_token(conn, user, token, name="initial", now=now)
            return TokenInfo(token_id, name, "initial", now, None, None)

        try:
            info = await self._db.write(create)
        except IntegrityError:  # made at the same moment by another request
            raise Conflict(f"user {name!r} already exists", field="name") from None
        return NewToken(info, token)

    async def list_users(self, caller: User) -> list[UserInfo]:
        _require_admin(caller, "list users")
        return await self._db.read(u.list_users)

    async def remove_user(self, caller: User, name: str) -> None:
        """Admin only: the user and their tokens go (their jobs stay, seen by admins)."""
        _require_admin(caller, "remove users")

        def remove(conn: Connection) -> None:
            user = u.find_user(conn, name)
            if user is None:
                raise NotFound(f"user {name!r} not found", field="name")
            if user.is_admin and u.count_admins(conn) <= 1:
                raise Conflict(f"user {name!r} is the last admin", field="name")
            u.delete_user(conn, user.id)

        await self._db.write(remove)
        self.forget_cached()

    # ---- tokens -------------------------------------------------------------------------------

    async def create_token(
        self,
        caller: User,
        *,
        user: str | None = None,
        name: str = "",
        expires_at: float | None = None,
    ) -> NewToken:
        """A new token for `user` (default: the caller). Only admins make tokens for others."""
        owner = user or caller.name
        if owner != caller.name:
            _require_admin(caller, "create tokens for other users")
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput("expires_at: must be in the future", field="expires_at")
        token = new_token()

        def create(conn: Connection) -> TokenInfo:
            found = u.find_user(conn, owner)
            if found is None:
                raise NotFound(f"user {owner!r} not found", field="user")
            token_id = u.add_token(conn, found, token, name=name, now=now, expires_at=expires_at)
            return TokenInfo(token_id, owner, name, now, expires_at, None)

        return NewToken(await self._db.write(create), token)

    async def list_tokens(self, caller: User, *, user: str | None = None) -> list[TokenInfo]:
        """An admin sees every token (or `user`'s); anyone else only their own."""
        scope = user if caller.is_admin else caller.name
        if not caller.is_admin and user not in (None, caller.name):
            return []
        return await self._db.read(lambda c: u.list_tokens(c, scope))

    async def revoke_token(self, caller: User, token_id: int) -> TokenInfo:
        """Revoke a token at once (also in this server's cache). Another user's token is
        reported as not found."""
        scope = None if caller.is_admin else caller.name
        now = self._clock()

        def revoke(conn: Connection) -> TokenInfo:
            found = u.get_token(conn, token_id, scope)
            if found is None:
                raise NotFound(f"token {token_id} not found", field="token")
            u.revoke_token(conn, token_id, now)
            return u.get_token(conn, token_id, scope) or found

        info = await self._db.write(revoke)
        self.forget_cached()
        return info


def _require_admin(caller: User, what: str) -> None:
    if not caller.is_admin:
        raise Forbidden(f"only an admin can {what}")


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
