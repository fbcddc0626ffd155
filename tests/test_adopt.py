"""``ServerPool.adopt``: a job another process posted is followed on its server by prompt id
and never posted again; one the server never got runs like a submitted job. The attempt
ledger hook (``on_attempt``) sees each copy before its POST and at its end."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pytest
from helpers import callbacks_delivered

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]
FAST = dict(status_ttl=0.5, reconcile_interval=0.5)


def test_a_job_posted_by_another_pool_is_followed_to_its_end_and_never_posted_again(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    servers = [{"name": s.name, "url": s.url} for s in cluster]
    seen: List[Tuple[str, str, str]] = []
    first = ServerPool(servers, client_id="gateway-1", **FAST)
    cluster[0].pause_jobs()
    job = first.submit(sleep_workflow(seconds=0.3, steps=3, seed=1), on_attempt=lambda *a: seen.append(a))
    wait_until(lambda: cluster[0].queue_snapshot()[0], timeout=20, message="running on the server")
    (reserved,) = seen
    assert reserved[1:] == ("mock1", "reserved") and reserved[0] in cluster[0].queue_snapshot()[0]
    first.close(cancel=False)  # the process is gone; its job goes on on the server
    assert cluster[0].queue_snapshot()[0] == [reserved[0]]
    second = ServerPool(servers, client_id="gateway-1", **FAST)
    try:
        ended: List[Tuple[str, str, str]] = []
        adopted = second.adopt(sleep_workflow(seconds=0.3, steps=3, seed=1), "mock1", reserved[0], on_attempt=lambda *a: ended.append(a))
        cluster[0].resume_jobs()
        result = adopted.result(timeout=30)
        assert result.prompt_id == reserved[0] and result.files
        assert cluster[0].executed_prompt_ids == [reserved[0]]
        assert ended == [(reserved[0], "mock1", "ended")]
    finally:
        second.close()
    assert job.status == "cancelled"  # the first process's own object, closed without cancel


def test_an_adopted_copy_the_server_never_got_runs_once_elsewhere(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    pool = ServerPool([{"name": s.name, "url": s.url} for s in cluster], **FAST)
    try:
        seen: List[Tuple[str, str, str]] = []
        job = pool.adopt(sleep_workflow(seconds=0.05, steps=1, seed=2), "mock1", "never-posted", on_attempt=lambda *a: seen.append(a))
        result = job.result(timeout=30)
        assert result.prompt_id != "never-posted"
        assert cluster[0].executed_prompt_ids == [result.prompt_id]
        assert [p for _, _, p in seen] == ["ended", "reserved", "ended"]
        with pytest.raises(Exception, match="no server named 'nope'"):
            pool.adopt(sleep_workflow(), "nope", "x")
    finally:
        pool.close()


def test_a_copy_posted_under_a_dead_pools_client_id_brings_its_progress_events(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    servers = [{"name": s.name, "url": s.url} for s in cluster]
    seen: List[Tuple[str, str, str]] = []
    dead = ServerPool(servers, client_id="replica-a", **FAST)
    cluster[0].pause_jobs()
    dead.submit(sleep_workflow(seconds=0.6, steps=6, seed=3), on_attempt=lambda *a: seen.append(a))
    wait_until(lambda: cluster[0].queue_snapshot()[0], timeout=20, message="running on the server")
    dead.close(cancel=False)  # replica a is gone; its copy runs on under its clientId
    adopter = ServerPool(servers, client_id="replica-b", **FAST)
    try:
        events: List[str] = []
        job = adopter.adopt(sleep_workflow(seconds=0.6, steps=6, seed=3), "mock1", seen[0][0], client_id="replica-a",
                            on_event=lambda e: events.append(e.kind))
        wait_until(lambda: "submitted" in events, timeout=20, message="the copy followed")
        cluster[0].resume_jobs()
        assert job.result(timeout=30).prompt_id == seen[0][0]
        assert callbacks_delivered(job)  # result() returns as soon as the job is done, before its callbacks ran
        assert events.count("progress") == 6, events  # every step, read under replica a's clientId
    finally:
        adopter.close()
    assert cluster[0].executed_prompt_ids == [seen[0][0]]
