"""The gateway: keeps one listener open per leased port, in the server's own event loop.

When a job changes (the change feed: it may have become live or ended), at most every
`gateway_sweep_seconds`, and after the feed's recheck otherwise (another server's changes), it
asks AccessService to sweep (lease ports to jobs that became live, return those of jobs that
ended), then opens the listeners of new leases and closes those of returned ones, which ends
their sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from jobyard.config import Settings
from jobyard.gateway.http import HttpListener
from jobyard.gateway.ssh import SshListener, load_host_key
from jobyard.model.job import PortProtocol
from jobyard.service.access import AccessService, Lease, Watch

log = logging.getLogger("jobyard.gateway")


class _Listener(Protocol):
    lease: Lease

    async def start(self, host: str) -> None: ...

    async def close(self) -> None: ...


class Gateway:
    def __init__(self, access: AccessService, settings: Settings) -> None:
        self._access = access
        self._settings = settings
        self._open: dict[int, _Listener] = {}
        self._failed: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._watching = contextlib.ExitStack()
        self._host_key = load_host_key(settings.ssh_host_key_path)
        access.host_key = self._host_key.export_public_key("openssh").decode().strip()

    @property
    def ports(self) -> list[int]:
        """The gateway ports listened on now."""
        return sorted(self._open)

    async def start(self) -> None:
        if not self._access.supported():
            log.info("the executor cannot reach jobs' ports: the gateway is off")
            return
        changed = self._watching.enter_context(self._access.watch())  # before the first sweep
        await self.tick()
        self._task = asyncio.create_task(self._run(changed), name="jobyard-gateway")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._watching.close()
        for port in list(self._open):
            await self._close(port)

    async def _run(self, changed: Watch) -> None:
        while True:
            await asyncio.sleep(self._settings.gateway_sweep_seconds)  # at most this often
            await changed.wait()
            try:
                await self.tick()
            except Exception:  # one bad pass must not end the gateway
                log.exception("gateway sweep failed")

    async def tick(self) -> None:
        """One pass: sweep the leases, then open and close listeners to match."""
        wanted = {lease.port: lease for lease in await self._access.sweep()}
        for port, listener in list(self._open.items()):
            if wanted.get(port) != listener.lease:
                await self._close(port)
        self._failed &= set(wanted)
        for port, lease in wanted.items():
            if port not in self._open:
                await self._listen(lease)

    async def _listen(self, lease: Lease) -> None:
        listener: _Listener
        if lease.protocol is PortProtocol.SSH:
            listener = SshListener(lease, self._access, self._host_key)
        else:
            listener = HttpListener(lease, self._access.token_ok)
        try:
            await listener.start(self._settings.host)
        except OSError as exc:
            if lease.port not in self._failed:
                log.warning("gateway port %d (job %d): %s", lease.port, lease.job_id, exc)
                self._failed.add(lease.port)
            return
        self._open[lease.port] = listener

    async def _close(self, port: int) -> None:
        listener = self._open.pop(port)
        try:
            await listener.close()
        except Exception:
            log.exception("closing gateway port %d", port)
