"""`jobyard ssh` and `jobyard port-forward`: into a running job through the server's gateway.

The job's SSH URL, password and the gateway's host key come from
`GET /api/v1/jobs/{ref}/access`; the connection is made with asyncssh (no OpenSSH needed) and
the host key is checked against the one the API gave."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import termios
import tty
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlsplit

import httpx
import typer

from jobyard.cli.session import Target
from jobyard.client import ServerUnreachable
from jobyard.client.calls import api_error
from jobyard.client.discovery import discover_token, discover_url

if TYPE_CHECKING:
    import asyncssh

TaskOpt = Annotated[
    str | None, typer.Option("--task", "-t", help="a task name or index (default: the first)")
]


def _access(ctx: typer.Context, job: str) -> dict[str, Any]:
    target = ctx.find_object(Target) or Target()
    url, token = discover_url(target.url), discover_token(target.token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(
            f"{url}/api/v1/jobs/{quote(job, safe='')}/access", headers=headers, timeout=30
        )
    except httpx.TransportError as exc:
        raise ServerUnreachable(url, str(exc) or type(exc).__name__) from None
    if not response.is_success:
        raise api_error(response)
    found: dict[str, Any] = response.json()
    return found


class _Login:
    """Where and how to log in to a job's SSH port."""

    def __init__(self, access: dict[str, Any], job: str, task: str | None) -> None:
        ssh = [u[0] for u in access["urls"].values() if u and u[0].startswith("ssh://")]
        if not ssh:
            raise typer.BadParameter(
                f"job {job} has no live SSH port (declare one: ports=[{{port, protocol: ssh}}])"
            )
        parts = urlsplit(ssh[0])
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 22
        user = access["ssh"]["user"]
        self.user = user if task is None else task
        self.password = access["ssh"]["password"]
        self.host_key = access["ssh"]["host_key"]

    def connect(self) -> Any:
        import asyncssh  # only these commands pay for loading it

        host = f"[{self.host}]:{self.port}" if self.port != 22 else self.host
        known = asyncssh.import_known_hosts(f"{host} {self.host_key}\n")
        return asyncssh.connect(
            self.host,
            self.port,
            username=self.user,
            password=self.password,
            known_hosts=known,
            client_keys=None,
            agent_path=None,
        )


def ssh(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="the job: id, display id or submission id")],
    command: Annotated[
        list[str] | None, typer.Argument(help="a command to run instead of a shell (after --)")
    ] = None,
    task: TaskOpt = None,
) -> None:
    """Open a shell in a running job (or run a command there and exit with its status)."""
    login = _Login(_access(ctx, job), job, task)
    words = command[1:] if command and command[0] == "--" else (command or [])
    line = " ".join(words) if words else None  # joined with spaces, as OpenSSH's ssh does
    code = asyncio.run(_session(login, line))
    raise typer.Exit(code)


async def _session(login: _Login, command: str | None) -> int:
    import asyncssh

    async with login.connect() as conn:
        if command is None and sys.stdin.isatty():
            return await _interactive(conn)
        result = await conn.run(
            command, stdin=_stdin() or asyncssh.DEVNULL, stdout=sys.stdout.buffer,
            stderr=sys.stderr.buffer, encoding=None,
        )  # fmt: skip
        return int(result.exit_status if result.exit_status is not None else 255)


def _stdin() -> Any:
    """Our stdin when it is a pipe or a file (passed on to the command), else None."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError):
        return None
    return sys.stdin.buffer if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) else None


@contextlib.contextmanager
def _raw_terminal() -> Iterator[None]:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _interactive(conn: asyncssh.SSHClientConnection) -> int:
    """A shell with a terminal: the local one in raw mode, window changes passed on."""
    size = os.get_terminal_size()
    process = await conn.create_process(
        term_type=os.environ.get("TERM", "xterm-256color"),
        term_size=(size.columns, size.lines),
        encoding=None,
    )
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def typed() -> None:
        data = os.read(fd, 4096)
        if data:
            process.stdin.write(data)

    def resized() -> None:
        now = os.get_terminal_size()
        process.change_terminal_size(now.columns, now.lines)

    with _raw_terminal():
        loop.add_reader(fd, typed)
        loop.add_signal_handler(signal.SIGWINCH, resized)
        try:
            while data := await process.stdout.read(65536):
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            await process.wait()
        finally:
            loop.remove_reader(fd)
            loop.remove_signal_handler(signal.SIGWINCH)
    return int(process.exit_status if process.exit_status is not None else 255)


def port_forward(
    ctx: typer.Context,
    job: Annotated[str, typer.Argument(help="the job: id, display id or submission id")],
    port: Annotated[int, typer.Argument(help="the job's declared port", min=1, max=65535)],
    local_port: Annotated[
        int | None, typer.Option(help="local port [default: the same as the job's]")
    ] = None,
    address: Annotated[str, typer.Option(help="local address to listen on")] = "127.0.0.1",
    task: TaskOpt = None,
) -> None:
    """Forward a local port to one of a running job's ports (through its SSH port)."""
    login = _Login(_access(ctx, job), job, task)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_forward(login, address, local_port or port, port))


async def _forward(login: _Login, address: str, local_port: int, port: int) -> None:
    async with login.connect() as conn:
        listener = await conn.forward_local_port(address, local_port, "127.0.0.1", port)
        print(
            f"forwarding {address}:{listener.get_port()} -> port {port} of the job "
            "(Ctrl-C to stop)",
            flush=True,
        )
        await listener.wait_closed()
