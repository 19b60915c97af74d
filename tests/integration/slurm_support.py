"""The Slurm cluster the tests share (`.ci/slurm-setup.sh` starts one on this machine).

Tests that use it are skipped, with the reason, where Slurm is not installed or no cluster
answers. They share the one cluster, also between xdist workers: each holds a shared lock, and
a test that fills the node holds it exclusively.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobyard.config import SlurmSettings
from tests.helpers import wait_for


def _find_conf() -> str | None:
    if os.environ.get("SLURM_CONF"):
        return os.environ["SLURM_CONF"]
    for candidate in (
        f"/var/tmp/jobyard-slurm-{pwd.getpwuid(os.getuid()).pw_name}/slurm.conf",
        "/etc/slurm/slurm.conf",
    ):
        if Path(candidate).is_file():
            return candidate
    return None


CONF = _find_conf()
ENV = {**os.environ, **({"SLURM_CONF": CONF} if CONF else {})}
_LOCK = "/tmp/jobyard-slurm-tests.lock"


def _why_skip() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch on PATH); run .ci/slurm-setup.sh"
    ping = subprocess.run(
        ["scontrol", "ping"], capture_output=True, text=True, env=ENV, timeout=10, check=False
    )
    if ping.returncode != 0:
        said = ping.stdout.strip() or ping.stderr.strip()
        return f"no Slurm cluster answers (scontrol ping: {said})"
    return None


SKIP_REASON = _why_skip()


def _why_no_usage() -> str | None:
    """Why sstat gives no figures here (the usage tests skip): no cluster, or no gathering."""
    if SKIP_REASON is not None:
        return SKIP_REASON
    config = slurm("scontrol", "show", "config")
    if re.search(r"^JobAcctGatherType\s*=\s*jobacct_gather/none", config, re.MULTILINE):
        return (
            "the cluster gathers no usage (JobAcctGatherType=jobacct_gather/none): restart it "
            "with .ci/slurm-setup.sh stop; .ci/slurm-setup.sh start"
        )
    return None


def slurm(*args: str) -> str:
    """Run a Slurm tool against the test cluster; its stdout, stripped."""
    return subprocess.run(
        args, capture_output=True, text=True, env=ENV, timeout=30, check=True
    ).stdout.strip()


NO_USAGE_REASON = _why_no_usage()


def slurm_settings(**overrides: Any) -> SlurmSettings:
    return SlurmSettings(conf=Path(CONF) if CONF else None, **overrides)


@contextlib.contextmanager
def holding_the_cluster(tmp_path: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Hold the cluster (shared, or alone); afterwards cancel what the test left in Slurm
    (its jobs' working directories are inside its tmp_path), even when it failed."""
    fd = os.open(_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        mine = [
            line.split("|", 1)[0]
            for line in slurm("squeue", "-h", "-o", "%i|%Z").splitlines()
            if line.split("|", 1)[-1].startswith(str(tmp_path))
        ]
        if mine:
            slurm("scancel", *mine)
        os.close(fd)


@contextlib.contextmanager
def node_filled(cpus: int) -> Iterator[str]:
    """An exclusive job holding all `cpus` of the node, running; cancelled on the way out."""
    filler = slurm(
        "sbatch", "--parsable", "--exclusive", f"--ntasks={cpus}", "-o", "/dev/null",
        "--wrap=sleep 300",
    )  # fmt: skip
    try:
        wait_for(lambda: slurm("squeue", "-h", "-j", filler, "-o", "%T") == "RUNNING", 30)
        yield filler
    finally:
        slurm("scancel", filler)
