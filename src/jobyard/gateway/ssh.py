"""The SSH gateway: one asyncssh listener per leased SSH port.

The port names the job; the user name names its task (the display id for the first task, a
task name, or an index). A session authenticates with the job's SSH password or a public key
its owner registered, then gets a shell (with a pseudo-terminal when asked), a command, SFTP
chrooted to the task's working directory, or `-L` forwarding to the job's own ports."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import asyncssh

from jobyard.errors import JobyardError
from jobyard.gateway.sessions import open_for, relay
from jobyard.service.access import AccessService, Lease, Shell

log = logging.getLogger("jobyard.gateway.ssh")

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The gateway's host key: made once (ed25519), kept in the data directory, mode 0600.
    Written aside and linked into place, so processes that start together (the workers of
    `jobyard server --workers`) all end up with the one key, never a half-written file."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    aside = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    try:
        os.link(aside, path)
    except FileExistsError:  # another process made it first: theirs is the key
        return asyncssh.read_private_key(str(path))
    finally:
        aside.unlink()
    return key


def task_of_user(lease: Lease, username: str) -> tuple[bool, str | None]:
    """(whether the user name names a task, which: None for the first, a name or index)."""
    if username == lease.display_id:
        return True, None
    if username.startswith(f"{lease.display_id}-worker-") or username.isdigit():
        return True, username
    return False, None


class _Session(asyncssh.SSHServer):
    """One SSH connection to one job's port."""

    def __init__(self, listener: SshListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHServerConnection | None = None
        self.task: str | None = None
        self.peer = "?"
        self._opened: tuple[int, str] | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        conn.set_extra_info(jobyard_session=self)
        self._listener.connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 - asyncssh's API
        if self._conn is not None:
            self._listener.connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:  # noqa: ARG002
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        lease = self._listener.lease
        ok = self._listener.access.password_ok(lease.job_id, password)
        return ok and await self._admit(username, "password")

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        lease = self._listener.lease
        text = key.export_public_key("openssh").decode()
        ok = await self._listener.access.key_ok(lease.owner, text)
        return ok and await self._admit(username, f"public key {key.get_fingerprint('sha256')}")

    async def _admit(self, username: str, method: str) -> bool:
        """Credentials were right: the user name must name a running task of the job."""
        lease = self._listener.lease
        named, task = task_of_user(lease, username)
        if not named:
            return False
        try:
            job, shell = await self._listener.access.shell(lease, task, "true")
        except JobyardError as exc:
            log.info("ssh to job %s refused: %s", lease.display_id, exc.message)
            return False
        self.task = task
        if self._conn is not None:
            self._conn.set_extra_info(jobyard_cwd=shell.cwd)
        # Recorded once authentication completes: a public key is validated here before its
        # signature is checked, and anyone may know a public key.
        self._opened = (job.id, f"ssh session as {username} from {self.peer} ({method})")
        return True

    async def auth_completed(self) -> None:
        if self._opened is not None:
            await self._listener.access.record_session(*self._opened)

    def connection_requested(
        self,
        dest_host: str,
        dest_port: int,
        orig_host: str,  # noqa: ARG002 - asyncssh's API
        orig_port: int,  # noqa: ARG002
    ) -> Any:
        """`ssh -L`: only to the job's own declared ports, on its node."""
        lease = self._listener.lease
        allowed = dest_host in _LOCAL_HOSTS and self._listener.access.may_forward(
            lease.job_id, dest_port
        )
        if not allowed or self._conn is None:
            log.info("ssh forward to %s:%d refused (job %s)", dest_host, dest_port, lease.job_id)
            return False
        return self._conn.forward_connection("127.0.0.1", dest_port)


class _Sftp(asyncssh.SFTPServer):
    """SFTP chrooted to the task's working directory."""

    def exit(self) -> None:
        # OpenSSH's sftp-server reports an exit status; scp (SFTP mode) fails without one.
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(0)


class SshListener:
    """One leased SSH port of one job."""

    def __init__(self, lease: Lease, access: AccessService, host_key: asyncssh.SSHKey) -> None:
        self.lease = lease
        self.access = access
        self._host_key = host_key
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self._shells: set[Shell] = set()

    async def start(self, host: str) -> None:
        self._acceptor = await asyncssh.listen(
            host,
            self.lease.port,
            server_factory=lambda: _Session(self),
            server_host_keys=[self._host_key],
            process_factory=self._process,
            sftp_factory=self._sftp,
            allow_scp=True,
            encoding=None,
            line_editor=False,
            reuse_address=True,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=30,  # a vanished client's session ends within ~2 minutes
            keepalive_count_max=3,
        )

    async def close(self) -> None:
        """The job ended: no new sessions, and the open ones (and what they run) end too."""
        if self._acceptor is not None:
            self._acceptor.close()
        for shell in list(self._shells):
            shell.kill()
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()

    def _sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        cwd = chan.get_extra_info("jobyard_cwd")
        return _Sftp(chan, chroot=os.fsencode(cwd))

    async def _process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        session: _Session = process.get_extra_info("jobyard_session")
        try:
            shell = await open_for(process, self.access, self.lease, session.task)
        except JobyardError as exc:
            process.stderr.write(f"jobyard: {exc.message}\r\n".encode())
            process.exit(127 if exc.code == "start_failed" else 1)
            return
        self._shells.add(shell)
        try:
            code = await relay(process, shell)
        finally:
            self._shells.discard(shell)
        process.exit(code)
