"""The SDK (jobyard.client) imports nothing of the core, so it keeps its own copies of the
core's names; these tests keep each copy equal to the core's."""

from __future__ import annotations

import re
import typing

from jobyard import model
from jobyard.client import calls, models
from jobyard.model import EventType, TaskState
from jobyard.model.job import IdleGpuAction


def test_the_sdks_job_states_are_the_cores() -> None:
    assert [s.value for s in models.JobState] == [s.value for s in model.JobState]
    for state in models.JobState:
        assert state.is_terminal() is model.JobState(state.value).is_terminal()


def test_the_sdks_resources_have_the_cores_fields_and_defaults() -> None:
    core, sdk = model.Resources.model_fields, models.Resources.model_fields
    assert set(sdk) == set(core)
    assert {name: f.default for name, f in sdk.items()} == {
        name: f.default for name, f in core.items()
    }


def test_the_sdks_job_spec_fields_are_the_cores() -> None:
    assert set(models.JobSpec.model_fields) <= set(model.JobSpec.model_fields)


def test_the_sdks_idle_gpu_actions_are_the_cores() -> None:
    hints = typing.get_type_hints(calls.SubmitOptions)
    (literal, _none) = typing.get_args(hints["idle_gpu_action"])
    assert set(typing.get_args(literal)) == {a.value for a in IdleGpuAction}


def test_the_values_the_sdks_models_name_are_the_cores() -> None:
    """The SDK types task states and event types as strings and names their values in its
    docstrings: those names are the core's enums."""
    assert re.findall(r"[A-Z]{4,}", models.Task.__doc__ or "") == [s.value for s in TaskState]
    named = re.search(r"`type` is (\w+) or (\w+)", models.Event.__doc__ or "")
    assert named is not None and list(named.groups()) == [t.value for t in EventType]
