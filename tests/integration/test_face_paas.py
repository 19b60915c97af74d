"""The PaaS face on the main port: every endpoint, with the original API's field names."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from jobyard.api.paas.mapping import gpu_names, state_log
from jobyard.api.paas.schemas import parse_envs
from jobyard.config import EnvironmentSpec, GpuSpec, Settings
from jobyard.errors import InvalidInput
from jobyard.model import Job, JobState, StateLogEntry
from tests.factories import make_job
from tests.helpers import LiveServer, make_settings, running_server, wait_for

IMAGE_ID = 633839
GPU = "NVIDIA A16"
_names = itertools.count()

# The first job of the original API's list example, as its documentation prints it.
SEED_JOB: dict[str, Any] = {
    "id": 421236,
    "ctx": {
        "ownerId": 724,
        "nodeId": 1699158,
        "clientID": 10001,
        "nodeDisplayID": "q5zRJv",
        "class": "",
        "aotuRelease": False,
        "releaseTime": None,
        "nodeDomain": 0,
    },
    "state": {
        "status": 3,
        "log": [{"id": 2499018, "status": 6, "ts": {"seconds": 1744082021}, "sourceId": 421236}],
    },
    "status": 3,
    "app": {
        "name": "",
        "ver": "",
        "envs": "model_code=3;env=hello",
        "format": 2,
        "files": None,
        "cmd": "tail -f /dev/null",
        "hostname": "",
        "creds": "",
        "ports": [{"port": 8989, "protocol": 1, "extraData": None}],
        "urls": {"port_22": {"urls": ["ssh://hz-4.matpool.com:26749"]}},
        "fromSnapshotId": 0,
        "SSHAuths": [
            {"BaseOn": {"Cred": {"id": 1887310, "user": "root", "password": "D]3F[wZ%pWS%oM0g"}}}
        ],
        "netConfig": None,
        "remark": "job & instance's name",
        "fromImageId": 633839,
    },
    "res": {
        "cpus": 0,
        "gpus": 0,
        "diskGB": 0,
        "gpuName": "NVIDIA A16",
        "domain": "all",
        "agentDomain": 0,
    },
    "createTime": {"seconds": 1744082021},
    "vols": None,
    "queueLen": 0,
    "nets": [],
    "displayID": "PVpNKd",
    "autoRelease": False,
    "releaseTime": None,
    "updateTime": None,
    "desc": "",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_shaped_like(ours: Any, seed: Any, path: str = "job") -> None:
    """Same keys in the same order, same nesting and JSON types, key by key."""
    assert _kind(ours) == _kind(seed), f"{path}: {ours!r} is not like {seed!r}"
    if isinstance(seed, dict):
        if path == "job.app.urls":  # keys are port_<n>: check each value's shape
            for key, value in ours.items():
                assert key.startswith("port_"), key
                assert_shaped_like(value, next(iter(seed.values())), f"{path}.{key}")
            return
        assert list(ours) == list(seed), f"{path}: keys {list(ours)} != {list(seed)}"
        for key in seed:
            assert_shaped_like(ours[key], seed[key], f"{path}.{key}")
    elif isinstance(seed, list) and seed:
        for n, item in enumerate(ours):
            assert_shaped_like(item, seed[0], f"{path}[{n}]")


# ---- a server with a GPU of the example's model and an environment catalog ------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("paas") / "home"
    settings = make_settings(
        home,
        gpus=[GpuSpec(index=0, model=GPU)],
        environments=[
            EnvironmentSpec(id="1", name="host"),
            EnvironmentSpec(id=str(IMAGE_ID), name="flavoured", env={"IMAGE_FLAVOUR": "mint"}),
        ],
    )
    with running_server(settings) as live:
        yield live


def new_user(server: LiveServer) -> httpx.Client:
    with server.client() as admin:
        made = admin.post("/api/v1/users", json={"name": f"paas{next(_names)}"})
        assert made.status_code == 201, made.text
    return server.client(made.json()["token"])


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    """A fresh user's client: its own jobs only, so counts and pages are exact."""
    with new_user(server) as client:
        yield client


def answer(response: httpx.Response, code: int = 0) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["msg"], str)
    if code == 0:
        assert body["msg"] == ""
    assert "Traceback" not in response.text
    return body


def form(**fields: Any) -> dict[str, Any]:
    """multipart/form-data fields, as the original's clients send them."""
    return {key: (None, str(value)) for key, value in fields.items()}


