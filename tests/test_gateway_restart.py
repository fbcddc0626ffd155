"""A gateway killed with SIGKILL mid-run and started again on the same SQLite state: its jobs
on the servers are followed again by prompt id (never run twice), the waiting ones run, and
a client that reconnects with its clientId gets every end and finds it in /history."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Callable, List

import pytest
import requests
from gateway_proc import GatewayProcess
from gateway_util import _Socket, is_done, of_prompt

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
Factory = Callable[..., MockCluster]


def test_a_gateway_killed_mid_run_loses_nothing_and_runs_nothing_twice(mock_cluster_factory: Factory, tmp_path: Path) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    gw = GatewayProcess(cluster.servers_json(), f"sqlite:///{tmp_path}/gw.sqlite3").start()
    client_id = "artist-1"
    sock = _Socket(gw.url, client_id)
    ids: List[str] = []
    try:
        sock.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        for seed in range(6):
            r = requests.post(gw.url + "/prompt", json={"prompt": sleep_workflow(seconds=1.5, steps=3, seed=seed), "client_id": client_id}, timeout=10)
            assert r.status_code == 200, r.text
            ids.append(r.json()["prompt_id"])
        wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster), timeout=30, message="a job running on each server")
        gw.kill9()
        sock.close()
        # While the gateway is down, the servers go on with what they hold.
        gw.start()
        sock = _Socket(gw.url, client_id)
        for pid in ids:
            sock.wait_for(is_done(pid), timeout=60)
        frames = sock.wait_for(lambda f: True)
        for pid in ids:
            ends = [f["type"] for f in of_prompt(frames, pid) if f["type"] in ("execution_success", "execution_error", "execution_interrupted")]
            assert ends == ["execution_success"], (pid, ends)
            item = gw.get(f"/history/{pid}").json()[pid]
            assert item["status"]["status_str"] == "success" and item["outputs"], pid
        done = gw.get("/api/jobs", status="completed").json()
        assert sorted(j["id"] for j in done["jobs"]) == sorted(ids)
    finally:
        sock.close()
        gw.stop()
    executed = [p for s in cluster for p in s.executed_prompt_ids]
    twice = [p for p, n in collections.Counter(executed).items() if n > 1]
    assert len(executed) == len(ids) and not twice, executed
