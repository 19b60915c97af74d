"""Interactive access to running jobs: gateway port leases, URLs, credentials, public keys.

A job that declares ports holds one gateway port per declared port while it is live; `sweep`
(run by the gateway when jobs change, at most every `gateway_sweep_seconds`) leases ports for
jobs that became live and returns those of jobs that ended. See docs/access.md."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncssh
from sqlalchemy import Connection

from jobyard.config import Settings
from jobyard.errors import InvalidInput, NotFound
from jobyard.executors.base import Shell, ShellCommand, TerminalSize
from jobyard.model import LIVE_STATES, EventType, Job
from jobyard.model.job import Lease, PortProtocol, PortSpec
from jobyard.service.auth import User
from jobyard.service.jobs import JobService
from jobyard.store import gateway as g, secrets as store_secrets
from jobyard.store.db import Database
from jobyard.store.feed import Watch

log = logging.getLogger("jobyard.access")

_LIVE = sorted(s.value for s in LIVE_STATES)  # a job whose ports may be open
MAX_KEYS = 64


@dataclass(frozen=True)
class JobAccess:
    """What the owner (or an admin) needs to get into a job."""

    urls: dict[str, list[str]]
    ssh_user: str
    ssh_password: str | None
    token: str | None
    host_key: str = ""


@dataclass(frozen=True)
class PublicKey:
    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: float


@dataclass
class _Secrets:
    password: str = ""
    token: str = ""
    ports: set[int] = field(default_factory=set)


def _bindable(host: str) -> Callable[[int], bool]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def probe(port: int) -> bool:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
        return True

    return probe


def _same(secret: str, given: str) -> bool:
    return bool(secret and given) and hmac.compare_digest(secret.encode(), given.encode())


def _key_body(text: str) -> str:
    """'ssh-ed25519 AAAA...' without the comment: what two keys are compared by."""
    return " ".join(text.split()[:2])


class AccessService:
    def __init__(
        self,
        db: Database,
        jobs: JobService,
        settings: Settings,
        *,
        probe: Callable[[int], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._jobs = jobs
        self._settings = settings
        self._probe = probe or _bindable(settings.host)
        self._clock = clock
        self._range = settings.gateway_ports
        self._cursor = 0
        self._secrets: dict[int, _Secrets] = {}
        self._lock: asyncio.Lock | None = None
        self.host_key = ""  # the gateway's public host key (OpenSSH), set when it starts

    # ---- leases -------------------------------------------------------------------------------

    def supported(self) -> bool:
        return self._jobs.supports("ports")

    def watch(self) -> AbstractContextManager[Watch]:
        """Be told of committed job changes: a job may have become live or ended (the gateway
        sweeps then, rather than on a timer)."""
        return self._jobs.watch()

    async def sweep(self) -> list[Lease]:
        """Return the leases of ended jobs, lease ports to live jobs without them, and give
        every lease now held. One sweep at a time (the gateway's loop, or a face asking)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if await self._db.read(lambda c: g.has_ended_leases(c, _LIVE)):
                released = await self._db.write(lambda c: g.release_ended(c, _LIVE))
                log.debug("returned %d gateway ports", released)
            needing = await self._db.read(lambda c: g.jobs_needing_leases(c, _LIVE))
            if needing:
                await self._db.write(lambda c: self._lease(c, needing))
            rows = await self._db.read(lambda c: g.list_leases(c))
            await self._remember_secrets(rows)
            return rows

    def _lease(self, conn: Connection, needing: list[tuple[int, dict[str, Any]]]) -> None:
        taken = g.leased_ports(conn)
        rows: list[dict[str, Any]] = []
        now = self._clock()
        for job_id, spec in needing:
            ports = [PortSpec.model_validate(item) for item in spec.get("ports") or []]
            picked = self._pick(taken, len(ports))
            if picked is None:
                log.warning("job %d waits for gateway ports: the range is exhausted", job_id)
                continue
            taken.update(picked)
            rows.extend(
                {
                    "port": port,
                    "job_id": job_id,
                    "task_index": 0,
                    "target_port": item.port,
                    "protocol": item.protocol.value,
                    "allocated_at": now,
                }
                for port, item in zip(picked, ports, strict=True)
            )
        g.insert_leases(conn, rows)

    def _pick(self, taken: set[int], count: int) -> list[int] | None:
        """`count` free ports of the range, going round from where the last pick stopped (so a
        port just returned is not lent again at once); None if there are not enough."""
        picked: list[int] = []
        size = len(self._range)
        for step in range(size):
            port = self._range[(self._cursor + step) % size]
            if port not in taken and self._probe(port):
                picked.append(port)
                if len(picked) == count:
                    self._cursor = (self._cursor + step + 1) % size
                    return picked
        return None

    async def _remember_secrets(self, rows: list[Lease]) -> None:
        """Keep the secrets and declared ports of the jobs holding leases, and only theirs."""
        ports: dict[int, set[int]] = {}
        for row in rows:
            ports.setdefault(row.job_id, set()).add(row.target_port)
        for gone in set(self._secrets) - set(ports):
            del self._secrets[gone]
        for job_id in set(ports) - set(self._secrets):
            found = await self._secrets_of(job_id)
            self._secrets[job_id] = _Secrets(
                password=found.get("ssh_password", ""),
                token=found.get("port_token", ""),
                ports=ports[job_id],
            )

    async def _secrets_of(self, job_id: int) -> dict[str, str]:
        return await self._db.read(partial(store_secrets.get_secrets, job_id=job_id))

    # ---- URLs and credentials -----------------------------------------------------------------

    @property
    def url_host(self) -> str:
        settings = self._settings
        if settings.gateway_host:
            return settings.gateway_host
        if settings.host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding
            return settings.node_name
        return f"[{settings.host}]" if ":" in settings.host else settings.host

    async def urls(self, job: Job) -> dict[str, list[str]]:
        """The URLs of a job the caller may see (owner or admin), token included; {} while
        nothing is leased (queued, finished, no ports)."""
        return (await self.urls_many([job])).get(job.id, {})

    async def urls_many(self, jobs: Sequence[Job]) -> dict[int, dict[str, list[str]]]:
        wanted = [job.id for job in jobs if job.spec.ports and job.state in LIVE_STATES]
        if not wanted:
            return {}
        rows = await self._db.read(lambda c: g.list_leases(c, wanted))
        if {row.job_id for row in rows} != set(wanted):
            await self.sweep()  # became live since the last sweep: lease now
            rows = await self._db.read(lambda c: g.list_leases(c, wanted))
        tokens = await self._tokens({row.job_id for row in rows})
        out: dict[int, dict[str, list[str]]] = {}
        for row in rows:
            url = self._url(row, tokens.get(row.job_id, ""))
            out.setdefault(row.job_id, {})[f"port_{row.target_port}"] = [url]
        return out

    async def _tokens(self, job_ids: set[int]) -> dict[int, str]:
        out = {j: s.token for j, s in self._secrets.items() if j in job_ids}
        for job_id in job_ids - set(out):
            out[job_id] = (await self._secrets_of(job_id)).get("port_token", "")
        return out

    def _url(self, lease: Lease, token: str) -> str:
        if lease.protocol is PortProtocol.SSH:
            return f"ssh://{self.url_host}:{lease.port}"
        return f"http://{self.url_host}:{lease.port}/?token={token}"

    async def access(self, user: User, ref: str) -> JobAccess:
        """URLs and credentials of the user's job (404 for another's, as everywhere)."""
        job = await self._jobs.get(user, ref)
        found = await self._jobs.secrets(user, ref)
        return JobAccess(
            urls=await self.urls(job),
            ssh_user=job.display_id,
            ssh_password=found.get("ssh_password"),
            token=found.get("port_token"),
            host_key=self.host_key,
        )

    # ---- what the gateway checks --------------------------------------------------------------

    def token_ok(self, job_id: int, token: str) -> bool:
        held = self._secrets.get(job_id)
        return held is not None and _same(held.token, token)

    def password_ok(self, job_id: int, password: str) -> bool:
        held = self._secrets.get(job_id)
        return held is not None and _same(held.password, password)

    def may_forward(self, job_id: int, port: int) -> bool:
        """`ssh -L` reaches only the job's own declared ports."""
        held = self._secrets.get(job_id)
        return held is not None and port in held.ports

    async def key_ok(self, owner: str, public_key: str) -> bool:
        """Whether `public_key` (OpenSSH text) is one the job's owner registered."""
        body = _key_body(public_key)
        keys = await self._db.read(lambda c: g.keys_of_user_named(c, owner))
        return any(hmac.compare_digest(_key_body(k), body) for k in keys)

    async def shell(
        self, lease: Lease, task: str | None, command: str | None
    ) -> tuple[Job, ShellCommand]:
        """A shell (or `command`) in a running task of the lease's job, for a session that
        authenticated with the job's own credentials."""
        owner = User(id=0, name=lease.owner, is_admin=False)
        return await self._jobs.shell(owner, str(lease.job_id), task, command)

    async def open_shell(
        self,
        lease: Lease,
        task: str | None,
        command: str | None,
        *,
        size: TerminalSize | None = None,
        term: str | None = None,
    ) -> tuple[Job, Shell]:
        """Start that shell (or `command`): under a pseudo-terminal of `size`, else with pipes."""
        owner = User(id=0, name=lease.owner, is_admin=False)
        return await self._jobs.open_shell(
            owner, str(lease.job_id), task, command, size=size, term=term
        )

    async def record_session(self, job_id: int, message: str) -> None:
        await self._jobs.record_event(job_id, EventType.NORMAL, "SSHSession", message)

    # ---- public keys --------------------------------------------------------------------------

    async def add_key(self, user: User, name: str, public_key: str) -> PublicKey:
        try:
            key = asyncssh.import_public_key(public_key.strip())
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise InvalidInput(
                f"public_key: not an OpenSSH public key ({exc})", field="public_key"
            ) from None
        text = key.export_public_key("openssh").decode().strip()
        fingerprint = key.get_fingerprint("sha256")
        now = self._clock()
        existing = await self.list_keys(user)
        if len(existing) >= MAX_KEYS:
            raise InvalidInput(f"at most {MAX_KEYS} keys per user", field="public_key")
        if any(_key_body(k.public_key) == _key_body(text) for k in existing):
            raise InvalidInput("this key is already registered", field="public_key")
        key_id = await self._db.write(
            lambda c: g.add_key(c, user.id, name, _key_body(text), fingerprint, now)
        )
        return PublicKey(key_id, name, _key_body(text), fingerprint, now)

    async def list_keys(self, user: User) -> list[PublicKey]:
        rows = await self._db.read(lambda c: g.list_keys(c, user.id))
        return [PublicKey(r.id, r.name, r.public_key, r.fingerprint, r.created_at) for r in rows]

    async def delete_key(self, user: User, key_id: int) -> None:
        if not await self._db.write(lambda c: g.delete_key(c, user.id, key_id)):
            raise NotFound(f"key {key_id} not found", field="key")


__all__ = [
    "LIVE_STATES",
    "AccessService",
    "JobAccess",
    "Lease",
    "PublicKey",
    "Shell",
    "ShellCommand",
    "TerminalSize",
    "Watch",
]
