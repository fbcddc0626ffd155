"""Replicas of the gateway on one real PostgreSQL server, as real processes: one queue (each
prompt runs once, whichever replica it was posted to), events reach the client through the
replica that holds its socket, /history and /view answer on any replica, and a replica
killed with SIGKILL has its running prompts taken over by another within seconds."""

from __future__ import annotations

import collections
import time
from typing import Callable, Dict, List

import pytest
import requests
from gateway_proc import GatewayProcess
from gateway_util import _Socket, is_done, of_prompt

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
Factory = Callable[..., MockCluster]
ENDS = ("execution_success", "execution_error", "execution_interrupted")


def ends_of(frames: List[object], pid: str) -> List[str]:
    return [f["type"] for f in of_prompt(frames, pid) if f["type"] in ENDS]  # type: ignore[index]


def test_replicas_share_one_queue_and_take_over_a_killed_one(mock_cluster_factory: Factory, postgres_url: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0, 1.0))
    servers = cluster.servers_json()
    replicas = [GatewayProcess(servers, postgres_url, extra=["--replica", f"r{i}"]).start() for i in range(3)]
    sockets: Dict[str, _Socket] = {}
    posted: Dict[str, str] = {}  # prompt -> client
    try:
        # Each client holds its socket on one replica and posts through another.
        for i in range(3):
            cid = f"client-{i}"
            sockets[cid] = _Socket(replicas[i].url, cid)
            sockets[cid].wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        for n in range(9):
            cid = f"client-{n % 3}"
            via = replicas[(n + 1) % 3]
            r = requests.post(via.url + "/prompt", json={"prompt": sleep_workflow(seconds=2.0, steps=4, seed=n), "client_id": cid}, timeout=10)
            assert r.status_code == 200, r.text
            posted[r.json()["prompt_id"]] = cid
        wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster), timeout=60, message="a job running on each server")
        # Kill the replica that follows a running job.
        rows = requests.get(replicas[0].url + "/metrics", timeout=10).text
        victim = replicas[0]
        victim.kill9()
        killed_at = time.monotonic()
        # Its client reconnects (a load balancer sends it to a live replica) with its clientId.
        before = list(sockets["client-0"].frames)
        sockets["client-0"].close()
        sockets["client-0"] = _Socket(replicas[1].url, "client-0")
        for pid, cid in posted.items():
            done = sockets[cid].wait_for(lambda f: True, timeout=5)
            if cid == "client-0" and any(is_done(pid)(f) for f in before):
                continue
            sockets[cid].wait_for(is_done(pid), timeout=120)
        took = time.monotonic() - killed_at
        for pid, cid in posted.items():
            frames = sockets[cid].wait_for(lambda f: True)
            if cid == "client-0":
                frames = before + frames
            assert set(ends_of(frames, pid)) == {"execution_success"}, (pid, ends_of(frames, pid))
            for r in replicas[1:]:
                item = r.get(f"/history/{pid}").json()[pid]
                assert item["status"]["status_str"] == "success"
                image = item["outputs"]["3"]["images"][0]
                assert r.get("/view", **image).status_code == 200
        done = replicas[1].get("/api/jobs", status="completed").json()
        assert sorted(j["id"] for j in done["jobs"]) == sorted(posted)
        assert "comfy_cluster_leases" in rows
        assert took < 120
    finally:
        for s in sockets.values():
            s.close()
        for r in replicas:
            r.stop()
    executed = [p for s in cluster for p in s.executed_prompt_ids]
    twice = [p for p, n in collections.Counter(executed).items() if n > 1]
    assert len(executed) == len(posted) and not twice, executed
