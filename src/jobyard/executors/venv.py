"""The setup step that builds a job's pip virtualenv: `python -m jobyard.executors.venv venv PATH
[--check] [--timeout=S] -- PIP_ARGS`, run by the job itself before its entrypoint (the Ray face
plans it: api/ray/runtime_env.py), on whichever executor runs the job.

One virtualenv per requirement set, built once under a file lock and marked ready, then reused
by every later job with the same set. As Ray's pip environments do, it sees the server
interpreter's packages after its own (a .pth file adds the base site-packages behind the
virtualenv's), and its build, waiting for the lock included, is bounded by the runtime_env's
setup timeout. Each pip step runs in a process group of its own, so a timeout or a stop of the
job ends it and whatever it started. A build that fails says why, then SETUP_FAILED, and exits
SETUP_FAILED_EXIT (model/setup.py).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobyard.model.setup import (
    DEFAULT_SETUP_TIMEOUT,
    SETUP_FAILED,
    SETUP_FAILED_EXIT,
    VENV_BUILDER,
    VENV_READY,
)

_BASE_PTH = "_jobyard_base_site.pth"


class _TimedOut(Exception):
    pass


class _Deadline:
    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - time.monotonic())


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fail(lines: Sequence[str]) -> int:
    for line in [*lines, SETUP_FAILED]:
        _say(line)
    return SETUP_FAILED_EXIT


def timed_out_lines(seconds: float) -> list[str]:
    """Ray's words for a runtime_env that took longer than its setup_timeout_seconds."""
    return [
        f"Failed to install runtime_env within the timeout of {seconds:g} seconds. Consider "
        "increasing the timeout in the runtime_env config. For example: ",
        '    runtime_env={"config": {"setup_timeout_seconds": 1800}, ...}',
        f"If not provided, the default timeout is {DEFAULT_SETUP_TIMEOUT:g} seconds. ",
        f"TimeoutError: runtime_env setup timed out after {seconds:g} seconds",
    ]


def _lock(lock: Any, deadline: _Deadline) -> None:
    """The build lock, waited for no longer than the deadline (another job may be building
    the same virtualenv)."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline.left()
            if left is not None and left <= 0:
                raise _TimedOut from None
            time.sleep(0.1 if left is None else min(0.1, left))


def _kill_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _run(step: Sequence[str], deadline: _Deadline) -> int:
    """One step in a process group of its own, so that a timeout ends it and whatever it
    started; a stop signal to the job is passed on to it."""
    process = subprocess.Popen(step, stdin=subprocess.DEVNULL, process_group=0)  # noqa: S603 - our own argv

    def forward(signum: int, _frame: Any) -> None:
        _kill_group(process, signum)
        raise SystemExit(128 + signum)

    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in stops}
    try:
        return process.wait(timeout=deadline.left())
    except subprocess.TimeoutExpired:
        _kill_group(process, signal.SIGKILL)
        process.wait()
        raise _TimedOut from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def inherit_base_packages(venv: Path) -> None:
    """Put this interpreter's site-packages behind the virtualenv's own, as Ray's pip
    environments see the packages of the Python that runs Ray (addsitedir, so that the base's
    own .pth files, editable installs among them, work too)."""
    where = {"base": str(venv), "platbase": str(venv)}
    own = Path(sysconfig.get_path("purelib", scheme="venv", vars=where))
    base = [d for d in site.getsitepackages() if Path(d).is_dir() and Path(d) != own]
    lines = [f"import site; site.addsitedir({d!r})" for d in base]
    own.mkdir(parents=True, exist_ok=True)
    (own / _BASE_PTH).write_text("".join(line + "\n" for line in lines))


def _build_steps(path: Path, pip_args: Sequence[str], check: bool) -> list[list[str]]:
    python = str(path / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    steps = [[*pip, "install", "--no-input", *pip_args]]
    if check:
        steps.append([*pip, "check"])
    return steps


def _build(path: Path, pip_args: Sequence[str], check: bool, deadline: _Deadline) -> int:
    shutil.rmtree(path, ignore_errors=True)
    _say(f"jobyard: installing {shlex.join(pip_args)} into {path}")
    venv = [sys.executable, "-m", "venv", "--without-pip", str(path)]
    for step in [venv, *_build_steps(path, pip_args, check)]:
        code = _run(step, deadline)
        if code != 0:
            shutil.rmtree(path, ignore_errors=True)
            failed = f"jobyard: runtime_env setup failed: {shlex.join(step)} exited with {code}"
            return _fail([failed])
        if step is venv:
            inherit_base_packages(path)
    (path / VENV_READY).touch()
    return 0


def build_venv(
    path: Path, pip_args: Sequence[str], *, check: bool, timeout: float | None = None
) -> int:
    """Build the virtualenv at `path` once (under a lock), then mark it ready; within
    `timeout` seconds, else fail as Ray does."""
    deadline = _Deadline(timeout)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        try:
            _lock(lock, deadline)
            if (path / VENV_READY).exists():
                return 0
            return _build(path, pip_args, check, deadline)
        except _TimedOut:
            shutil.rmtree(path, ignore_errors=True)
            return _fail(timed_out_lines(timeout or 0))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {VENV_BUILDER}")
    commands = parser.add_subparsers(dest="command", required=True)
    venv = commands.add_parser("venv", help="build a pip virtualenv once")
    venv.add_argument("path", type=Path)
    venv.add_argument("--check", action="store_true")
    venv.add_argument("--timeout", type=float, default=None)
    venv.add_argument("pip_args", nargs="+")
    args = parser.parse_args(argv)
    return build_venv(args.path, args.pip_args, check=args.check, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
