"""Kept for jobs queued by jobyard 0.1.0, whose setup steps run `python -m
jobyard.service.runtime_env venv ...`: the virtualenv builder is executors/venv.py now, and the
Ray face's runtime environments are api/ray/runtime_env.py."""

from __future__ import annotations

import sys

from jobyard.executors.venv import main

if __name__ == "__main__":
    sys.exit(main())
