"""Ray-style runtime environments for the Ray face: working-directory packages and the plan of
a job's pip virtualenv.

Packages are zips uploaded by a client under a content-addressed name (Ray's
`_ray_pkg_<hash>.zip`), kept per owner so that one user can never plant code under a name
another user's client will trust. A job's working directory is unpacked from a package (or a
`file://` zip) into a directory of its own, checked entry by entry: no absolute paths, no `..`,
no symlink leading out, no more than ten times the package limit once unpacked.

A pip requirement set gets one virtualenv under the data directory, built on first use by the
job's own setup step (`python -m jobyard.executors.venv ...`, so the HTTP request never waits
for pip; the builder is executors/venv.py) and reused by every later job with the same set.

What cannot be set up here (a conda environment, a working_dir or py_modules at a remote URI)
is accepted and fails the job in its setup step, as Ray fails the job rather than the submit.
A failed setup ends the job with exit code SETUP_FAILED_EXIT and SETUP_FAILED as the log's
last line, after the lines saying why (model/setup.py): that is how a face tells it from the
entrypoint's own failure (the entrypoint never ran).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import stat
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jobyard.errors import InvalidInput
from jobyard.model.setup import (
    DEFAULT_SETUP_TIMEOUT,
    SETUP_FAILED,
    SETUP_FAILED_EXIT,
    VENV_BUILDER,
    VENV_READY,
)

_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}\.zip$")
_PROTOCOLS = ("gcs",)
# The layout of a virtualenv, in its key: one built before the base packages were inherited
# is never reused.
_VENV_LAYOUT = "inherits-base-1"
MAX_ENTRIES = 100_000
UNPACKED_FACTOR = 10
_COPY_CHUNK = 1 << 20
__all__ = [
    "DEFAULT_SETUP_TIMEOUT",
    "SETUP_FAILED",
    "SETUP_FAILED_EXIT",
    "EnvRequest",
    "PipRequirements",
    "PreparedEnv",
    "RuntimeEnvService",
    "TooLarge",
    "check_zip",
    "failed_setup",
    "unpack_zip",
]


class TooLarge(InvalidInput):
    """An upload over the configured limit (HTTP 413 where the face can say so)."""

    code = "too_large"


@dataclass(frozen=True)
class PipRequirements:
    packages: tuple[str, ...]
    options: tuple[str, ...] = ()
    check: bool = False

    def key(self) -> str:
        body = json.dumps([self.packages, self.options, self.check, _VENV_LAYOUT])
        return hashlib.sha256(body.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class EnvRequest:
    """A runtime environment, face-neutral: where the code comes from, what to install, and
    how long setting it up may take (None: no limit)."""

    working_dir: str | None = None
    py_modules: tuple[str, ...] = ()
    pip: PipRequirements | None = None
    conda: bool = False
    setup_timeout: float | None = DEFAULT_SETUP_TIMEOUT


@dataclass
class PreparedEnv:
    """What a job needs from its environment: its cwd, variables and a setup step."""

    working_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None
    created: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what cannot be set up here


class RuntimeEnvService:
    def __init__(self, root: Path, *, max_package_bytes: int, python: str = sys.executable) -> None:
        self._root = root
        self._max_package = max_package_bytes
        self._max_unpacked = max_package_bytes * UNPACKED_FACTOR
        self._python = python

    @property
    def max_package_bytes(self) -> int:
        return self._max_package

    # ---- packages -------------------------------------------------------------------------------

    def package_path(self, owner: str, protocol: str, name: str) -> Path:
        if protocol not in _PROTOCOLS:
            raise InvalidInput(
                f"protocol: packages are stored under 'gcs', not {protocol!r}", field="protocol"
            )
        if not _PACKAGE_NAME.match(name) or ".." in name:
            raise InvalidInput(
                f"name: {name!r} is not a package name (letters, digits and _.-, ending in .zip)",
                field="name",
            )
        digest = hashlib.sha256(owner.encode()).hexdigest()[:24]
        return self._root / "packages" / digest / protocol / name

    def has_package(self, owner: str, protocol: str, name: str) -> bool:
        return self.package_path(owner, protocol, name).is_file()

    async def store_package(
        self, owner: str, protocol: str, name: str, body: AsyncIterator[bytes]
    ) -> None:
        """Store an uploaded zip under its name, once it is whole, within the limit and safe."""
        final = self.package_path(owner, protocol, name)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{name}.{uuid.uuid4().hex}.part")
        try:
            size = 0
            with open(partial, "wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > self._max_package:
                        raise TooLarge(
                            f"package is larger than the limit of {self._max_package} bytes",
                            field="body",
                        )
                    out.write(chunk)
            check_zip(partial, self._max_unpacked)
            os.replace(partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    # ---- preparing a job ------------------------------------------------------------------------

    def prepare(self, owner: str, request: EnvRequest) -> PreparedEnv:
        """Unpack the working directory and modules; plan the virtualenv. Blocking: run it in
        a thread. On error nothing it created is left behind."""
        prepared = PreparedEnv()
        try:
            if request.working_dir is not None:
                prepared.working_dir = self._working_dir(owner, request.working_dir, prepared)
            modules = [
                self._py_module(owner, uri, index, prepared)
                for index, uri in enumerate(request.py_modules)
            ]
            paths = [path for path in [prepared.working_dir, *modules] if path is not None]
            if paths:
                prepared.env["PYTHONPATH"] = os.pathsep.join(paths)
            if request.conda:
                prepared.failures.append(
                    "runtime_env.conda: jobyard does not build conda environments; "
                    "use runtime_env.pip"
                )
            prepared.setup = self._setup(request, prepared.failures)
        except BaseException:
            self.discard(prepared)
            raise
        return prepared

    def _setup(self, request: EnvRequest, failures: list[str]) -> str | None:
        if failures:
            return failed_setup(failures)
        if request.pip is not None:
            return self.venv_setup(request.pip, timeout=request.setup_timeout)
        return None

    def discard(self, prepared: PreparedEnv) -> None:
        for path in prepared.created:
            shutil.rmtree(path, ignore_errors=True)

    def release_working_dir(self, path: str | None) -> None:
        """Remove a job's unpacked directory (only ever one this service created)."""
        if not path:
            return
        base = (self._root / "working_dirs").resolve()
        target = Path(path).resolve()
        if target.parent == base:
            shutil.rmtree(target, ignore_errors=True)

    def _new_dir(self, prepared: PreparedEnv) -> Path:
        path = self._root / "working_dirs" / uuid.uuid4().hex
        path.mkdir(parents=True, mode=0o700)
        prepared.created.append(path)
        return path

    def _working_dir(self, owner: str, uri: str, prepared: PreparedEnv) -> str | None:
        where = "runtime_env.working_dir"
        if uri.startswith("gcs://"):
            archive = self._uploaded(owner, uri, where)
            dest = self._new_dir(prepared)
            unpack_zip(archive, dest, max_bytes=self._max_unpacked, strip_top=False, field=where)
            return str(dest)
        if uri.startswith("file://"):
            archive = _local_zip(uri, where)
            dest = self._new_dir(prepared)
            unpack_zip(archive, dest, max_bytes=self._max_unpacked, strip_top=True, field=where)
            return str(dest)
        if "://" in uri:
            prepared.failures.append(_remote(where, uri))
            return None
        path = Path(uri)
        if not path.is_absolute() or not path.is_dir():
            raise InvalidInput(
                f"{where}: {uri!r} is neither an uploaded package, a file:// zip nor an "
                "absolute path of a directory on the server",
                field=where,
            )
        return str(path)

    def _py_module(self, owner: str, uri: str, index: int, prepared: PreparedEnv) -> str | None:
        where = f"runtime_env.py_modules.{index}"
        if uri.startswith("gcs://"):
            archive = self._uploaded(owner, uri, where)
        elif uri.startswith("file://"):
            archive = _local_zip(uri, where)
        elif "://" in uri:
            prepared.failures.append(_remote(where, uri))
            return None
        else:
            raise InvalidInput(f"{where}: only gcs:// and file:// zips are supported", field=where)
        dest = self._new_dir(prepared)
        unpack_zip(archive, dest, max_bytes=self._max_unpacked, strip_top=False, field=where)
        return str(dest)

    def _uploaded(self, owner: str, uri: str, where: str) -> Path:
        name = uri.removeprefix("gcs://")
        try:
            path = self.package_path(owner, "gcs", name)
        except InvalidInput:
            raise InvalidInput(f"{where}: {uri!r} is not a package name", field=where) from None
        if not path.is_file():
            raise InvalidInput(
                f"{where}: package {uri} was never uploaded (PUT /api/packages/gcs/{name})",
                field=where,
            )
        return path

    # ---- virtualenvs ----------------------------------------------------------------------------

    def venv_path(self, pip: PipRequirements) -> Path:
        return self._root / "venvs" / pip.key()

    def venv_setup(self, pip: PipRequirements, *, timeout: float | None = None) -> str:
        """The shell step that builds the set's virtualenv unless it is ready (within
        `timeout` seconds, lock wait included), then puts it first on the job's PATH."""
        path = self.venv_path(pip)
        build = [self._python, "-I", "-m", VENV_BUILDER, "venv", str(path)]
        if pip.check:
            build.append("--check")
        if timeout is not None:
            build.append(f"--timeout={timeout:g}")
        build += ["--", *pip.options, *pip.packages]
        quoted = shlex.quote(str(path))
        return (
            f"[ -e {shlex.quote(str(path / VENV_READY))} ] || {shlex.join(build)}\n"
            f'export VIRTUAL_ENV={quoted} PATH={shlex.quote(str(path / "bin"))}:"$PATH"'
        )


