"""The setup step a job of the Ray face runs before its entrypoint, as Ray's supervisor does.

It writes Ray's own lines at the top of the job's log ("Runtime env is setting up.", then
"Running entrypoint for job <id>: <entrypoint>" once the environment is ready, which clients
and Ray's tests look for), runs the runtime_env's own step (a pip virtualenv, or the
failure of what cannot be set up here) in between, and leaves OMP_NUM_THREADS as Ray's
supervisor does: the driver's whole CPUs, at least 1, unless it is set already.
"""

from __future__ import annotations

import shlex

from jobyard.api.ray.mapping import SETTING_UP, omp_num_threads

# The entrypoint is shown whole up to this length (the setup step has a size limit of its own).
MAX_SHOWN = 4096


def entry_line(submission_id: str, entrypoint: str) -> str:
    """Ray's line before the entrypoint runs (job_supervisor.py)."""
    return f"Running entrypoint for job {submission_id}: {entrypoint}"


def _shown(entrypoint: str) -> str:
    if len(entrypoint) <= MAX_SHOWN:
        return entrypoint
    return f"{entrypoint[:MAX_SHOWN]} [... {len(entrypoint) - MAX_SHOWN} more characters]"


def driver_setup(submission_id: str, entrypoint: str, *, env_setup: str | None, cpus: float) -> str:
    """The shell lines of the job's setup step (run under `set -e`, before the entrypoint)."""
    stamp = "\"$(date '+%Y-%m-%d %H:%M:%S')\""  # Ray's logger: "<time>\tINFO <where> -- <text>"
    entry = shlex.quote(entry_line(submission_id, _shown(entrypoint)))
    lines = [
        f"printf '%s\\tINFO jobyard -- %s\\n' {stamp} {shlex.quote(SETTING_UP)}",
        *([env_setup] if env_setup else []),
        f'[ "${{OMP_NUM_THREADS+set}}" = set ] || export OMP_NUM_THREADS={omp_num_threads(cpus)}',
        f"printf '%s\\n' {entry}",
    ]
    return "\n".join(lines)
