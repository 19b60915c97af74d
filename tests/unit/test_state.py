import pytest

from jobyard.errors import Conflict
from jobyard.model import TERMINAL_STATES, TRANSITIONS, JobState, check_transition, event_for
from jobyard.model.events import EventType

S = JobState


def test_every_state_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(JobState)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_are_never_left(terminal: JobState) -> None:
    assert TRANSITIONS[terminal] == frozenset()
    for target in JobState:
        with pytest.raises(Conflict):
            check_transition(terminal, target)


@pytest.mark.parametrize(
    "path",
    [
        [S.QUEUED, S.STARTING, S.RUNNING, S.SUCCEEDED],
        [S.QUEUED, S.STARTING, S.RUNNING, S.FAILED],
        [S.QUEUED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED],
        [S.QUEUED, S.STARTING, S.FAILED],
        [S.QUEUED, S.STOPPED],
        # retries: a failed attempt goes back to the queue instead of ending FAILED
        [S.QUEUED, S.STARTING, S.RUNNING, S.QUEUED, S.STARTING],
        [S.QUEUED, S.STARTING, S.QUEUED],
        [S.QUEUED, S.STARTING, S.RUNNING, S.STOPPING, S.QUEUED],
    ],
)
def test_lifecycle_paths_are_legal(path: list[JobState]) -> None:
    for current, target in zip(path, path[1:], strict=False):
        check_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.SCHEDULED),  # no edge enters SCHEDULED (claimed straight to STARTING)
        (S.STARTING, S.SCHEDULED),
        (S.QUEUED, S.SUCCEEDED),
        (S.FAILED, S.QUEUED),
        (S.STOPPED, S.QUEUED),
        (S.STOPPING, S.RUNNING),
        (S.STOPPING, S.SUCCEEDED),
        (S.STARTING, S.SUCCEEDED),
        (S.RUNNING, S.RUNNING),
    ],
)
def test_illegal_transitions_raise_conflict_naming_both_states(
    current: JobState, target: JobState
) -> None:
    with pytest.raises(Conflict) as info:
        check_transition(current, target)
    assert current.value in info.value.message and target.value in info.value.message


def test_failed_is_a_warning_and_success_is_normal() -> None:
    assert event_for(S.FAILED) == (EventType.WARNING, "Failed")
    assert event_for(S.SUCCEEDED) == (EventType.NORMAL, "Completed")
    assert all(event_for(state)[1] for state in JobState)


def test_no_state_leads_to_scheduled() -> None:
    """SCHEDULED was entered and left in one transaction, so nothing ever stored it: the claim
    goes QUEUED -> STARTING, with the Scheduled event."""
    assert all(S.SCHEDULED not in exits for exits in TRANSITIONS.values())
    assert event_for(S.STARTING) == (EventType.NORMAL, "Scheduled")
