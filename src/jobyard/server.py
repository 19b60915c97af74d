"""The composition root: builds store -> executor -> scheduler -> services from Settings,
hands the services to the ASGI app, and serves it. The only module that sees every layer."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from jobyard.api.app import create_app
from jobyard.api.limits import RequestSizeLimit
from jobyard.api.ray import create_ray_app
from jobyard.api.ray.runtime_env import RuntimeEnvService
from jobyard.config import Settings
from jobyard.errors import Conflict
from jobyard.executors.base import Executor
from jobyard.executors.registry import load_executor
from jobyard.executors.usage import GpuSource, NoGpus, NvmlGpuSource
from jobyard.gateway import Gateway
from jobyard.metrics import Metrics
from jobyard.scheduler.reconciler import Reconciler
from jobyard.service import AuthService, JobService, LogService, figures
from jobyard.service.access import AccessService
from jobyard.service.registries import RegistryService
from jobyard.service.terminals import TerminalTokens
from jobyard.service.usage import UsageService
from jobyard.store.db import Database, migrate

log = logging.getLogger("jobyard")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    executor: Executor
    reconciler: Reconciler
    auth: AuthService
    jobs: JobService
    logs: LogService
    home_lock: int | None  # None in a worker: its parent holds the data directory's lock
    access: AccessService
    gateway: Gateway
    metrics: Metrics
    usage: UsageService
    registries: RegistryService

    async def close(self) -> None:
        await self.executor.close()
        self.db.close()
        if self.home_lock is not None:
            os.close(self.home_lock)  # releases the lock on the data directory


def prepare_home(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.home, 0o700)
    for path in (settings.logs_dir, settings.jobs_dir):
        path.mkdir(exist_ok=True)


def lock_home(settings: Settings) -> int:
    """One server per data directory: a second would run a second scheduler over the same jobs
    and start them twice. The lock goes with the process, however it ends."""
    fd = os.open(settings.home / "server.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Conflict(
            f"another jobyard server (pid {holder}) is using {settings.home}; stop it, or "
            "give this one its own --home"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def build(settings: Settings, gpus: GpuSource | None = None, *, worker: bool = False) -> Runtime:
    """Wire everything. Runs migrations and writes the admin token before any request.
    `gpus`: where usage samples get GPU figures (default: NVML, if the executor's tasks run
    here). A `worker` (of `jobyard server --workers`) leaves the data directory's lock and the
    migrations to its parent, which did both before it started."""
    prepare_home(settings)
    home_lock = None if worker else lock_home(settings)
    metrics = Metrics()
    try:
        url = settings.effective_database_url
        if not worker:
            migrate(url)
        meeting = settings.home / "workers" if worker else None  # where SQLite workers meet
        db = Database(url, on_commit=metrics.store_commit.observe, workers_dir=meeting)
    except BaseException:
        unlock_home(home_lock)
        raise
    try:
        executor = load_executor(settings.executor, settings)
        reconciler = Reconciler(db, executor, settings, metrics=metrics)
        auth = AuthService(db)
        auth.bootstrap_admin(settings.admin_token_path)
    except BaseException:
        db.close()
        unlock_home(home_lock)
        raise
    jobs = JobService(
        db,
        executor,
        settings,
        wake=reconciler.wake,
        positions=reconciler.queue_position,
        on_submitted=metrics.submitted.inc,
    )
    logs = LogService(jobs, executor, max_read=settings.max_log_read_bytes)
    access = AccessService(db, jobs, settings)
    gateway = Gateway(access, settings)
    metrics.add_source(figures.jobs_and_pools(jobs))
    local = "usage" in executor.capabilities
    gpus = gpus if gpus is not None else NvmlGpuSource() if local else NoGpus()
    usage = UsageService(db, executor, jobs, settings, gpus=gpus, logs=logs)
    metrics.add_source(usage.figures())
    return Runtime(
        settings,
        db,
        executor,
        reconciler,
        auth,
        jobs,
        logs,
        home_lock,
        access,
        gateway,
        metrics,
        usage,
        RegistryService(db),
    )


def unlock_home(home_lock: int | None) -> None:
    if home_lock is not None:
        os.close(home_lock)


class _Companion(uvicorn.Server):
    """A listener served inside the main server's event loop: the main one handles signals
    and says, once, that the process started and finished."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        if not self.config.loaded:
            self.config.load()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.startup(sockets=sockets)
        if not self.should_exit:
            await self.main_loop()
        if self.started:
            await self.shutdown(sockets=sockets)


@dataclass
class Listener:
    """Another listener of this process (the Ray job API's) on a socket bound in advance,
    started and stopped by the main app's lifespan, so that it shares the main event loop and
    services and stops before they close."""

    server: uvicorn.Server
    sock: socket.socket

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def start(self) -> asyncio.Task[None]:
        task = asyncio.create_task(self.server.serve(sockets=[self.sock]), name="jobyard-listener")
        while not self.server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"the listener on port {self.port} did not start")
            await asyncio.sleep(0.01)
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        self.server.should_exit = True
        await task


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); Conflict naming the address if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise Conflict(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def ray_listener(runtime: Runtime, sock: socket.socket) -> Listener:
    """The Ray job API over the same services, on its own socket."""
    settings = runtime.settings
    runtime_env = RuntimeEnvService(
        settings.home / "runtime_env", max_package_bytes=settings.max_package_bytes
    )
    app = create_ray_app(
        auth=runtime.auth, jobs=runtime.jobs, logs=runtime.logs, runtime_env=runtime_env
    )
    packages = {"/api/packages/": settings.max_package_bytes}  # uploads have their own limit
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes, larger=packages)
    config = uvicorn.Config(
        app, lifespan="off", log_level=settings.log_level, access_log=settings.access_log
    )
    return Listener(_Companion(config), sock)


