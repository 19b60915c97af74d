"""The dashboard's pure shaping: the last hour's running/queued counts and form field errors;
its state filter's list of states."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

import jobyard.web
from jobyard.model import LIVE_STATES, JobState
from jobyard.model.state import TRANSITIONS
from jobyard.service import JobRequest
from jobyard.web.views import activity, field_errors
from tests.factories import make_job

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def minutes_ago(n: float) -> datetime:
    return NOW - timedelta(minutes=n)


def test_activity_counts_jobs_that_waited_or_ran_during_each_minute():
    job = make_job(1, state=JobState.SUCCEEDED).model_copy(
        update={
            "created_at": minutes_ago(30.5),
            "started_at": minutes_ago(20.5),
            "finished_at": minutes_ago(10.5),
        }
    )
    waiting = make_job(2).model_copy(update={"created_at": minutes_ago(5.5)})
    old = make_job(3, state=JobState.RUNNING).model_copy(
        update={"created_at": minutes_ago(600), "started_at": minutes_ago(500)}
    )
    short = make_job(4, state=JobState.SUCCEEDED).model_copy(
        update={
            "created_at": minutes_ago(3.3),
            "started_at": minutes_ago(3.2),
            "finished_at": minutes_ago(3.1),
        }
    )
    found = activity([job, waiting, old, short], NOW, minutes=60)
    # The minute ending 3 min ago: waiting and short waited; old and short ran.
    assert (found["queued"][56], found["running"][56]) == (2, 2)
    assert len(found["times"]) == 60 and found["times"][-1] == NOW.isoformat()
    at = {minutes: 59 - minutes for minutes in (40, 25, 15, 8, 0)}  # index of "n minutes ago"
    assert [found["queued"][at[m]] for m in (40, 25, 15, 8, 0)] == [0, 1, 0, 0, 1]
    assert [found["running"][at[m]] for m in (40, 25, 15, 8, 0)] == [1, 1, 2, 1, 1]


def test_field_errors_name_the_form_fields_without_the_spec_prefix():
    with pytest.raises(ValidationError) as exc:
        JobRequest.model_validate(
            {"spec": {"entrypoint": "x", "resources": {"cpus": "lots"}, "replicas": 0}}
        )
    fields = {e["field"] for e in field_errors(exc.value)}
    assert fields == {"resources.cpus", "replicas"}


def test_the_state_filter_offers_the_states_a_job_can_be_in():
    """The dashboard's list of states (app.js) is the core's, less SCHEDULED, which no edge
    enters (docs/state-machine.md)."""
    script = (Path(jobyard.web.__file__).parent / "static" / "app.js").read_text()
    found = re.search(r"^const STATES = (\[.*\]);$", script, re.MULTILINE)
    assert found is not None
    reachable = [
        s for s in JobState if s is JobState.QUEUED or any(s in t for t in TRANSITIONS.values())
    ]
    assert json.loads(found.group(1)) == [s.value for s in reachable]
    assert JobState.SCHEDULED not in reachable and JobState.SCHEDULED not in LIVE_STATES
