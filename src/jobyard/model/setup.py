"""The setup step's word to the faces: how a job's setup step (`JobSpec.setup`, run before its
entrypoint) says that its environment could not be made, so that a face can tell that from the
entrypoint's own failure. The step that builds a virtualenv (executors/venv.py) and the Ray
face that plans it and reads the outcome (api/ray/runtime_env.py, api/ray/mapping.py) both
speak it.
"""

from __future__ import annotations

SETUP_FAILED_EXIT = 78  # sysexits' EX_CONFIG: the job's environment could not be made
SETUP_FAILED = "jobyard: runtime_env setup failed; the entrypoint was not run"  # the last line
DEFAULT_SETUP_TIMEOUT = 600.0  # Ray's default setup_timeout_seconds
VENV_READY = ".jobyard-ready"  # in a virtualenv whose build finished: it is reused as it is
VENV_BUILDER = "jobyard.executors.venv"  # `python -m` it: venv PATH [--check] [--timeout] -- ARGS
