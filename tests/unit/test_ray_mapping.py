"""The Ray face's pure translations: metadata keys as label keys, setup failures read from a
log's tail, OMP_NUM_THREADS, node ids and addresses, runtime_env config, the setup step."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, strategies as st

from jobyard.api.ray.driver import MAX_SHOWN, driver_setup, entry_line
from jobyard.api.ray.mapping import (
    MAX_LABEL_KEY,
    RUNTIME_ENV_SETUP_FAILURE,
    error_type,
    label_key,
    message,
    metadata_key,
    node_id,
    omp_num_threads,
    setup_failure,
)
from jobyard.api.ray.nodes import NodeAddresses, resolve
from jobyard.api.ray.runtime_env import (
    DEFAULT_SETUP_TIMEOUT,
    SETUP_FAILED,
    SETUP_FAILED_EXIT,
    failed_setup,
)
from jobyard.api.ray.schemas import job_details, read_runtime_env
from jobyard.errors import InvalidInput
from jobyard.model import Job, JobSpec, JobState, TerminationReason
from jobyard.model.job import Task, check_labels

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(state: JobState = JobState.FAILED, exit_code: int | None = None, **extra: object) -> Job:
    fields: dict[str, object] = {
        "id": 1,
        "display_id": "Ab12Cd",
        "submission_id": "raysubmit_x",
        "name": "echo",
        "owner": "admin",
        "queue": "default",
        "pool": "default",
        "priority": 0,
        "labels": {},
        "spec": JobSpec(entrypoint="echo hi"),
        "state": state,
        "reason": TerminationReason.EXIT_NONZERO if state is JobState.FAILED else None,
        "exit_code": exit_code,
        "created_at": NOW,
        "updated_at": NOW,
        "finished_at": NOW if state.is_terminal() else None,
        "tasks": [Task(index=0, name="t", node="vm", pid=42, exit_code=exit_code)],
    }
    return Job.model_validate({**fields, **extra})


# ---- metadata keys -----------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_any_metadata_key_is_a_label_key_and_comes_back(key: str) -> None:
    """Every key of up to 71 bytes fits (the Ray face refuses longer ones naming the key)."""
    encoded = label_key(key)
    if len(key.encode()) > 71:
        assume(len(encoded) <= MAX_LABEL_KEY)  # a longer key that needs no encoding fits too
    check_labels({encoded: "v"})  # a valid label key (raises otherwise)
    assert metadata_key(encoded) == key


def test_label_keys_stay_as_they_are_where_they_can() -> None:
    assert label_key("task_type") == "task_type" and metadata_key("task_type") == "task_type"
    assert label_key("ray.metadata.kabc") != "ray.metadata.kabc"  # the escape is escaped
    assert metadata_key("ray.metadata.k!!") == "ray.metadata.k!!"  # not ours: left alone


# ---- setup failures ----------------------------------------------------------------------------


def test_a_setup_failure_is_the_exit_code_and_the_last_line() -> None:
    began = "2026-01-01 00:00:00\tINFO jobyard -- Runtime env is setting up."
    tail = f"{began}\npip said no\n{SETUP_FAILED}\n"
    failed = job(exit_code=SETUP_FAILED_EXIT)
    assert setup_failure(failed, tail) == "pip said no"
    assert error_type(failed, tail) == RUNTIME_ENV_SETUP_FAILURE
    assert message(failed, tail) == (
        "runtime_env setup failed: Failed to set up runtime environment.\npip said no"
    )
    details = job_details(failed, tail, "127.0.0.1")
    assert details["driver_info"] is None and details["driver_exit_code"] is None
    assert details["driver_node_id"] is None


@pytest.mark.parametrize(
    ("exit_code", "tail"),
    [
        (SETUP_FAILED_EXIT, "the entrypoint's own output\n"),  # it exited 78 itself
        (1, f"{SETUP_FAILED}\n"),  # printed the line, exited otherwise
        (SETUP_FAILED_EXIT, None),  # no log read
    ],
)
def test_anything_else_is_the_entrypoints_failure(exit_code: int, tail: str | None) -> None:
    failed = job(exit_code=exit_code)
    assert setup_failure(failed, tail) is None
    assert error_type(failed, tail) == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert job_details(failed, tail)["driver_exit_code"] == exit_code


def test_the_seeds_empty_strings_and_maps() -> None:
    done = job(JobState.SUCCEEDED, 0)
    details = job_details(done, None, "10.0.0.7")
    assert details["error_type"] == "" and details["metadata"] == {}
    assert details["driver_info"] == {"id": "Ab12Cd", "node_ip_address": "10.0.0.7", "pid": "42"}
    assert details["driver_node_id"] == node_id("vm") and len(node_id("vm")) == 56
    pending = job(JobState.QUEUED, tasks=[])
    assert job_details(pending)["driver_info"] is None
    assert job_details(pending)["driver_node_id"] is None


def test_failed_setup_step_ends_with_the_line_and_the_code() -> None:
    step = failed_setup(["runtime_env.conda: no"])
    assert step.endswith(f"exit {SETUP_FAILED_EXIT}") and SETUP_FAILED in step


# ---- OMP_NUM_THREADS, the setup step ----------------------------------------------------------


@pytest.mark.parametrize(("cpus", "threads"), [(0, 1), (0.5, 1), (1, 1), (2.9, 2), (16, 16)])
def test_omp_num_threads_is_whole_cpus_at_least_one(cpus: float, threads: int) -> None:
    assert omp_num_threads(cpus) == threads


def test_the_setup_step_shows_a_long_entrypoint_shortened() -> None:
    entrypoint = "echo " + "x" * (MAX_SHOWN * 4)
    step = driver_setup("sid", entrypoint, env_setup=None, cpus=2)
    assert len(step) < MAX_SHOWN + 1000 and "OMP_NUM_THREADS=2" in step
    assert entry_line("sid", "true") == "Running entrypoint for job sid: true"


# ---- runtime_env config -----------------------------------------------------------------------


def test_setup_timeout_is_rays_default_a_number_or_none() -> None:
    assert read_runtime_env({})[0].setup_timeout == DEFAULT_SETUP_TIMEOUT
    config = {"setup_timeout_seconds": 5, "eager_install": True, "log_files": []}
    assert read_runtime_env({"config": config})[0].setup_timeout == 5
    assert read_runtime_env({"config": {"setup_timeout_seconds": -1}})[0].setup_timeout is None
    for bad in (0, -2, True, "5"):
        with pytest.raises(InvalidInput, match="setup_timeout_seconds"):
            read_runtime_env({"config": {"setup_timeout_seconds": bad}})
    assert read_runtime_env({"conda": "env", "_inject_current_ray": True})[0].conda


# ---- node addresses ----------------------------------------------------------------------------


def test_an_address_is_kept_and_a_name_that_does_not_resolve_is_this_machine() -> None:
    assert resolve("10.1.2.3") == "10.1.2.3"
    assert resolve("no..such") == "127.0.0.1"  # refused before any DNS query


async def test_each_node_is_resolved_once() -> None:
    asked: list[str] = []

    def fake(node: str) -> str:
        asked.append(node)
        return "10.0.0.1"

    nodes = NodeAddresses(fake)
    assert (await nodes.of(["a", "a", None]))["a"] == "10.0.0.1"
    await nodes.of(["a"])
    assert asked == ["a"]
