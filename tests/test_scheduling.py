"""The scheduler: where each waiting job goes, and how a job leaves the local queue, against
mock servers on loopback. Written against surviving mutants of ``comfy_cluster/scheduling.py``
(docs/TESTING.md): each checks what a user sees."""

from __future__ import annotations

import pytest
from helpers import sleep_workflow, wait_until

from comfy_cluster import ConfigError, JobCancelled, ServerPool

FAST = dict(status_ttl=0.5, reconcile_interval=0.5)


def test_a_job_cancelled_while_it_waits_locally_never_reaches_a_server_and_says_so(mock_comfy):
    """README: cancel() ends a job that waits locally at once; the one ``cancelled`` event
    and the error say it never reached a server, and the server never sees it."""
    mock_comfy.pause_jobs()
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 1}], background_status=False) as pool:
        first = pool.submit(sleep_workflow())
        wait_until(lambda: first.prompt_id is not None, what="the first job posted")
        waiting = pool.submit(sleep_workflow())
        assert waiting.cancel()
        with pytest.raises(JobCancelled, match="cancelled before it reached a server"):
            waiting.result(timeout=30)
        ends = [e for e in waiting.events if e.kind in ("succeeded", "failed", "cancelled")]
        assert [(e.kind, e.server, e.reason) for e in ends] == [("cancelled", None, "cancelled before it reached a server")]
        mock_comfy.resume_jobs()
        first.result(timeout=30)
    assert [p for p, _, _ in mock_comfy.received_prompts] == [first.prompt_id]


def test_an_adopted_job_is_on_its_server_at_once_and_cancel_stops_it_there(mock_cluster_factory):
    """A job adopted by prompt id names its server at once, and cancel() stops it on that
    server (by its prompt id), as for a job this pool posted."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster[0]
    servers = [{"name": s.name, "url": s.url} for s in cluster]
    first = ServerPool(servers, client_id="adopter", **FAST)
    server.pause_jobs()
    posted = first.submit(sleep_workflow(seconds=0.3, steps=3, seed=11))
    # The server runs it from its POST; the job knows its prompt_id once the answer is read.
    prompt_id = wait_until(lambda: posted.prompt_id if posted.prompt_id in server.queue_snapshot()[0] else None,
                           what="running on the server, its prompt_id known")
    first.close(cancel=False)
    second = ServerPool(servers, client_id="adopter", **FAST)
    try:
        job = second.adopt(sleep_workflow(seconds=0.3, steps=3, seed=11), server.name, prompt_id)
        assert job.server is not None and job.server.name == server.name
        # Its first attempt, on that server (a failover goes to a server not tried yet).
        assert job.attempts == 1 and job.tried == [server.name]
        with pytest.raises(ConfigError, match="prompt_id"):
            second.adopt(sleep_workflow(seconds=0.3, steps=3, seed=11), server.name, None)  # type: ignore[arg-type]
        assert job.cancel()
        with pytest.raises(JobCancelled):
            job.result(timeout=30)
        wait_until(lambda: server.queue_snapshot() == ([], []), what="the copy gone from the server")
        assert {"prompt_id": prompt_id} in server.interrupt_requests or any(
            prompt_id in r.get("delete", []) for r in server.queue_delete_requests)
        assert server.executed_prompt_ids == []
    finally:
        second.close()


def test_a_job_cancelled_while_waiting_no_longer_keeps_a_warm_server_free_for_itself(mock_comfy_models):
    """warm_models (the default) keeps a free server for the waiting jobs warm there; a
    waiting job that is cancelled must stop counting, or a job of another model would wait
    for ever beside an idle server."""
    server = mock_comfy_models
    from comfy_cluster.testing.workflows import txt2img_workflow

    server.pause_jobs()
    with ServerPool([{"name": "m", "url": server.url, "max_queue": 1}], background_status=False) as pool:
        first = pool.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1))
        wait_until(lambda: first.prompt_id is not None, what="the first job posted")
        waiting = pool.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=2))  # full: waits locally
        assert waiting.cancel()
        with pytest.raises(JobCancelled):
            waiting.result(timeout=30)
        server.resume_jobs()
        first.result(timeout=30)  # m is free now, and warm for a.safetensors
        other = pool.submit(txt2img_workflow(ckpt_name="b.safetensors", seed=3))
        assert other.result(timeout=30).server == "m"


@pytest.fixture
def mock_comfy_models():
    from comfy_cluster.testing import MockComfyServer

    server = MockComfyServer(name="m", models=["a.safetensors", "b.safetensors"]).start()
    try:
        yield server
    finally:
        server.stop()
