"""The one core API. Faces call this; it enforces ownership and the state machine."""

from jobyard.executors.base import Shell, ShellCommand, TerminalSize
from jobyard.service.auth import AuthService, User
from jobyard.service.jobs import JobQuery, JobRequest, JobService, Submitted
from jobyard.service.logs import LogQuery, LogService
from jobyard.store.feed import Watch

__all__ = [
    "AuthService",
    "JobQuery",
    "JobRequest",
    "JobService",
    "LogQuery",
    "LogService",
    "Shell",
    "ShellCommand",
    "Submitted",
    "TerminalSize",
    "User",
    "Watch",
]
