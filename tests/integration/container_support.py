"""Container images and a registry for the tests, all made here (no internet).

An image is a root filesystem with Debian's static busybox (every applet linked), imported
with `podman import`. A real registry (Debian's docker-registry, on a free loopback port, its
storage in a temporary directory) holds it, so jobs pull it for real; the tests pull from it
with `--tls-verify=false` (a registry on loopback without TLS). The session's images, the
registry and its storage are removed at the end; `leftover_containers` finds what a test left.

Tests that need podman skip with the reason where it is absent (`.ci/test-deps.sh` installs it
and writes a containers.conf where this machine needs one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobyard.config import ContainerRuntimeArgs, Settings
from jobyard.executors import containers
from tests.helpers import make_settings

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")
REGISTRY = shutil.which("docker-registry")
HTPASSWD = shutil.which("htpasswd")
MMDEBSTRAP = shutil.which("mmdebstrap")
NO_MMDEBSTRAP = "no mmdebstrap to make an image with Python (apt-get install mmdebstrap)"
NO_HTPASSWD = "no htpasswd for a registry that asks for a login (apt-get install apache2-utils)"


def _why_skip() -> str | None:
    if PODMAN is None:
        return "podman is not installed (apt-get install podman catatonit; .ci/test-deps.sh)"
    if BUSYBOX is None or REGISTRY is None:
        return "no busybox or docker-registry (apt-get install busybox-static docker-registry)"
    return None


SKIP_REASON = _why_skip()
needs_podman = pytest.mark.skipif(SKIP_REASON is not None, reason=str(SKIP_REASON))


def podman(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(
        [PODMAN or "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass(frozen=True)
class Images:
    """What the session made: `local` (imported, never pushed under this name), `remote` (in
    the registry, and removed from the local store by `forget`), the registry's host:port."""

    local: str
    remote: str
    registry: str
    names: tuple[str, ...]

    def forget(self, ref: str) -> None:
        """Take `ref` out of the local store, so the next job with it pulls it."""
        podman("rmi", "-f", ref, check=False)

    def missing(self) -> str:
        """A tag the registry does not have."""
        return f"{self.registry}/jobyard-test/busybox:no-such-tag"