def create(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    fields.setdefault("spec", '{"gpuName": ""}')
    fields.setdefault("agent_domain", 0)
    job: dict[str, Any] = answer(http.post("/v1/job", files=form(**fields)))["job"]
    return job


def get(http: httpx.Client, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = answer(http.get("/v1/job", params={"id": job_id}))["job"]
    return job


def wait_status(http: httpx.Client, job_id: int, status: int) -> dict[str, Any]:
    return wait_for(lambda: (job := get(http, job_id))["status"] == status and job, 20)


def statuses(job: dict[str, Any]) -> list[int]:
    return [entry["status"] for entry in job["state"]["log"]]


def param_error(response: httpx.Response, field: str) -> str:
    msg = answer(response, 6)["msg"]
    assert field in msg, msg
    return str(msg)


# ---- auth and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
def test_every_endpoint_answers_176_without_a_valid_token(
    server: LiveServer, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, headers=headers) as anon:
        for method, path in [
            ("POST", "/v1/job"),
            ("GET", "/v1/job?id=1"),
            ("DELETE", "/v1/job?id=1"),
            ("GET", "/v1/job/stats"),
            ("GET", "/v1/job/jobs"),
        ]:
            files = form(spec="{}") if method == "POST" else None
            body = answer(anon.request(method, path, files=files), 176)
            assert body["msg"].startswith("check jwt token failed"), body


def test_an_unknown_or_foreign_job_is_not_found(server: LiveServer, http: httpx.Client) -> None:
    job = create(http, cmd="true")
    with new_user(server) as other:
        for method in ("GET", "DELETE"):
            foreign = answer(other.request(method, "/v1/job", params={"id": job["id"]}), 404)
            missing = answer(other.request(method, "/v1/job", params={"id": 2**31 - 2}), 404)
            assert foreign["msg"].replace(str(job["id"]), "N") == missing["msg"].replace(
                str(2**31 - 2), "N"
            )
    # a display id is not an id here
    answer(http.get("/v1/job", params={"id": job["displayID"]}), 6)


@pytest.mark.parametrize("raw", ["-1", "0", "abc", "", "1.5", str(2**40)])
def test_a_bad_job_id_is_an_invalid_parameter(http: httpx.Client, raw: str) -> None:
    param_error(http.get("/v1/job", params={"id": raw}), "id")
    param_error(http.delete("/v1/job", params={"id": raw}), "id")


# ---- create, get, the job object ------------------------------------------------------------


def test_a_form_created_job_has_the_seeds_shape_and_runs_to_4(http: httpx.Client) -> None:
    job = create(
        http,
        spec='{"gpuName": ""}',
        agent_domain=2,
        from_image_id=IMAGE_ID,
        cmd="true",
        envs="model_code=3;env=hello",
        remark="job & instance's name",
        domain="offical",
        ports='[{"port": 22, "protocol": 1}, {"port": 8888, "protocol": 2}]',
    )
    assert_shaped_like(job, SEED_JOB)
    assert job["status"] in (1, 2, 3, 4) and job["status"] == job["state"]["status"]
    app, res = job["app"], job["res"]
    assert app["envs"] == "model_code=3;env=hello"
    assert app["cmd"] == "true"
    assert app["remark"] == "job & instance's name"
    assert (app["fromImageId"], app["fromSnapshotId"]) == (IMAGE_ID, 0)
    assert app["ports"] == [
        {"port": 22, "protocol": 1, "extraData": None},
        {"port": 8888, "protocol": 2, "extraData": None},
    ]
    (auth,) = app["SSHAuths"]
    cred = auth["BaseOn"]["Cred"]
    assert cred["user"] == job["displayID"] and len(cred["password"]) >= 16
    assert (res["gpuName"], res["gpus"], res["domain"], res["agentDomain"]) == ("", 0, "offical", 2)
    assert job["ctx"]["nodeDomain"] == 2

    done = wait_status(http, job["id"], 4)
    assert_shaped_like(done, SEED_JOB)
    assert statuses(done) == [6, 1, 2, 3, 4]
    log = done["state"]["log"]
    assert [e["id"] for e in log] == sorted({e["id"] for e in log})
    assert all(e["sourceId"] == job["id"] for e in log)
    assert [e["ts"]["seconds"] for e in log] == sorted(e["ts"]["seconds"] for e in log)
    assert log[0]["ts"] == done["createTime"]
    assert done["desc"].startswith("SUCCEEDED, exit code 0")
    assert done["queueLen"] == 0
    # URLs come from the gateway while the job is live; finished, there are none.
    assert done["app"]["urls"] == {}


def test_a_json_created_job_gets_its_environment_envs_and_bash(
    server: LiveServer, http: httpx.Client
) -> None:
    body = {
        "spec": {"gpuName": "", "cpus": 1},
        "agent_domain": 0,
        "from_snapshot_id": str(IMAGE_ID),
        "cmd": 'echo "[$A|$B|$IMAGE_FLAVOUR|${BASH_VERSION:+bash}]"; exit 3',
        "envs": "A=1; B=x=y;;",
    }
    job = answer(http.post("/v1/job", json=body))["job"]
    assert job["app"]["envs"] == "A=1;B=x=y"
    assert (job["app"]["fromSnapshotId"], job["app"]["fromImageId"]) == (IMAGE_ID, 0)
    assert job["res"]["cpus"] == 1
    assert job["app"]["SSHAuths"] == [] and job["app"]["urls"] == {}
    done = wait_status(http, job["id"], 4)
    assert done["desc"].startswith("FAILED (EXIT_NONZERO), exit code 3")
    # the exit code stays visible in the native API too
    native = http.get(f"/api/v1/jobs/{job['id']}").json()
    assert (native["state"], native["exit_code"]) == ("FAILED", 3)
    logs = http.get(f"/api/v1/jobs/{job['id']}/logs").text
    assert "[1|x=y|mint|bash]" in logs


def test_a_running_job_is_cancelled_to_4(http: httpx.Client) -> None:
    job = create(http, cmd="tail -f /dev/null")
    running = wait_status(http, job["id"], 3)
    assert statuses(running) == [6, 1, 2, 3]
    assert answer(http.delete("/v1/job", params={"id": job["id"]})) == {"code": 0, "msg": ""}
    done = wait_status(http, job["id"], 4)
    assert statuses(done) == [6, 1, 2, 3, 5, 4]
    assert done["desc"].startswith("STOPPED (STOPPED_BY_USER)")
    # cancelling again: the job already finished
    assert "already finished" in answer(http.delete("/v1/job", params={"id": job["id"]}), 1)["msg"]


def test_queued_jobs_show_their_place_and_cancel_through_5(http: httpx.Client) -> None:
    """The pool has one GPU of the seed's model: the first job holds it, the others queue."""
    spec = f'{{"gpuName": "{GPU}"}}'
    holder = create(http, spec=spec, cmd="tail -f /dev/null")
    assert (holder["res"]["gpuName"], holder["res"]["gpus"]) == (GPU, 1)
    wait_status(http, holder["id"], 3)
    second = create(http, spec=spec, cmd="true")
    third = create(http, spec=spec, cmd="true")
    assert (second["status"], second["queueLen"]) == (1, 1)
    assert (third["status"], third["queueLen"]) == (1, 2)
    listed = answer(http.get("/v1/job/jobs", params={"order": "true"}))["job"]
    assert [j["queueLen"] for j in listed] == [0, 1, 2]

    answer(http.delete("/v1/job", params={"id": second["id"]}))
    cancelled = wait_status(http, second["id"], 4)
    assert statuses(cancelled) == [6, 1, 5, 4]
    assert cancelled["queueLen"] == 0
    wait_for(lambda: get(http, third["id"])["queueLen"] == 1)

    answer(http.delete("/v1/job", params={"id": third["id"]}))
    answer(http.delete("/v1/job", params={"id": holder["id"]}))
    wait_status(http, holder["id"], 4)


def test_passwords_are_shown_to_the_owner_and_admins_only(
    server: LiveServer, http: httpx.Client
) -> None:
    job = create(http, cmd="true", ports='[{"port": 22, "protocol": 1}]')
    password = job["app"]["SSHAuths"][0]["BaseOn"]["Cred"]["password"]
    assert get(http, job["id"])["app"]["SSHAuths"][0]["BaseOn"]["Cred"]["password"] == password
    with server.client() as admin:
        seen = get(admin, job["id"])["app"]["SSHAuths"][0]["BaseOn"]["Cred"]["password"]
        assert seen == password
    with new_user(server) as other:
        response = other.get("/v1/job", params={"id": job["id"]})
        answer(response, 404)
        assert password not in response.text
        listed = other.get("/v1/job/jobs").text
        assert password not in listed
    assert password not in http.get(f"/api/v1/jobs/{job['id']}/events").text


def test_a_live_jobs_ports_have_urls_where_the_server_runs_a_gateway(
    server: LiveServer, http: httpx.Client
) -> None:
    ports = '[{"port": 22, "protocol": 1}, {"port": 8888, "protocol": 2}]'
    job = create(http, cmd="tail -f /dev/null", ports=ports)
    urls = wait_status(http, job["id"], 3)["app"]["urls"]
    if getattr(server.runtime, "access", None) is None:
        assert urls == {}  # no gateway in this server: no URLs, the seed's empty type
    else:
        assert set(urls) == {"port_22", "port_8888"}
        assert urls["port_22"]["urls"][0].startswith("ssh://")
        assert "token=" in urls["port_8888"]["urls"][0]
    answer(http.delete("/v1/job", params={"id": job["id"]}))
    assert wait_status(http, job["id"], 4)["app"]["urls"] == {}


def test_gpu_names_are_the_pools_models_and_cpu(http: httpx.Client) -> None:
    """gpuName `cpu` is a job without GPUs; a model of the pool's GPUs (or part of it, in any
    case, as the scheduler matches) may also come with gpus 0, as in the original's example."""
    cpu = create(http, spec='{"gpuName": "cpu"}', cmd="echo ${CUDA_VISIBLE_DEVICES:-none}")
    assert (cpu["res"]["gpuName"], cpu["res"]["gpus"]) == ("cpu", 0)
    model = create(http, spec=f'{{"gpuName": "{GPU}", "gpus": 0}}', cmd="true")
    assert (model["res"]["gpuName"], model["res"]["gpus"]) == (GPU, 0)
    part = create(http, spec='{"gpuName": "a16", "gpus": 0}', cmd="true")
    assert part["res"]["gpuName"] == "a16"
    for job in (cpu, model, part):
        assert wait_status(http, job["id"], 4)["desc"].startswith("SUCCEEDED"), job
    assert http.get(f"/api/v1/jobs/{cpu['id']}/logs").text == "none\n"
    native = http.get(f"/api/v1/jobs/{cpu['id']}").json()["spec"]["resources"]
    assert (native["gpus"], native["gpu_model"]) == (0, None)
    unknown = param_error(http.post("/v1/job", files=form(spec='{"gpuName": "H100"}')), "gpuName")
    assert unknown.endswith(f"this server offers: {GPU}, cpu"), unknown


# ---- bad input: code 6 naming the field, nothing stored -------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"spec": "{not json"}, "spec"),
        ({"spec": '{"gpuName": "NVIDIA H100"}'}, "gpuName"),
        ({"spec": '{"gpuName": "", "gpus": 2}'}, "spec.gpus"),
        ({"spec": '{"gpuName": "", "colour": 1}'}, "spec.colour"),
        ({"from_image_id": 424242}, "from_image_id"),
        ({"from_image_id": -1}, "from_image_id"),
        ({"from_snapshot_id": 99}, "from_snapshot_id"),
        ({"from_image_id": 1, "from_snapshot_id": IMAGE_ID}, "from_snapshot_id"),
        ({"spec": '{"gpuName": "NVIDIA H100", "gpus": 0}'}, "spec.gpuName"),
        ({"spec": '{"gpuName": "cpu", "gpus": 1}'}, "spec.gpus"),
        ({"envs": "A=1;novalue"}, "envs"),
        ({"envs": "=1"}, "envs"),
        ({"ports": '[{"port": 5900, "protocol": 3}]'}, "ports.0.protocol"),
        ({"ports": '[{"port": 22, "protocol": 1}, {"port": 22, "protocol": 1}]'}, "ports"),
        ({"ports": "22"}, "ports"),
        ({"agent_domain": -1}, "agent_domain"),
        ({"agent_domain": "zone1"}, "agent_domain"),
        ({"domain": "everywhere"}, "domain"),
        ({"remark": "x" * 300}, "remark"),
        ({"surprise": "1"}, "surprise"),
    ],
)
def test_bad_create_input_is_code_6_and_stores_nothing(
    http: httpx.Client, fields: dict[str, Any], named: str
) -> None:
    fields = {"spec": '{"gpuName": ""}', "cmd": "true", **fields}
    param_error(http.post("/v1/job", files=form(**fields)), named)
    assert answer(http.get("/v1/job/jobs"))["pagination"]["total"] == 0


