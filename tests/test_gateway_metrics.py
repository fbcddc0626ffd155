"""``/metrics`` in Prometheus' text format: jobs and durations by status, attempts per
server, moves, jobs waiting per user, running and online per server."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import requests
from gateway_util import ScriptClient, gateway_over, running_on
from prometheus_client.parser import text_string_to_metric_families

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import fail_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_jobs_attempts_moves_and_show_queues_and_servers(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    with gateway_over(cluster, server_mock1={"max_queue": 1}, server_mock2={"max_queue": 1}) as gw:
        client = ScriptClient(gw.url)
        try:
            ok = client.run(sleep_workflow(seconds=0.02, steps=1, seed=1))
            client.follow(ok)
            bad = client.run(fail_workflow("boom"))
            client.follow(bad)
            for server in cluster:
                server.pause_jobs()
            moved = client.run(sleep_workflow(seconds=0.5, steps=10, seed=2))
            victim = running_on(cluster)
            survivor = next(s for s in cluster if s is not victim)
            blocker = client.run(sleep_workflow(seconds=0.2, steps=2, seed=3))
            held = [client.run(sleep_workflow(seconds=30, steps=30, seed=s)) for s in (4, 5)]
            wait_until(lambda: all(scrape(gw.url).get(("comfy_cluster_server_running", (("server", s.name),))) == 1.0 for s in cluster),
                       timeout=20, message="a running job counted on each server")
            m = scrape(gw.url)
            assert m[("comfy_cluster_queue_depth", (("user", "default"),))] == 2.0
            assert m[("comfy_cluster_server_online", (("server", victim.name),))] == 1.0
            assert requests.post(gw.url + "/api/jobs/cancel", json={"job_ids": held}, timeout=10).json() == {"cancelled": True}
            victim.stop()
            survivor.resume_jobs()
            client.follow(blocker, timeout=30)
            client.follow(moved, timeout=30)
            m = scrape(gw.url)
            assert m[("comfy_cluster_jobs_total", (("status", "succeeded"),))] == 3.0
            assert m[("comfy_cluster_jobs_total", (("status", "failed"),))] == 1.0
            assert m[("comfy_cluster_job_seconds_count", (("status", "succeeded"),))] == 3.0
            assert m[("comfy_cluster_moves_total", (("server", victim.name),))] == 1.0
            attempts = sum(v for (name, _), v in m.items() if name == "comfy_cluster_attempts_total")
            assert attempts == 5.0  # ok, bad, blocker, and the moved job twice
            assert ("comfy_cluster_queue_depth", (("user", "default"),)) not in m
            wait_until(lambda: scrape(gw.url).get(("comfy_cluster_server_online", (("server", victim.name),))) == 0.0, timeout=30,
                       message="the stopped server shown offline")
        finally:
            client.close()
