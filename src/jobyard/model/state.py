"""The job state machine: one transition table, checked on every change."""

from __future__ import annotations

import enum

from jobyard.errors import Conflict
from jobyard.model.events import EventType


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    # No edge enters SCHEDULED: a placed job is claimed QUEUED -> STARTING in one change (see
    # docs/state-machine.md). The name stays for the faces and clients that know it.
    SCHEDULED = "SCHEDULED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    def is_live(self) -> bool:
        """Has (or may have) processes: started and not yet finished."""
        return self in LIVE_STATES


_S = JobState
TERMINAL_STATES = frozenset({_S.SUCCEEDED, _S.FAILED, _S.STOPPED})
LIVE_STATES = frozenset({_S.STARTING, _S.RUNNING, _S.STOPPING})

# Who triggers each edge is documented in docs/state-machine.md.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _S.QUEUED: frozenset({_S.STARTING, _S.STOPPED, _S.FAILED}),
    _S.SCHEDULED: frozenset({_S.QUEUED, _S.STOPPED, _S.FAILED}),  # entered by no edge
    # Back to QUEUED from a started state: only a retry (a failed attempt, max_retries left).
    _S.STARTING: frozenset({_S.RUNNING, _S.STOPPING, _S.FAILED, _S.QUEUED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.STOPPING, _S.QUEUED}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED, _S.QUEUED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
}


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobState, target: JobState) -> None:
    """Raise Conflict unless `current -> target` is in the table. Terminal states have no exits."""
    if not can_transition(current, target):
        raise Conflict(f"illegal transition {current.value} -> {target.value}", field="state")


def event_for(state: JobState) -> tuple[EventType, str]:
    """The Kubernetes-style (type, reason) of the event emitted on entering `state`."""
    return _EVENTS[state]


_EVENTS = {
    _S.QUEUED: (EventType.NORMAL, "Queued"),
    _S.SCHEDULED: (EventType.NORMAL, "Scheduled"),
    _S.STARTING: (EventType.NORMAL, "Scheduled"),  # placed on a node, its start under way
    _S.RUNNING: (EventType.NORMAL, "Started"),
    _S.STOPPING: (EventType.NORMAL, "Killing"),
    _S.SUCCEEDED: (EventType.NORMAL, "Completed"),
    _S.FAILED: (EventType.WARNING, "Failed"),
    _S.STOPPED: (EventType.NORMAL, "Stopped"),
}