def test_a_body_that_is_neither_form_nor_json_object_is_code_6(http: httpx.Client) -> None:
    param_error(
        http.post("/v1/job", content=b"{", headers={"content-type": "application/json"}), "body"
    )
    param_error(http.post("/v1/job", json=[1, 2]), "body")
    param_error(
        http.post("/v1/job", content=b"x", headers={"content-type": "text/plain"}), "content-type"
    )
    assert answer(http.get("/v1/job/jobs"))["pagination"]["total"] == 0


# ---- list and stats -------------------------------------------------------------------------


def test_pages_count_and_order(http: httpx.Client) -> None:
    ids = [create(http, cmd="true", remark=f"n{n}")["id"] for n in range(5)]

    def page(**params: Any) -> dict[str, Any]:
        return answer(http.get("/v1/job/jobs", params=params))

    first = page(page=1, per_page=2)
    assert first["pagination"] == {"total": 5, "numPages": 3, "page": 1, "perPage": 2}
    assert [j["id"] for j in first["job"]] == ids[::-1][:2]  # default: newest first
    assert_shaped_like(first["job"][0], SEED_JOB)
    last = page(page=3, per_page=2, order="false")
    assert [j["id"] for j in last["job"]] == [ids[0]]
    oldest = page(page=1, per_page=2, order="true")
    assert [j["id"] for j in oldest["job"]] == ids[:2]
    assert [j["id"] for j in page(page=2, per_page=2, order="true")["job"]] == ids[2:4]
    past = page(page=4, per_page=2)
    assert past["job"] == []
    assert past["pagination"] == {"total": 5, "numPages": 3, "page": 4, "perPage": 2}
    assert page()["pagination"] == {"total": 5, "numPages": 1, "page": 1, "perPage": 10}
    assert page(per_page=100)["pagination"]["numPages"] == 1


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"per_page": 0}, "per_page"),
        ({"per_page": 10_000}, "per_page"),
        ({"per_page": "ten"}, "per_page"),
        ({"page": 0}, "page"),
        ({"page": -2}, "page"),
        ({"order": "sideways"}, "order"),
    ],
)
def test_bad_list_parameters_are_code_6(
    http: httpx.Client, params: dict[str, Any], named: str
) -> None:
    param_error(http.get("/v1/job/jobs", params=params), named)


