"""Single-use, expiring web terminal tokens, in the database (store/terminals.py).

A face hands out a URL carrying a token after checking the caller may open a shell into that
task; the WebSocket authenticates with that token only. The token is bound to the user, job
and task and expires (`terminal_token_ttl_seconds`, 60 s). It lives in the database so that
any worker of `jobyard server --workers`, or any server of a PostgreSQL database on the
machine, can redeem it (once: the row is deleted as it is read)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from functools import partial

from jobyard.store import terminals as store
from jobyard.store.db import Database
from jobyard.store.terminals import StoredGrant as Grant
from jobyard.store.users import User

__all__ = ["Grant", "TerminalTokens"]


class TerminalTokens:
    def __init__(
        self, db: Database, ttl: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self.ttl = ttl
        self._clock = clock  # wall time: another process may check the expiry

    async def issue(self, user: User, job: str, task: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        grant = Grant(user, job, task, now + self.ttl)
        await self._db.write(partial(store.add, token=token, grant=grant, now=now))
        return token

    async def redeem(self, token: str) -> Grant | None:
        """The grant of a valid token, which is used up; None if unknown, used or expired."""
        if not token:
            return None
        return await self._db.write(partial(store.take, token=token, now=self._clock()))
