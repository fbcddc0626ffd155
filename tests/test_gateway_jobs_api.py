"""ComfyUI's newer job API at the gateway (``/api/jobs``), in ComfyUI's shapes: list with a
status filter, sorting and paging; one job with its workflow and outputs; cancel by id
(pending or running) and in a batch; bad parameters answered 400 as ComfyUI does."""

from __future__ import annotations

from typing import Callable, List

import pytest
import requests
from gateway_util import ScriptClient, gateway_over

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import fail_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def test_jobs_list_filter_page_and_detail(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            done: List[str] = []
            for seed in range(3):
                done.append(client.run(sleep_workflow(seconds=0.02, steps=1, seed=seed)))
                client.follow(done[-1])
            failed = client.run(fail_workflow("boom"))
            client.follow(failed)
            jobs = requests.get(gw.url + "/api/jobs", params={"status": "completed"}, timeout=10).json()
            assert [j["id"] for j in jobs["jobs"]] == done[::-1]  # newest first
            assert jobs["pagination"] == {"offset": 0, "limit": None, "total": 3, "has_more": False}
            first = jobs["jobs"][0]
            assert first["status"] == "completed" and first["outputs_count"] == 1 and first["previewable_outputs_count"] == 1
            assert first["preview_output"]["type"] == "output" and first["preview_output"]["nodeId"] == "3"
            assert first["execution_end_time"] >= first["execution_start_time"] > 0 and "workflow" not in first
            page = requests.get(gw.url + "/api/jobs", params={"status": "completed,failed", "limit": "2", "offset": "1", "sort_order": "asc"}, timeout=10).json()
            assert [j["id"] for j in page["jobs"]] == done[1:3]
            assert page["pagination"] == {"offset": 1, "limit": 2, "total": 4, "has_more": True}
            bad = requests.get(gw.url + "/api/jobs", params={"status": "done"}, timeout=10)
            assert bad.status_code == 400 and "Invalid status value(s): done" in bad.json()["error"]
            assert requests.get(gw.url + "/api/jobs", params={"limit": "0"}, timeout=10).status_code == 400
            detail = requests.get(f"{gw.url}/api/jobs/{failed}", timeout=10).json()
            assert detail["status"] == "failed" and detail["execution_error"]["exception_message"]
            assert detail["workflow"]["prompt"] == fail_workflow("boom") and "execution_status" in detail
            missing = requests.get(gw.url + "/api/jobs/nope", timeout=10)
            assert missing.status_code == 404 and missing.json() == {"error": "Job not found"}
        finally:
            client.close()


def test_cancel_by_id_and_in_a_batch(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, server_mock1={"max_queue": 1}) as gw:
        client = ScriptClient(gw.url)
        try:
            running = client.run(sleep_workflow(seconds=30.0, steps=30, seed=1))
            pending = [client.run(sleep_workflow(seconds=30.0, steps=30, seed=s)) for s in (2, 3)]
            wait_until(lambda: requests.get(gw.url + "/queue", timeout=10).json()["queue_running"], timeout=20, message="the first job running")
            listed = requests.get(gw.url + "/api/jobs", params={"status": "in_progress,pending"}, timeout=10).json()
            assert {j["id"]: j["status"] for j in listed["jobs"]} == {running: "in_progress", pending[0]: "pending", pending[1]: "pending"}
            assert requests.get(f"{gw.url}/api/jobs/{pending[0]}", timeout=10).json()["workflow"]["extra_data"] == {"client_id": client.client_id}
            bad = requests.post(gw.url + "/api/jobs/cancel", json={"job_ids": [pending[0], 5]}, timeout=10)
            assert bad.status_code == 400 and bad.json()["invalid_ids"] == ["5"]
            assert requests.post(gw.url + "/api/jobs/cancel", json={"job_ids": "x"}, timeout=10).status_code == 400
            r = requests.post(gw.url + "/api/jobs/cancel", json={"job_ids": pending + ["unknown"]}, timeout=10)
            assert r.json() == {"cancelled": True}
            r = requests.post(f"{gw.url}/api/jobs/{running}/cancel", timeout=10)
            assert r.json() == {"cancelled": True}
            assert client.follow(running)[-2]["type"] == "execution_interrupted"
            wait_until(lambda: requests.get(gw.url + "/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}, timeout=20, message="queue empty")
            assert requests.post(f"{gw.url}/api/jobs/{running}/cancel", timeout=10).json() == {"cancelled": False}
            assert requests.get(gw.url + "/api/jobs", params={"status": "cancelled"}, timeout=10).json()["pagination"]["total"] == 1
        finally:
            client.close()
    assert cluster[0].executed_prompt_ids == []
