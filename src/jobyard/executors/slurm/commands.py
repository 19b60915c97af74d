"""Running the Slurm tools (sbatch, squeue, scancel, scontrol, sinfo, sacct, srun).

Each call is a short-lived process run in a small thread pool, so the event loop never waits
on one and at most `max_concurrent_commands` run at once (a burst of submissions must not fork
hundreds of sbatch processes on a small server). The tools see a clean environment: the
server's own JOBYARD_* settings never reach them, nor SBATCH_*/SLURM_* options that would
change what sbatch does behind jobyard's back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobyard.config import SlurmSettings

# Prefixes of variables the Slurm tools read as options.
_TOOL_OPTIONS = ("SBATCH_", "SLURM_", "SALLOC_", "SRUN_", "SQUEUE_", "SCANCEL_", "SINFO_")
_UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "Could not establish a configuration source",
)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """The tool's own message, one line, without the "sbatch: error:" prefixes."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        text = "; ".join(line.split("error: ", 1)[-1] for line in lines)
        return text or f"exit status {self.returncode}"

    @property
    def unreachable(self) -> bool:
        return self.returncode == -1 or any(m in self.stderr for m in _UNREACHABLE)


def tool_environment(
    settings: SlurmSettings, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("JOBYARD_") and not k.startswith(_TOOL_OPTIONS)
    }
    conf = settings.conf or (Path(os.environ["SLURM_CONF"]) if "SLURM_CONF" in os.environ else None)
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    return env


class Tools:
    def __init__(self, settings: SlurmSettings) -> None:
        self._settings = settings
        self._env = tool_environment(settings)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            settings.max_concurrent_commands, "jobyard-slurm"
        )

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    def path(self, tool: str) -> str:
        bin_dir = self._settings.bin_dir
        return str(bin_dir / tool) if bin_dir is not None else tool

    def run_sync(
        self,
        tool: str,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        try:
            done = subprocess.run(  # noqa: S603 - fixed tool names, arguments as a list
                [self.path(tool), *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=self._env,
                timeout=timeout or self._settings.command_timeout_seconds,
                cwd="/",
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Result(-1, "", f"{tool} did not answer within its timeout")
        except OSError as exc:
            return Result(-1, "", f"cannot run {tool}: {exc.strerror or exc}")
        return Result(done.returncode, done.stdout, done.stderr)

    async def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float | None = None,
    ) -> Result:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self.run_sync(tool, args, stdin=stdin, timeout=timeout)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
