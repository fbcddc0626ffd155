"""Replicas of the gateway on one real PostgreSQL server, as real processes: one queue (each
prompt runs once, whichever replica it was posted to), events reach the client through the
replica that holds its socket, /history and /view answer on any replica, and a replica
killed with SIGKILL has its running prompts taken over by another within seconds: their
progress reaches the clients again and each client gets each end exactly once."""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Dict, List

import pytest
import requests
import sqlalchemy as sa
from gateway_proc import GatewayProcess
from gateway_util import _Socket, is_done, of_prompt

from comfy_cluster.state import Store, schema
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
Factory = Callable[..., MockCluster]
ENDS = ("execution_success", "execution_error", "execution_interrupted")


def ends_of(frames: List[object], pid: str) -> List[str]:
    return [f["type"] for f in of_prompt(frames, pid) if f["type"] in ENDS]  # type: ignore[index]


def _running_by_replica(url: str) -> Dict[str, str]:
    """prompt_id -> the replica that holds it, for the prompts running now (read from the
    database the replicas share)."""
    store = Store(url)
    try:
        with store.reading() as conn:
            rows = conn.execute(sa.select(schema.prompts.c.prompt_id, schema.prompts.c.replica).where(schema.prompts.c.state == "running")).all()
    finally:
        store.close()
    return {str(pid): str(replica) for pid, replica in rows}


def test_replicas_share_one_queue_and_take_over_a_killed_one(mock_cluster_factory: Factory, postgres_url: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0, 1.0))
    servers = cluster.servers_json()
    replicas = [GatewayProcess(servers, postgres_url, extra=["--replica", f"r{i}"]).start() for i in range(3)]
    sockets: Dict[str, _Socket] = {}
    posted: Dict[str, str] = {}  # prompt -> client
    long: List[str] = []

    def post(n: int, seconds: float, steps: int) -> str:
        cid = f"client-{n % 3}"
        via = replicas[(n + 1) % 3]
        r = requests.post(via.url + "/prompt", json={"prompt": sleep_workflow(seconds=seconds, steps=steps, seed=n), "client_id": cid}, timeout=10)
        assert r.status_code == 200, r.text
        posted[r.json()["prompt_id"]] = cid
        return str(r.json()["prompt_id"])

    try:
        # Each client holds its socket on one replica and posts through another.
        for i in range(3):
            cid = f"client-{i}"
            sockets[cid] = _Socket(replicas[i].url, cid)
            sockets[cid].wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        for n in range(3):  # ended before the crash: their ends must not come again after it
            pid = post(n, 0.05, 1)
            sockets[posted[pid]].wait_for(is_done(pid), timeout=60)
        long = [post(n, 12.0, 24) for n in range(3, 6)]  # still running when the replica is taken over
        for n in range(6, 9):
            post(n, 0.5, 2)
        running = wait_until(lambda: {p: r for p, r in _running_by_replica(postgres_url).items() if p in long}, timeout=60, message="a long job running")
        victim = next(r for i, r in enumerate(replicas) if f"r{i}" in running.values())
        rows = requests.get(victim.url + "/metrics", timeout=10).text
        victim.kill9()
        killed_at = time.monotonic()
        live = [r for r in replicas if r is not victim]
        # Its clients reconnect (a load balancer sends them to a live replica) with their clientId.
        before: Dict[str, List[Any]] = collections.defaultdict(list)
        for i, r in enumerate(replicas):
            cid = f"client-{i}"
            if r is victim:
                before[cid] = list(sockets[cid].frames)
                sockets[cid].close()
                sockets[cid] = _Socket(live[0].url, cid)
        for pid, cid in posted.items():
            if any(is_done(pid)(f) for f in before[cid]):
                continue
            sockets[cid].wait_for(is_done(pid), timeout=120)
        took = time.monotonic() - killed_at
        for pid, cid in posted.items():
            frames = before[cid] + sockets[cid].wait_for(lambda f: True)
            # Each end exactly once per client, whoever told it (dedupe by prompt id).
            assert ends_of(frames, pid) == ["execution_success"], (pid, ends_of(frames, pid))
            assert sum(1 for f in frames if is_done(pid)(f)) == 1, pid
            for r in live:
                item = r.get(f"/history/{pid}").json()[pid]
                assert item["status"]["status_str"] == "success"
                image = item["outputs"]["3"]["images"][0]
                assert r.get("/view", **image).status_code == 200
        for pid in long:
            # Progress of every long job reaches its client to the last step, also of the one
            # the dead replica followed (adopted by prompt id, its events relayed again).
            steps = [f["data"]["value"] for f in of_prompt(before[posted[pid]] + sockets[posted[pid]].wait_for(lambda f: True), pid) if f["type"] == "progress"]
            assert steps and max(steps) == 24, (pid, running[pid], steps)
        done = live[0].get("/api/jobs", status="completed").json()
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


def test_a_replica_restarted_under_its_name_leaves_the_events_of_its_taken_over_copies_to_their_follower(
        mock_cluster_factory: Factory, postgres_url: str) -> None:
    """Seen (gw-replica's "Left"): replica ra is killed while its job runs; rb takes the job
    over and follows it through a socket under ra's clientId. ra restarts under its name and
    posts a job of its own: its pool opened its socket under the same clientId, and the server
    (one socket per clientId) sent the running job's progress there, not to rb any more: the
    client on rb got no progress after ra's restart (its end came from rb's polling)."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster.servers[0]
    servers = cluster.servers_json()
    ra = GatewayProcess(servers, postgres_url, extra=["--replica", "ra"]).start()
    rb = GatewayProcess(servers, postgres_url, extra=["--replica", "rb"]).start()
    ra2 = None
    watcher = _Socket(rb.url, "watcher")
    try:
        watcher.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        r = requests.post(ra.url + "/prompt", json={"prompt": sleep_workflow(seconds=20.0, steps=100, seed=1), "client_id": "watcher"}, timeout=10)
        assert r.status_code == 200, r.text
        pid = str(r.json()["prompt_id"])
        wait_until(lambda: _running_by_replica(postgres_url).get(pid) == "ra", timeout=60, message="ra runs the long job")
        ra.kill9()
        wait_until(lambda: _running_by_replica(postgres_url).get(pid) == "rb", timeout=60, message="rb took the job over")
        ra2 = GatewayProcess(servers, postgres_url, port=ra.port, extra=["--replica", "ra"]).start()
        r = requests.post(ra2.url + "/prompt", json={"prompt": sleep_workflow(seconds=0.05, steps=1, seed=2), "client_id": "other"}, timeout=10)
        assert r.status_code == 200, r.text
        # ra2's pool opens its socket before its POST reaches the server.
        wait_until(lambda: len(server.received_prompts) >= 2, timeout=60, message="ra2 posted its job")

        def progress() -> int:
            return sum(1 for f in of_prompt(list(watcher.frames), pid) if f["type"] == "progress")

        seen = progress()
        frames = watcher.wait_for(lambda f: progress() >= seen + 3 or is_done(pid)(f), timeout=60)
        assert progress() >= seen + 3, f"no progress relayed after ra's restart ({seen} before)"
        frames = watcher.wait_for(is_done(pid), timeout=90)
        assert ends_of(frames, pid) == ["execution_success"]
    finally:
        watcher.close()
        for g in (ra2, rb, ra):
            if g is not None:
                g.stop()
