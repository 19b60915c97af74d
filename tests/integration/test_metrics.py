"""GET /metrics on a real server, read with prometheus-client's own parser: admins only, and
the figures follow what the server did (jobs by state, requests by route, pool capacity)."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import LiveServer


def scrape(server: LiveServer) -> dict[str, list[Any]]:
    with server.client() as admin:
        answer = admin.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[Any]] = {}  # by sample name (a counter's end in _total)
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in families.get(name, []) if labels.items() <= s.labels.items()]
    assert found, f"no {name} with {labels}: {families.get(name)}"
    return float(sum(found))


def test_metrics_need_an_admins_token(live_server: LiveServer, api: httpx.Client) -> None:
    assert httpx.get(f"{live_server.url}/metrics").status_code == 401
    made = api.post("/api/v1/users", json={"name": "carol"})
    assert made.status_code == 201, made.text
    with live_server.client(made.json()["token"]) as carol:
        refused = carol.get("/metrics")
    assert refused.status_code == 403
    assert "admin" in refused.json()["error"]["message"]


def test_jobs_requests_and_pools_are_counted(live_server: LiveServer, api: httpx.Client) -> None:
    before = scrape(live_server)
    assert value(before, "jobyard_jobs", state="SUCCEEDED") == 0
    ids = [api.post("/api/v1/jobs", json={"entrypoint": "true"}).json()["id"] for _ in range(3)]
    for job_id in ids:
        live_server.wait_state(job_id, "SUCCEEDED")
    assert api.get(f"/api/v1/jobs/{ids[0]}").status_code == 200
    assert api.get("/api/v1/jobs/999999").status_code == 404

    after = scrape(live_server)
    assert value(after, "jobyard_jobs", state="SUCCEEDED", queue="default") == 3
    assert value(after, "jobyard_jobs", state="QUEUED") == 0
    route = "/api/v1/jobs/{ref}"
    assert value(after, "jobyard_http_requests_total", route=route, status="200") >= 1
    assert value(after, "jobyard_http_requests_total", route=route, status="404") == 1
    posted = value(after, "jobyard_http_requests_total", route="/api/v1/jobs", method="POST")
    assert posted == 3
    assert value(after, "jobyard_http_request_seconds_count", route=route) >= 2
    # each pool's capacity, as configured in make_settings: 8 CPUs, 16 GiB, no GPUs
    assert value(after, "jobyard_pool_cpus") == 8
    assert value(after, "jobyard_pool_memory_bytes") == 16384 * 2**20
    assert value(after, "jobyard_pool_gpus") == 0
    assert value(after, "jobyard_running_tasks") == 0
    # what happened, counted as it happened
    assert value(after, "jobyard_jobs_submitted_total") == 3
    assert value(after, "jobyard_submit_to_running_seconds_count") == 3
    assert value(after, "jobyard_queue_wait_seconds_count") == 3
    assert 0 < value(after, "jobyard_submit_to_running_seconds_sum") < 30
    assert value(after, "jobyard_scheduling_pass_seconds_count") >= 1
    assert value(after, "jobyard_store_commit_seconds_count") >= 3
    assert value(after, "jobyard_reconciler_errors_total") == 0


def test_a_path_no_route_matched_is_one_series(live_server: LiveServer, api: httpx.Client) -> None:
    for n in range(5):
        api.get(f"/no/such/path/{n}")
    families = scrape(live_server)
    routes = {s.labels["route"] for s in families["jobyard_http_requests_total"]}
    assert "unmatched" in routes
    assert not any(r.startswith("/no/such") for r in routes)