def _ray_sockets(settings: Settings) -> list[socket.socket]:
    """The Ray listener's socket unless ray_port is 0. If the default port is taken (a Ray
    dashboard runs here), jobyard starts without it; a port asked for must be had."""
    if not settings.ray_port:
        return []
    try:
        return [listen(settings.host, settings.ray_port)]
    except Conflict as exc:
        if "ray_port" in settings.model_fields_set:
            raise Conflict(f"Ray job API: {exc.message}") from None
        log.warning("%s: the Ray job API is off (choose another with --ray-port)", exc.message)
        return []


def url_of(sock: socket.socket) -> str:
    """The URL that reaches a listening socket from this machine (a wildcard: loopback)."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def create_server_app(
    runtime: Runtime, listeners: Sequence[Listener] = (), *, duties: bool = True
) -> FastAPI:
    """The ASGI app, whose lifespan runs the reconciler (which leads or stands by) and, with
    `duties` (every server, and the first worker of `--workers`), the usage sampler and the
    gateway's listeners, which must run once per server."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.db.listen()  # before the first pass and request
        loop_task = asyncio.create_task(runtime.reconciler.run(), name="jobyard-reconciler")
        sampler = asyncio.create_task(
            runtime.usage.run() if duties else asyncio.sleep(0), name="jobyard-usage"
        )
        served: list[tuple[Listener, asyncio.Task[None]]] = []
        try:
            for listener in listeners:
                served.append((listener, await listener.start()))
            if duties:
                await runtime.gateway.start()
            yield
        finally:
            if duties:
                await runtime.gateway.stop()
            for listener, task in served:
                await listener.stop(task)
            for task in (sampler, loop_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await runtime.close()

    return create_app(
        auth=runtime.auth,
        jobs=runtime.jobs,
        logs=runtime.logs,
        access=runtime.access,
        metrics=runtime.metrics,
        usage=runtime.usage,
        registries=runtime.registries,
        lifespan=lifespan,
        max_request_bytes=runtime.settings.max_request_bytes,
        terminals=TerminalTokens(runtime.db, runtime.settings.terminal_token_ttl_seconds),
    )


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The ports first: a server refused for a busy port leaves nothing on disk.
    sock = listen(settings.host, settings.port)
    ray_socks = _ray_sockets(settings)
    if settings.effective_workers > 1:
        from jobyard.workers import serve_workers

        serve_workers(settings, sock, ray_socks)
        return
    runtime = build(settings)
    server = _uvicorn(runtime, ray_socks)
    announce(settings, sock, ray_socks)
    run_announced(server, settings, sock)


def serve_worker(
    settings: Settings, sock: socket.socket, ray_socks: list[socket.socket], index: int
) -> None:
    """Worker `index` of `jobyard server --workers` (workers.py): the whole server on its
    parent's sockets; the first one also samples usage and runs the gateway."""
    runtime = build(settings, worker=True)
    _uvicorn(runtime, ray_socks, duties=index == 0).run(sockets=[sock])


def _uvicorn(
    runtime: Runtime, ray_socks: list[socket.socket], *, duties: bool = True
) -> uvicorn.Server:
    settings = runtime.settings
    listeners = [ray_listener(runtime, ray_sock) for ray_sock in ray_socks]
    app = create_server_app(runtime, listeners, duties=duties)
    # Long-lived objects (modules, models, engines) never need the cyclic collector again:
    # freezing them keeps full collections from pausing requests for tens of milliseconds.
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    return uvicorn.Server(config)


def announce(settings: Settings, sock: socket.socket, ray_socks: list[socket.socket]) -> None:
    log.info(
        "jobyard on %s (data in %s; admin token in %s)",
        url_of(sock),
        settings.home,
        settings.admin_token_path,
    )
    for ray_sock in ray_socks:
        log.info("Ray job API on %s", url_of(ray_sock))


def run_announced(server: uvicorn.Server, settings: Settings, sock: socket.socket) -> None:
    """Serve on `sock`, its URL in $home/server.url while it listens (run_announced_file)."""
    with run_announced_file(settings, sock):
        server.run(sockets=[sock])


@contextlib.contextmanager
def run_announced_file(settings: Settings, sock: socket.socket) -> Iterator[None]:
    """`sock`'s URL in $home/server.url (0600) while the block runs, for the CLI to find
    (jobyard.client.discovery). The file goes when the block returns or raises (Ctrl-C);
    uvicorn ends a SIGTERM by dying of it, so then (and after a SIGKILL) it stays, and clients
    ignore it: the pid in server.lock is gone. The next start replaces it."""
    path, tmp = settings.home / "server.url", settings.home / "server.url.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url_of(sock) + "\n")
    os.replace(tmp, path)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
