"""Pure domain model: no I/O."""

from jobyard.model.events import Event, EventType
from jobyard.model.job import (
    Attempt,
    Job,
    JobSpec,
    PendingReason,
    Placement,
    PortProtocol,
    PortSpec,
    Resources,
    StateLogEntry,
    Task,
    TaskState,
    TerminationReason,
)
from jobyard.model.state import (
    LIVE_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    JobState,
    check_transition,
    event_for,
)

__all__ = [
    "Attempt",
    "PendingReason",
    "LIVE_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Event",
    "EventType",
    "Job",
    "JobSpec",
    "JobState",
    "Placement",
    "PortProtocol",
    "PortSpec",
    "Resources",
    "StateLogEntry",
    "Task",
    "TaskState",
    "TerminationReason",
    "check_transition",
    "event_for",
]