def _remote(where: str, uri: str) -> str:
    scheme = uri.split("://", 1)[0]
    return (
        f"{where}: {uri}: jobyard does not fetch {scheme}:// URIs; submit a local directory or "
        "zip (Ray's client uploads it as gcs://), or a file:// zip on the server"
    )


def failed_setup(reasons: Sequence[str]) -> str:
    """A setup step that says why the environment cannot be made here, then fails the job."""
    lines = " ".join(shlex.quote(line) for line in [*reasons, SETUP_FAILED])
    return f"printf '%s\\n' {lines}\nexit {SETUP_FAILED_EXIT}"


# ---- zips ------------------------------------------------------------------------------------


def _local_zip(uri: str, where: str) -> Path:
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute() or not path.is_file():
        raise InvalidInput(f"{where}: {uri!r} is not a file on the server", field=where)
    if not zipfile.is_zipfile(path):
        raise InvalidInput(f"{where}: {uri!r} is not a zip archive", field=where)
    return path


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _check_name(name: str, where: str) -> None:
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or ".." in parts:
        raise InvalidInput(f"{where}: unsafe path {name!r} in the archive", field=where)


def _check_link(name: str, target: str, where: str) -> None:
    inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if target.startswith("/") or inside == ".." or inside.startswith("../") or "\x00" in target:
        raise InvalidInput(
            f"{where}: symlink {name!r} -> {target!r} leads out of the directory", field=where
        )


