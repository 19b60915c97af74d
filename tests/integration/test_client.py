"""The Python SDK (jobyard.client) against a real server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import httpx
import pytest

import jobyard.client
from jobyard.client import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    Job,
    JobState,
    Resources,
    ServerUnreachable,
    WaitTimeout,
)
from tests.helpers import LiveServer, wait_for


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[Client]:
    with Client(live_server.url, live_server.token) as sdk:
        yield sdk
        stop_live_jobs(sdk)


def stop_live_jobs(sdk: Client) -> None:
    """Jobs outlive the server by design: never leave one running after a test."""
    for job in sdk.iter_jobs():
        if not job.is_terminal():
            with contextlib.suppress(ApiError):
                sdk.stop(job.id)
            sdk.wait(job.id, timeout=15, poll=0.05)


def running(sdk: Client, job: Job) -> Job:
    def current() -> Job | None:
        latest = sdk.get(job.id)
        return latest if latest.state is JobState.RUNNING else None

    found = wait_for(current)
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- submit, get, wait ------------------------------------------------------------------------


def test_submit_returns_a_typed_job_found_by_any_ref(client: Client) -> None:
    job = client.submit(
        ["sh", "-c", 'echo "$GREETING"'],
        name="hello",
        env={"GREETING": "hi"},
        resources=Resources(cpus=0.5, memory="64MiB"),
        labels={"team": "ml"},
        submission_id="hello-1",
        priority=5,
        max_runtime=60,
    )
    assert job.state is JobState.QUEUED and job.name == "hello" and job.priority == 5
    assert job.spec.resources.memory == 64 and job.spec.env == {"GREETING": "hi"}
    for ref in (job.id, str(job.id), job.display_id, "hello-1"):
        assert client.get(ref).id == job.id
    done = client.wait(job.display_id)
    assert (done.state, done.exit_code, done.reason) == (JobState.SUCCEEDED, 0, "SUCCEEDED")
    assert done.tasks[0].exit_code == 0 and done.tasks[0].state == "EXITED"
    assert [c.state for c in done.state_log][-1] is JobState.SUCCEEDED
    assert client.logs(job.id) == "hi\n"


def test_a_shell_string_runs_and_a_failure_keeps_its_exit_code(client: Client) -> None:
    done = client.wait(client.submit("echo out; exit 3", working_dir="/tmp").id)
    assert (done.state, done.exit_code, done.reason) == (JobState.FAILED, 3, "EXIT_NONZERO")
    assert client.logs(done.id) == "out\n"


def test_resubmitting_a_submission_id_is_idempotent_unless_the_body_differs(
    client: Client,
) -> None:
    first = client.submit(["true"], submission_id="once", resources={"cpus": 1})
    assert client.submit(["true"], submission_id="once", resources={"cpus": 1}).id == first.id
    with pytest.raises(ApiError) as caught:
        client.submit(["false"], submission_id="once")
    assert (caught.value.status, caught.value.code) == (409, "conflict")
    assert caught.value.field == "submission_id"


def test_wait_gives_up_after_its_timeout_with_the_last_state(client: Client) -> None:
    job = client.submit("sleep 30")
    with pytest.raises(WaitTimeout) as caught:
        client.wait(job.id, timeout=0.3, poll=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert not caught.value.job.is_terminal() and job.display_id in str(caught.value)


# ---- list -------------------------------------------------------------------------------------


def test_iter_jobs_follows_cursors_through_every_page(client: Client) -> None:
    ids = [client.submit(["true"], name=f"batch-{i}", labels={"batch": "b1"}).id for i in range(5)]
    client.submit(["true"], name="other")
    page = client.list(labels={"batch": "b1"}, limit=2)
    assert (len(page.items), page.total) == (2, 5) and page.next_cursor is not None
    assert [j.id for j in page.items] == ids[::-1][:2]  # newest first
    found = client.iter_jobs(labels={"batch": None}, order="asc", limit=2)
    assert [job.id for job in found] == ids
    assert [j.name for j in client.iter_jobs(q="other")] == ["other"]
    for job_id in ids:
        client.wait(job_id)
    assert client.list(state=["SUCCEEDED", "FAILED"], labels={"batch": "b1"}).total == 5
    assert client.list(state=JobState.QUEUED, queue="default", owner="admin").total == 0


def test_unknown_keywords_are_a_type_error(client: Client) -> None:
    with pytest.raises(TypeError, match="nmae"):
        client.submit(["true"], nmae="typo")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="stat"):
        client.list(stat="RUNNING")  # type: ignore[call-arg]


# ---- stop, delete, events ---------------------------------------------------------------------


def test_stop_then_delete(client: Client) -> None:
    job = running(client, client.submit("sleep 30"))
    with pytest.raises(ApiError) as refused:
        client.delete(job.id)
    assert (refused.value.status, refused.value.code) == (409, "conflict")
    assert client.stop(job.id).state in (JobState.STOPPING, JobState.STOPPED)
    done = client.wait(job.id)
    assert (done.state, done.reason) == (JobState.STOPPED, "STOPPED_BY_USER")
    with pytest.raises(ApiError) as late:
        client.stop(job.id)
    assert late.value.status == 409
    client.delete(job.id)
    with pytest.raises(ApiError) as gone:
        client.get(job.id)
    assert (gone.value.status, gone.value.code) == (404, "not_found")


def test_force_delete_removes_a_live_job(client: Client) -> None:
    job = running(client, client.submit("sleep 30"))
    client.delete(job.display_id, force=True)
    assert client.list().total == 0


def test_events_follow_the_lifecycle(client: Client) -> None:
    job = client.wait(client.submit(["true"]).id)
    reasons = [event.reason for event in client.events(job.id)]
    assert reasons[0] == "Queued" and reasons[-1] == "Completed" and "Started" in reasons
    assert all(event.type == "Normal" for event in client.events(job.id))


# ---- logs -------------------------------------------------------------------------------------


def test_logs_tail_offset_and_task(client: Client) -> None:
    job = client.submit('for i in 1 2 3; do echo "rank $RANK line $i"; done', replicas=2)
    client.wait(job.id)
    assert client.logs(job.id) == "".join(f"rank 0 line {i}\n" for i in (1, 2, 3))
    assert client.logs(job.id, tail=1) == "rank 0 line 3\n"
    assert client.logs(job.id, offset=len("rank 0 line 1\n")).startswith("rank 0 line 2")
    assert client.logs(job.id, task=1).startswith("rank 1 line 1")
    assert client.logs(job.id, task=f"{job.display_id}-worker-1").startswith("rank 1")
    with pytest.raises(ApiError) as caught:
        client.logs(job.id, task="7")
    assert (caught.value.status, caught.value.field) == (404, "task")


def test_follow_logs_streams_until_the_task_ends(client: Client) -> None:
    job = client.submit("echo first; sleep 0.3; echo second")
    with client.follow_logs(job.id) as stream:
        assert "".join(stream) == "first\nsecond\n"


def test_follow_logs_yields_output_while_the_job_runs(client: Client) -> None:
    job = client.submit("echo started; sleep 30")
    stream = client.follow_logs(job.id)
    assert next(stream) == "started\n"  # before the job ends
    client.stop(job.id)
    assert "started" not in "".join(stream)  # it ends (and closes itself) once the task does
    with client.follow_logs(job.id) as again:  # closing early is fine too
        assert next(again).startswith("started\n")


def test_follow_logs_of_an_unknown_job_or_task_raises_at_once(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.follow_logs("no-such-job")
    assert (caught.value.status, caught.value.field) == (404, "job")
    job = client.submit(["true"])
    with pytest.raises(ApiError) as no_task:
        client.follow_logs(job.id, task=3)
    assert (no_task.value.status, no_task.value.field) == (404, "task")


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "options", "field"),
    [
        ("", {}, "entrypoint"),
        (["true"], {"replicas": 0}, "replicas"),
        (["true"], {"resources": {"gpus": 1}}, "resources.gpus"),
        (["true"], {"labels": {"bad key": "x"}}, "labels"),
    ],
)
def test_bad_input_raises_an_api_error_naming_the_field(
    client: Client, entrypoint: str | list[str], options: dict[str, object], field: str
) -> None:
    with pytest.raises(ApiError) as caught:
        client.submit(entrypoint, **options)  # type: ignore[arg-type]
    assert caught.value.status in (400, 422) and caught.value.field == field
    assert caught.value.message and "Traceback" not in caught.value.message


def test_unknown_jobs_and_bad_queries_are_api_errors(client: Client) -> None:
    with pytest.raises(ApiError) as missing:
        client.get("nope")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "not found" in str(missing.value)
    with pytest.raises(ApiError) as bad_state:
        client.list(state="NAPPING")
    assert bad_state.value.field == "state"


def test_an_unreachable_server_raises_a_connection_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t") as sdk, pytest.raises(ServerUnreachable) as caught:
        sdk.health()
    assert isinstance(caught.value, ConnectionError) and isinstance(caught.value, ClientError)
    assert url in str(caught.value)


def test_answers_without_the_error_envelope_are_api_errors_too() -> None:
    seen: list[httpx.Request] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(502, text="<html>Bad Gateway</html>")

    transport = httpx.MockTransport(proxy)
    with (
        Client("http://jobyard.test/", "s3cret", transport=transport) as sdk,
        pytest.raises(ApiError) as caught,
    ):
        sdk.get("a/b")
    assert (caught.value.status, caught.value.code) == (502, "http_error")
    assert "Bad Gateway" in caught.value.message
    assert seen[0].url.raw_path == b"/api/v1/jobs/a%2Fb"
    assert seen[0].headers["Authorization"] == "Bearer s3cret"


# ---- discovery and users ----------------------------------------------------------------------


def test_token_comes_from_the_argument_then_env_then_the_admin_token_file(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBYARD_URL", live_server.url)
    monkeypatch.setenv("JOBYARD_HOME", str(live_server.settings.home))
    monkeypatch.delenv("JOBYARD_TOKEN", raising=False)
    with Client() as from_file:
        assert from_file.url == live_server.url
        assert from_file.whoami().admin
    monkeypatch.setenv("JOBYARD_TOKEN", "wrong")
    with Client() as from_env, pytest.raises(ApiError) as caught:
        from_env.whoami()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with Client(token=live_server.token) as from_argument:
        assert from_argument.whoami().name == "admin"


def test_without_any_token_the_server_answers_401(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("JOBYARD_TOKEN", raising=False)
    monkeypatch.setenv("JOBYARD_HOME", str(tmp_path))
    with Client(live_server.url) as anonymous:
        assert anonymous.health().status == "ok"  # needs no token
        with pytest.raises(ApiError) as caught:
            anonymous.list()
    assert caught.value.status == 401


def test_users_created_by_an_admin_see_only_their_jobs(
    client: Client, live_server: LiveServer
) -> None:
    client.submit(["true"])
    alice = client.create_user("alice")
    with Client(live_server.url, alice.token) as as_alice:
        assert as_alice.whoami().name == "alice" and not as_alice.whoami().admin
        assert as_alice.list().total == 0
        with pytest.raises(ApiError) as caught:
            as_alice.create_user("mallory", admin=True)
    assert caught.value.status == 403


def test_the_public_surface_is_what_all_lists() -> None:
    exported = {name for name in dir(jobyard.client) if not name.startswith("_")}
    modules = {"calls", "discovery", "errors", "models", "sdk", "usage"}
    assert exported - modules == set(jobyard.client.__all__)


# ---- async ------------------------------------------------------------------------------------


async def test_the_async_client_does_the_same(live_server: LiveServer) -> None:
    async with AsyncClient(live_server.url, live_server.token) as sdk:
        job = await sdk.submit("echo one; sleep 0.2; echo two", labels={"kind": "async"})
        stream = await sdk.follow_logs(job.display_id)
        async with stream:
            assert [text async for text in stream] in (["one\n", "two\n"], ["one\ntwo\n"])
        done = await sdk.wait(job.id, timeout=10)
        assert done.state is JobState.SUCCEEDED and await sdk.logs(job.id, tail=1) == "two\n"
        assert [j.id async for j in sdk.iter_jobs(labels={"kind": "async"}, limit=1)] == [job.id]
        assert (await sdk.list()).total == 1
        assert (await sdk.events(job.id))[-1].reason == "Completed"
        assert (await sdk.whoami()).admin and (await sdk.health()).status == "ok"
        await sdk.delete(job.id)
        with pytest.raises(ApiError) as caught:
            await sdk.stop(job.id)
        assert caught.value.status == 404
        with pytest.raises(ApiError):
            await sdk.follow_logs(job.id)
        sleeper = await sdk.submit("echo up; sleep 30")
        early = await sdk.follow_logs(sleeper.id)
        assert await anext(early) == "up\n"
        await early.aclose()
        with pytest.raises(WaitTimeout):
            await sdk.wait(sleeper.id, timeout=0.1, poll=0.05)
        await sdk.stop(sleeper.id)
        assert (await sdk.wait(sleeper.id)).state is JobState.STOPPED