def test_stats_count_per_state_and_list_ids(http: httpx.Client) -> None:
    finished = create(http, cmd="true")
    wait_status(http, finished["id"], 4)
    running = create(http, cmd="tail -f /dev/null")
    wait_status(http, running["id"], 3)
    stats = answer(http.get("/v1/job/stats"))
    assert stats["total"] == 2
    assert stats["counts"] == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 0, "6": 0}
    assert stats["jobs"] == [
        {"id": running["id"], "status": 3},
        {"id": finished["id"], "status": 4},
    ]
    answer(http.delete("/v1/job", params={"id": running["id"]}))
    wait_status(http, running["id"], 4)
    assert answer(http.get("/v1/job/stats"))["counts"]["4"] == 2


# ---- a fresh install: no catalog, GPU or queue configuration ------------------------------


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The settings of a fresh install: only the data directory and the ports are given (free
    ones here, the Ray listener off); GPUs are whatever NVML finds."""
    home = tmp_path_factory.mktemp("fresh") / "home"
    with running_server(Settings(home=home, port=0, ray_port=0)) as live:
        yield live


def test_a_fresh_install_runs_a_job_given_a_positive_image_id_and_a_gpu_name(
    fresh: LiveServer,
) -> None:
    """A client that insists on both is served with no configuration: image 1 is the host,
    gpuName `cpu` a job without GPUs."""
    with new_user(fresh) as http:
        spec = '{"gpuName": "cpu", "gpus": 0}'
        job = create(http, spec=spec, from_image_id=1, cmd="echo fresh", agent_domain=0)
        assert_shaped_like(job, SEED_JOB)
        assert (job["app"]["fromImageId"], job["app"]["fromSnapshotId"]) == (1, 0)
        assert (job["res"]["gpuName"], job["res"]["gpus"]) == ("cpu", 0)
        done = wait_status(http, job["id"], 4)
        assert done["desc"].startswith("SUCCEEDED, exit code 0"), done["desc"]
        assert http.get(f"/api/v1/jobs/{job['id']}/logs").text == "fresh\n"
        # no image id at all: the same default entry, shown as id 1
        assert create(http, cmd="true")["app"]["fromImageId"] == 1


def test_a_fresh_install_offers_the_hosts_gpu_models(fresh: LiveServer) -> None:
    """Each model NVML found (none on a machine without NVIDIA GPUs) runs a job too."""
    found = fresh.runtime.jobs.gpus()
    with new_user(fresh) as http:
        for model in dict.fromkeys(gpu.model for gpu in found):
            job = create(http, spec=json.dumps({"gpuName": model, "gpus": 0}), cmd="true")
            assert wait_status(http, job["id"], 4)["desc"].startswith("SUCCEEDED"), job
        refused = http.post("/v1/job", files=form(spec='{"gpuName": "no such GPU", "gpus": 0}'))
        msg = param_error(refused, "spec.gpuName")
        assert msg.endswith("this server offers: " + ", ".join(gpu_names(found))), msg


@pytest.mark.parametrize(
    ("fields", "named", "listed"),
    [
        ({"from_image_id": 2}, "from_image_id", "known ids: 1"),
        ({"from_snapshot_id": 633839}, "from_snapshot_id", "known ids: 1"),
        ({"spec": '{"gpuName": "NVIDIA A16", "gpus": 0}'}, "spec.gpuName", "cpu"),
        ({"spec": '{"gpuName": "cpu", "gpus": 2}'}, "spec.gpus", "must be 0"),
    ],
)
def test_a_fresh_install_names_the_field_of_an_unknown_id_or_gpu_name(
    fresh: LiveServer, fields: dict[str, Any], named: str, listed: str
) -> None:
    if named == "spec.gpuName" and any("A16" in gpu.model for gpu in fresh.runtime.jobs.gpus()):
        pytest.skip("this host has an NVIDIA A16")
    with new_user(fresh) as http:
        msg = param_error(http.post("/v1/job", files=form(cmd="true", **fields)), named)
        assert listed in msg, msg
        assert answer(http.get("/v1/job/jobs"))["pagination"]["total"] == 0


# ---- pure pieces ----------------------------------------------------------------------------


def test_envs_split_on_semicolons_and_keep_equals_in_values() -> None:
    assert parse_envs("model_code=3;env=hello") == {"model_code": "3", "env": "hello"}
    assert parse_envs("URL=http://x/?a=b;EMPTY=;") == {"URL": "http://x/?a=b", "EMPTY": ""}
    assert parse_envs("") == {}
    with pytest.raises(InvalidInput):
        parse_envs("A")


def _job(*states: JobState, stop_requested: bool = False) -> Job:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    log = [StateLogEntry(id=10 + n, state=state, timestamp=at) for n, state in enumerate(states)]
    stopped = at if stop_requested else None
    return make_job(7, state=states[-1]).model_copy(
        update={"state_log": log, "stop_requested_at": stopped}
    )


def test_the_state_log_is_synthesised_where_the_core_skips_a_step() -> None:
    q, sc, st, r, sp = (
        JobState.QUEUED,
        JobState.SCHEDULED,
        JobState.STARTING,
        JobState.RUNNING,
        JobState.STOPPING,
    )
    done = JobState.STOPPED
    run = state_log(_job(q, sc, st, r, JobState.SUCCEEDED))
    assert [e["status"] for e in run] == [6, 1, 2, 3, 4]
    assert [e["id"] for e in run] == [19, 20, 22, 26, 28]
    assert [e["status"] for e in state_log(_job(q, done, stop_requested=True))] == [6, 1, 5, 4]
    assert [e["status"] for e in state_log(_job(q, sc, st, r, sp, done))] == [6, 1, 2, 3, 5, 4]
    assert [e["status"] for e in state_log(_job(q, sc, st, r, q))] == [6, 1, 2, 3, 1]


def test_seed_example_shape_is_checked_strictly() -> None:
    """The shape check itself fails on a missing key or a changed type."""
    broken = {**SEED_JOB, "vols": []}
    with pytest.raises(AssertionError):
        assert_shaped_like(broken, SEED_JOB)
    with pytest.raises(AssertionError):
        assert_shaped_like({k: v for k, v in SEED_JOB.items() if k != "desc"}, SEED_JOB)
