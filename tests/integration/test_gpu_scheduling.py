"""GPU accounting through a real server, with a configured inventory (no GPU on this machine)."""

from __future__ import annotations

from pathlib import Path

from jobyard.config import GpuSpec
from tests.helpers import make_settings, running_server, wait_for

ENV = 'echo "gpus=[$CUDA_VISIBLE_DEVICES]"; sleep 30'


def test_gpu_jobs_get_distinct_devices_and_wait_for_free_ones(home: Path) -> None:
    gpus = [GpuSpec(index=i, model="NVIDIA A100-SXM4-80GB") for i in range(4)]
    with running_server(make_settings(home, gpus=gpus)) as server, server.client() as http:

        def submit(count: int) -> dict:  # type: ignore[type-arg]
            body = {"entrypoint": ENV, "resources": {"gpus": count, "gpu_model": "a100"}}
            response = http.post("/api/v1/jobs", json=body)
            assert response.status_code == 201, response.text
            return response.json()  # type: ignore[no-any-return]

        two, one = submit(2), submit(1)
        running = [server.wait_state(j["id"], "RUNNING") for j in (two, one)]
        assigned = [set(job["tasks"][0]["gpus"]) for job in running]
        assert [len(g) for g in assigned] == [2, 1] and not assigned[0] & assigned[1]
        expected = ",".join(map(str, running[0]["tasks"][0]["gpus"]))
        log = wait_for(lambda: http.get(f"/api/v1/jobs/{two['id']}/logs").text)
        assert log.strip() == f"gpus=[{expected}]"

        blocked = submit(2)  # only one GPU is free: it waits
        assert http.get(f"/api/v1/jobs/{blocked['id']}").json()["state"] == "QUEUED"
        http.post(f"/api/v1/jobs/{two['id']}/stop")
        started = server.wait_state(blocked["id"], "RUNNING")
        assert len(started["tasks"][0]["gpus"]) == 2
        for job in (one, blocked):
            http.post(f"/api/v1/jobs/{job['id']}/stop")
            server.wait_state(job["id"], "STOPPED")

        too_many = http.post("/api/v1/jobs", json={"entrypoint": "true", "resources": {"gpus": 5}})
        assert too_many.status_code == 422 and too_many.json()["error"]["field"] == "resources.gpus"
        wrong = http.post(
            "/api/v1/jobs",
            json={"entrypoint": "true", "resources": {"gpus": 1, "gpu_model": "H100"}},
        )
        assert wrong.status_code == 422 and "H100" in wrong.json()["error"]["message"]