def _rootfs(path: Path) -> None:
    """A root filesystem: /bin/busybox and a link per applet, /tmp, /etc/passwd for `id`."""
    bin_dir = path / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(BUSYBOX or "busybox", bin_dir / "busybox")
    applets = subprocess.run(
        [BUSYBOX or "busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (bin_dir / applet).symlink_to("busybox")
    (path / "tmp").mkdir(mode=0o1777)
    (path / "etc").mkdir()
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _registry(storage: Path, htpasswd: Path | None = None) -> Iterator[str]:
    """A registry on a free loopback port; with `htpasswd`, one that asks for a login (basic
    auth, which distribution serves over plain HTTP too)."""
    port = _free_port()
    config = storage / "config.yml"
    auth = (
        f"auth:\n  htpasswd:\n    realm: jobyard-test\n    path: {htpasswd}\n" if htpasswd else ""
    )
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    proc = subprocess.Popen(
        [REGISTRY or "docker-registry", "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, "docker-registry exited at start"
            assert time.monotonic() < deadline, "docker-registry did not listen in time"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def session_images() -> Iterator[Images]:
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="jobyard-images-") as tmp:
        root = Path(tmp) / "rootfs"
        _rootfs(root)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        local = f"localhost/jobyard-test-{tag}/busybox:1"
        podman("import", "-q", str(archive), local)
        (Path(tmp) / "registry").mkdir()
        with _registry(Path(tmp) / "registry") as registry:
            remote = f"{registry}/jobyard-test/busybox:1"
            try:
                podman("push", "-q", "--tls-verify=false", local, remote)
                yield Images(local=local, remote=remote, registry=registry, names=(local, remote))
            finally:
                podman("rmi", "-f", local, remote, check=False)


def _apt_sources() -> list[str]:
    """This machine's apt sources (the archive its packages come from), for mmdebstrap."""
    found = [str(p) for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    listed = Path("/etc/apt/sources.list")
    if listed.is_file() and any(
        line.strip().startswith("deb ") for line in listed.read_text().splitlines()
    ):
        found.append(str(listed))
    return found


def _suite() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    raise AssertionError("no VERSION_CODENAME in /etc/os-release")


@contextlib.contextmanager
def python_image(images: Images) -> Iterator[str]:
    """An image with Debian's python3 and dash, made by mmdebstrap from this machine's Debian
    archive (the packages extracted, no maintainer scripts: a few seconds, 60 MB), pushed to
    the session's registry and not in the local store: a job with it pulls it."""
    if MMDEBSTRAP is None:
        pytest.skip(NO_MMDEBSTRAP)
    sources = _apt_sources()
    assert sources, "no apt sources on this machine for mmdebstrap"
    with tempfile.TemporaryDirectory(prefix="jobyard-python-") as tmp:
        archive = Path(tmp) / "rootfs.tar"
        made = subprocess.run(
            [MMDEBSTRAP, "--quiet", "--variant=extract", "--include=python3,dash"]
            + [_suite(), str(archive), *sources],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert made.returncode == 0, f"mmdebstrap: {made.stderr.strip()}"
        local = f"localhost/jobyard-test-{uuid.uuid4().hex[:8]}/python:3"
        remote = f"{images.registry}/jobyard-test/python:3"
        podman("import", "-q", str(archive), local)
        try:
            podman("push", "-q", "--tls-verify=false", local, remote)
        finally:
            podman("rmi", "-f", local, remote, check=False)
        try:
            yield remote
        finally:
            podman("rmi", "-f", remote, check=False)


@dataclass(frozen=True)
class PrivateImage:
    """An image in a registry of its own that pulls only with `username` and `password`."""

    image: str
    registry: str
    username: str
    password: str


@contextlib.contextmanager
def private_image(images: Images) -> Iterator[PrivateImage]:
    """The session's local image pushed to a registry that asks for a login (bcrypt htpasswd),
    and not in the local store: a job with it pulls it, or fails to."""
    if HTPASSWD is None:
        pytest.skip(NO_HTPASSWD)
    username, password = "alice-at-registry", "pw-" + uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="jobyard-private-") as tmp:
        htpasswd = Path(tmp) / "htpasswd"
        subprocess.run(
            [HTPASSWD, "-Bbc", str(htpasswd), username, password], check=True, capture_output=True
        )
        (Path(tmp) / "registry").mkdir()
        with _registry(Path(tmp) / "registry", htpasswd) as registry:
            image = f"{registry}/private/busybox:1"
            login = f"--creds={username}:{password}"
            podman("push", "-q", "--tls-verify=false", login, images.local, image)
            podman("rmi", "-f", image, check=False)
            try:
                yield PrivateImage(image, registry, username, password)
            finally:
                podman("rmi", "-f", image, check=False)


def container_settings(home: Path, **overrides: Any) -> Settings:
    """A server's settings with podman, pulls from the loopback registry without TLS."""
    defaults: dict[str, Any] = {
        "container_runtime": "podman",
        "container_runtime_args": ContainerRuntimeArgs(pull_args=["--tls-verify=false"]),
    }
    return make_settings(home, **{**defaults, **overrides})


def leftover_containers(home: Path) -> list[str]:
    """The containers (running or not) of the server whose data directory is `home`."""
    label = f"label={containers.LABEL_HOME}={home.resolve()}"
    return podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").split()


def remove_leftovers(home: Path) -> list[str]:
    """Remove what a test left (it says what it was, for the test to fail on)."""
    names = leftover_containers(home)
    if names:
        podman("rm", "-f", *names, check=False)
    return names


def host_processes(container: str, pids: list[int]) -> list[int]:
    """The host's pids of the processes a container knows by `pids` (its own pid namespace):
    those whose NSpid ends with one of them, in the container's pid namespace."""
    inside = podman("inspect", "--format", "{{.State.Pid}}", container, check=False)
    try:
        namespace = os.readlink(f"/proc/{int(inside)}/ns/pid")
    except (OSError, ValueError):
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("NSpid:") and int(line.split()[-1]) in pids:
                    found.append(int(entry))
    return found


_running: list[Images] = []


@pytest.fixture(scope="session", name="images")
def images_fixture() -> Iterator[Images]:
    """`images`: the session's images and registry (a test module imports this)."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    with session_images() as made:
        _running.append(made)
        try:
            yield made
        finally:
            _running.remove(made)


def running_images() -> Images:
    """The session's images, once a test has asked for the `images` fixture."""
    return _running[-1]


def gone_in_time(home: Path, timeout: float = 10) -> list[str]:
    """Wait for the server's containers to be gone (`--rm` may lag a job's end a little);
    remove and return any still there then."""
    deadline = time.monotonic() + timeout
    while leftover_containers(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    return remove_leftovers(home)


@contextlib.contextmanager
def slow_proxy(target: str, delay: float) -> Iterator[str]:
    """A TCP proxy to `target` (host:port) that holds each connection `delay` seconds before
    relaying it: a registry behind it is slow to pull from, so a pull lasts long enough to see."""
    host, port = target.rsplit(":", 1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()
    opened: list[socket.socket] = [listener]

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(client: socket.socket) -> None:
        time.sleep(delay)
        try:
            upstream = socket.create_connection((host, int(port)))
        except OSError:  # the registry is gone (its test ended while a retry was held here)
            client.close()
            return
        opened.append(upstream)
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                client = listener.accept()[0]
                opened.append(client)
                threading.Thread(target=serve, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for sock in opened:
            sock.close()
