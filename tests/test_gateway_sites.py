"""Several sites: a gateway is a valid server of another gateway's cluster. Jobs run through
both, a cancel by id reaches the job on the far site's server, and /view serves the far
site's files through both gateways."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import requests
from gateway_util import ScriptClient, gateway_over

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = pytest.mark.timeout(90)
Factory = Callable[..., MockCluster]


def test_a_gateway_serves_as_a_server_of_another_gateway(mock_cluster_factory: Factory, tmp_path: Path) -> None:
    far = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(far, gateway_kwargs={"state": f"sqlite:///{tmp_path}/far.sqlite3"}, server_mock1={"max_queue": 1}) as site_b:
        pool = ServerPool([{"name": "site-b", "url": site_b.url, "max_queue": 1}], status_ttl=0.5, reconcile_interval=0.5)
        site_a = Gateway(pool, port=0, state=f"sqlite:///{tmp_path}/near.sqlite3").start()
        client = ScriptClient(site_a.url)
        try:
            pid = client.run(sleep_workflow(seconds=0.05, steps=2, seed=1))
            msgs = client.follow(pid, timeout=30)
            assert [m["type"] for m in msgs if m["type"].startswith("execution_")][-1] == "execution_success"
            item = client.history(pid)
            image = item["outputs"]["3"]["images"][0]
            near = client.view(image)
            far_view = requests.get(site_b.url + "/view", params={k: image[k] for k in ("filename", "subfolder", "type")}, timeout=10)
            assert near.status_code == 200 and far_view.status_code == 200 and near.content == far_view.content
            # Cancel by id at the near site stops the job on the far site's server.
            far[0].pause_jobs()
            long = client.run(sleep_workflow(seconds=30, steps=30, seed=2))
            wait_until(lambda: requests.get(site_b.url + "/queue", timeout=10).json()["queue_running"], timeout=30, message="running at the far site")
            assert requests.post(f"{site_a.url}/api/jobs/{long}/cancel", timeout=10).json() == {"cancelled": True}
            assert client.follow(long, timeout=30)[-2]["type"] == "execution_interrupted"
            wait_until(lambda: requests.get(site_b.url + "/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []},
                       timeout=30, message="the far site's queue empty")
            assert far[0].queue_snapshot() == ([], [])
            assert len(far[0].executed_prompt_ids) == 1
        finally:
            client.close()
            site_a.stop()
            pool.close()
