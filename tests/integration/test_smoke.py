from tests.helpers import LiveServer


def test_submitted_job_runs_to_success(live_server: LiveServer) -> None:
    with live_server.client() as http:
        created = http.post("/api/v1/jobs", json={"entrypoint": "echo hi"})
        assert created.status_code == 201, created.text
    job = live_server.wait_state(created.json()["id"], "SUCCEEDED", "FAILED")
    assert job["state"] == "SUCCEEDED"
    assert job["exit_code"] == 0
