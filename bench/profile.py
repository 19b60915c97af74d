"""Optional sampling profiles of the server (`--profile`): py-spy attached for a scenario's
whole run, raw collapsed stacks saved, and a short summary of where the active time went."""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

RATE = 100  # samples per second
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*)\)$")
_THREAD = re.compile(r"^thread \(\d+\): (?P<name>.*?)(?:_\d+)?$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy record on `pid` while the context is open; collapsed stacks into `output`.
    Samples threads that are running, or with `gil_only` only the thread holding the GIL."""

    def __init__(self, pid: int, output: Path, *, gil_only: bool = False) -> None:
        self._pid = pid
        self._output = output
        self._gil_only = gil_only
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        binary = py_spy()
        if binary is None:
            print("note: py-spy not found (pip install py-spy); not profiling", file=sys.stderr)
            return self
        self._output.parent.mkdir(parents=True, exist_ok=True)
        command = [binary, "record", "--pid", str(self._pid), "--format", "raw"]
        command += ["--output", str(self._output), "--rate", str(RATE), "--threads"]
        command += ["--nolineno", "--nonblocking", *(["--gil"] if self._gil_only else [])]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@dataclass
class Summary:
    samples: int
    threads: collections.Counter[str]
    packages: collections.Counter[str]  # by the package of the innermost frame ("self")
    functions: collections.Counter[str]  # innermost jobyard frame of each sample ("inclusive")


def _package(file: str) -> str:
    if file.startswith("<"):
        return "python"
    return file.split("/", 1)[0].removesuffix(".py") if "/" in file else f"stdlib:{file}"


def _frames(stack: str) -> tuple[str, list[tuple[str, str]]]:
    thread, *frames = stack.split(";")
    match = _THREAD.match(thread)
    name = match.group("name") if match else thread
    parsed = [(m.group("func"), m.group("file")) for f in frames if (m := _FRAME.match(f))]
    return name, parsed


def _innermost_ours(frames: list[tuple[str, str]]) -> str:
    """The innermost jobyard frame, and the package running below it if that is not jobyard."""
    ours = [i for i, (_func, file) in enumerate(frames) if file.startswith("jobyard/")]
    if not ours:
        return "(outside jobyard)"
    func, file = frames[ours[-1]]
    below = "" if ours[-1] == len(frames) - 1 else f" > {_package(frames[-1][1])}"
    return f"{func} ({file}){below}"


def summarize(raw: Path) -> Summary:
    summary = Summary(0, collections.Counter(), collections.Counter(), collections.Counter())
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, frames = _frames(stack)
        summary.samples += count
        summary.threads[thread] += count
        if frames:
            summary.packages[_package(frames[-1][1])] += count
        summary.functions[f"[{thread}] {_innermost_ours(frames)}"] += count
    return summary


def render(summary: Summary, top: int = 12) -> str:
    total = max(summary.samples, 1)
    lines = [f"{summary.samples} samples at {RATE}/s ({summary.samples / RATE:.1f} s active)"]
    for title, counter in (
        ("threads", summary.threads),
        ("innermost package (self time)", summary.packages),
        ("innermost jobyard function > package below it", summary.functions),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {n / total:6.1%}  {key}" for key, n in counter.most_common(top)]
    return "\n".join(lines)
