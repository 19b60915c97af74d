"""The Ray head the tests share: `ray start --head --num-cpus 2` on free loopback ports.

One head serves the whole session, and every xdist worker (and any other pytest session of
this user) on the machine: the first to need it starts it under an exclusive lock and writes
where it is; each user holds a shared lock while it runs tests; the last one out stops it.
The head is stopped by its own process tree (`ray start --block` and every descendant, then
anything still naming its temp dir), never with `ray stop`, which ends every Ray on the
machine. Tests that need it are skipped, saying why, only where `ray` is not importable (a
head needs ray[default], which the test extra installs).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

_ROOT = Path(tempfile.gettempdir()) / f"jobyard-ray-tests-{os.getuid()}"
_START_LOCK = _ROOT / "start.lock"
_USERS_LOCK = _ROOT / "users.lock"
_INFO = _ROOT / "head.json"
_RAY = str(Path(sys.executable).with_name("ray"))
_STARTED: list[subprocess.Popen[bytes]] = []
_PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


def _why_skip() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed: pip install 'jobyard[ray]'"
    return None


SKIP_REASON = _why_skip()


@dataclass(frozen=True)
class RayHead:
    """A running head: its dashboard (the Job API), GCS address and the `ray start` pid."""

    dashboard: str
    gcs: str
    pid: int
    temp_dir: str
    cpus: int

    def alive(self) -> bool:
        """The Job API answers and the head node is registered (it takes jobs)."""
        try:
            nodes = httpx.get(f"{self.dashboard}/api/v0/nodes", timeout=5)
            found = nodes.json()["data"]["result"]["result"] if nodes.status_code == 200 else []
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return False
        return any(node.get("state") == "ALIVE" for node in found)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def head_environment() -> dict[str, str]:
    """The head's: no JOBYARD_* of the test run (jobs must not see them), no leftover
    RAY_ADDRESS, usage stats off, and every listener on 127.0.0.1."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBYARD_", "PYTEST_")) and k not in ("RAY_ADDRESS",)
    }
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    return env


def start_head(cpus: int = 2, timeout: float = 90.0) -> RayHead:
    """`ray start --head --block` on free ports; returns once the Job API answers."""
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    temp_dir = tempfile.mkdtemp(prefix="jyray-", dir="/tmp")  # short: Ray's sockets live there
    argv = [_RAY, "start", "--head", "--block", f"--num-cpus={cpus}", "--num-gpus=0"]
    argv += [f"--{name}={port}" for name, port in ports.items()]
    argv += [
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]
    with open(Path(temp_dir) / "ray-start.log", "wb") as log:  # the head keeps its own copy
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=head_environment(),
            start_new_session=True,
        )
    _STARTED.append(proc)  # referenced for good: it may outlive this process's use of it
    head = RayHead(
        dashboard=f"http://127.0.0.1:{ports['dashboard-port']}",
        gcs=f"127.0.0.1:{ports['port']}",
        pid=proc.pid,
        temp_dir=temp_dir,
        cpus=cpus,
    )
    deadline = time.monotonic() + timeout
    while not head.alive():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_head(head)
            said = (Path(temp_dir) / "ray-start.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Ray head did not start: {said}")
        time.sleep(0.2)
    return head


def _head_processes(head: RayHead) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        top = psutil.Process(head.pid)
        found[top.pid] = top
        found.update((p.pid, p) for p in top.children(recursive=True))
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if any(head.temp_dir in part for part in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_head(head: RayHead) -> None:
    """TERM the head's whole tree, KILL what is left after 3 s; remove its temp dir."""
    procs = _head_processes(head)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive + _head_processes(head):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for proc in [p for p in _STARTED if p.pid == head.pid]:
        proc.wait(timeout=5)  # this process started it: reap it
        _STARTED.remove(proc)
    subprocess.run(["rm", "-rf", head.temp_dir], check=False)


def _read_info() -> RayHead | None:
    try:
        return RayHead(**json.loads(_INFO.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_head() -> Iterator[RayHead]:
    """The machine's test head (started if none runs), held while the caller uses it."""
    _ROOT.mkdir(mode=0o700, exist_ok=True)
    users = os.open(_USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with _locked(_START_LOCK, fcntl.LOCK_EX):
            head = _read_info()
            if head is None or not head.alive():
                if head is not None:
                    stop_head(head)
                head = start_head()
                _INFO.write_text(json.dumps(asdict(head)))
            fcntl.flock(users, fcntl.LOCK_SH)
        yield head
    finally:
        with _locked(_START_LOCK, fcntl.LOCK_EX):
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else uses it
            except BlockingIOError:
                pass
            else:
                head = _read_info()
                if head is not None:
                    stop_head(head)
                _INFO.unlink(missing_ok=True)
            os.close(users)


_running: list[RayHead] = []


@pytest.fixture(scope="session", name="ray_head")
def ray_head_fixture() -> Iterator[RayHead]:
    """`ray_head`: the shared head, for the whole session (a test module imports this)."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    with shared_head() as head:
        _running.append(head)
        try:
            yield head
        finally:
            _running.remove(head)


def running_head() -> RayHead:
    """The head the `ray_head` fixture holds (for helpers that are given no fixtures)."""
    if not _running:
        raise RuntimeError("no Ray head: the test must use the ray_head fixture")
    return _running[-1]


def stop_jobs_of(head: RayHead, home: Path) -> None:
    """Stop every live Ray job that an executor with this home submitted (its metadata names
    the home), so that no test leaves a driver running on the shared head."""
    from ray.job_submission import JobSubmissionClient  # only where ray is installed

    client = JobSubmissionClient(head.dashboard)
    mine = f":{home.resolve()}"
    for job in client.list_jobs():
        instance = (job.metadata or {}).get("jobyard_instance", "")
        if instance.endswith(mine) and not job.status.is_terminal() and job.submission_id:
            with contextlib.suppress(RuntimeError):
                client.stop_job(job.submission_id)


class Gate:
    """A TCP door in front of the head's Job API, on a port of its own: shut, the cluster
    does not answer there (connections refused); open, it forwards to the dashboard. What a
    head that is down and then back looks like to jobyard, without restarting Ray."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("http://").partition(":")
        self._target = (host, int(port))
        self.port = _free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def open(self) -> None:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

        self._run(serve())

    def shut(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            for pipe in list(self._pipes):
                pipe.cancel()

        self._run(close())

    def close(self) -> None:
        self.shut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.ensure_future(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