def check_zip(path: Path, max_bytes: int, where: str = "body") -> list[zipfile.ZipInfo]:
    """The members of a zip that is safe to unpack; InvalidInput naming the problem if not."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ENTRIES:
                raise InvalidInput(f"{where}: more than {MAX_ENTRIES} entries", field=where)
            total = 0
            for info in members:
                _check_name(info.filename, where)
                total += info.file_size
                if _is_symlink(info):
                    _check_link(info.filename, archive.read(info).decode(errors="replace"), where)
            if total > max_bytes:
                raise TooLarge(f"{where}: unpacks to more than {max_bytes} bytes", field=where)
            return members
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise InvalidInput(f"{where}: not a valid zip archive ({exc})", field=where) from None


def _top_dir(members: Sequence[zipfile.ZipInfo]) -> str:
    """The one top-level directory holding every member, as Ray strips it from remote
    archives ("" when there is not exactly one)."""
    names = [m.filename for m in members]
    prefix = names[0].split("/", 1)[0] + "/" if names else "/"
    if prefix != "/" and all(n.startswith(prefix) for n in names) and set(names) != {prefix}:
        return prefix
    return ""


def unpack_zip(
    archive_path: Path, dest: Path, *, max_bytes: int, strip_top: bool, field: str
) -> None:
    """Unpack into `dest` (existing, empty): files and directories first, then symlinks, each
    checked; nothing is ever written through a symlink or outside `dest`."""
    members = check_zip(archive_path, max_bytes, field)
    prefix = _top_dir(members) if strip_top else ""
    written, links = 0, []
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for info in members:
                name = info.filename[len(prefix) :] if prefix else info.filename
                if not name.strip("/"):
                    continue
                target = dest / name
                if _is_symlink(info):
                    links.append((name, archive.read(info).decode()))
                elif info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    written += _extract_file(archive, info, target, max_bytes - written, field)
        for name, link in links:
            os.symlink(link, dest / name)
        _check_links_resolve_inside(dest, [name for name, _ in links], field)
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{field}: cannot unpack the archive: {exc}", field=field) from None


def _extract_file(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: int, where: str
) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o755 if (info.external_attr >> 16) & 0o100 else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    written = 0
    with archive.open(info) as src, os.fdopen(os.open(target, flags, mode), "wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            if written > budget:  # the sizes in a zip's headers may lie
                raise TooLarge(f"{where}: unpacks to more than allowed", field=where)
            out.write(chunk)
    return written


def _check_links_resolve_inside(dest: Path, names: Sequence[str], where: str) -> None:
    root = dest.resolve()
    for name in names:
        resolved = Path(os.path.realpath(dest / name))
        if resolved != root and root not in resolved.parents:
            raise InvalidInput(f"{where}: symlink {name!r} leads out of the directory", field=where)
