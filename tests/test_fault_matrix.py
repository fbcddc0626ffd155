"""Issue 11's fault matrix: each defect reproduced against the public API over real mock
ComfyUI servers on loopback, asserting the behaviour the issue asks for.

Tests still failing on the current code are ``xfail(strict=True)``: each was seen failing for
the reason in its docstring ("seen: ..."); the xfail goes once the fix lands.

Defect (issue 11) -> test
  1  inputs overwritten by another job  test_same_named_inputs_of_two_pools_render_their_own_bytes,
                                        test_same_named_inputs_in_one_batch_render_their_own_bytes
  2  POST times out after acceptance    test_accepted_then_stalled_post_leaves_no_second_run
  3  one 500/timeout on /history        test_one_failed_history_read_does_not_rerun_a_finished_job[500|reset|hang]
  4  short outage fails queued jobs     test_outage_clock_measures_only_the_current_outage
  5  idle capable server left idle      test_job_for_an_idle_servers_model_does_not_wait_behind_a_full_server
  6  fail_fast misses late jobs         test_fail_fast_cancels_jobs_added_after_the_failure
  7  cancel during a network blip       test_cancel_during_a_network_blip_removes_the_job_once_reachable
  8  map_async sends before checking    test_map_async_checks_every_input_before_sending_anything
  9  /object_info failure stalls        test_failing_object_info_is_cached_and_never_fetched_on_the_dispatch_path
 10  close() blocks, thread left        test_close_with_a_server_hanging_in_post_is_bounded_and_final
 12  cancel interrupts a finished job   test_cancel_of_a_finished_job_never_interrupts_another_artists_job
 13  concurrent downloads, one path     test_concurrent_downloads_into_one_folder_never_share_a_path
 14  map(timeout) leaves batch running  test_map_timeout_cancels_the_batch_or_gives_it_back
 15  network split: both copies run     test_network_split_removes_the_old_copy_once_reachable
 suspected: ws reconnect registration   test_job_events_survive_a_late_noticed_websocket_close
 suspected: SystemExit in a callback    test_system_exit_from_a_callback_does_not_strand_the_job
 suspected: custom strategy non-cand.   test_custom_strategy_returning_a_non_candidate_cannot_bypass_filters
 chaos: two pools, same-named inputs    test_chaos_two_pools_same_named_inputs (slow)
(11 and 16 are the portability engineer's: tests/test_config.py, tests/test_security.py.)
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
import requests
from helpers import FakeClock, wait_until

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.engine import Execution
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import image_workflow, load_image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)

#: Short knobs so a fault shows within seconds (the defaults are tuned for real networks).
FAST: Dict[str, Any] = dict(
    ws_connect_timeout=1.0,
    probe_timeout=(0.5, 1.0),
    request_timeout=(0.5, 1.0),
    reconcile_interval=0.5,
    server_lost_after=2.0,
    backoff_cap=0.5,
)


def pool_of(servers: Sequence[MockComfyServer], extra: Optional[Dict[str, Any]] = None, **kwargs: Any) -> ServerPool:
    """A pool over ``servers`` with the FAST knobs (``kwargs`` override them)."""
    configs = [dict({"name": s.name, "url": s.url}, **(extra or {})) for s in servers]
    return ServerPool(configs, **dict(FAST, **kwargs))


def first_of(name: str) -> Any:
    """A strategy that takes ``name`` whenever it is a candidate (else the first candidate)."""

    def prefer(candidates: Sequence[Any], workflow: Any) -> Any:
        return next((c for c in candidates if c.name == name), candidates[0])

    return prefer


def runs(servers: Sequence[MockComfyServer], prefix: str) -> List[Tuple[str, Execution]]:
    """Every execution, on any server, of the job whose SaveImage prefix is ``prefix``."""
    out = []
    for server in servers:
        for record in server.executions:
            saves = [n for n in record.prompt.values() if n.get("class_type") == "SaveImage"]
            if any(n["inputs"].get("filename_prefix") == prefix for n in saves):
                out.append((server.name, record))
    return out


def raw_submit(server: MockComfyServer, workflow: Dict[str, Any]) -> str:
    """Another artist's job, posted straight to the server (not through our pool)."""
    r = requests.post(server.url + "/prompt", json={"prompt": workflow, "client_id": str(uuid.uuid4())}, timeout=5)
    assert r.status_code == 200, r.text
    prompt_id: str = r.json()["prompt_id"]
    return prompt_id


def outcome_of(server: MockComfyServer, prompt_id: str) -> Optional[str]:
    return next((r.outcome for r in server.executions if r.prompt_id == prompt_id), None)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plates(tmp_path: Any, count: int, name: str = "ComfyUIClusterRun1.png") -> List[Tuple[str, bytes]]:
    """``count`` different images, each in its own folder under the same file name."""
    out = []
    for i in range(count):
        folder = tmp_path / f"artist{i}"
        folder.mkdir()
        data = png_bytes(8, 8, (i * 40 % 256, 7, 9))
        (folder / name).write_bytes(data)
        out.append((str(folder / name), data))
    return out


# ---------------------------------------------------------------------------------------------
# 1. A job renders another job's input.


@pytest.mark.xfail(strict=True, reason="issue 11 defect 1")
def test_same_named_inputs_of_two_pools_render_their_own_bytes(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """Seen: job A read job B's plate (A's execution read B's sha256): B's upload overwrote
    A's file of the same name while A waited in the server's queue."""
    (path_a, bytes_a), (path_b, bytes_b) = plates(tmp_path, 2)
    mock_comfy.pause_jobs()  # a job of someone else holds the GPU: ours wait in the queue
    blocker = raw_submit(mock_comfy, sleep_workflow(seconds=0.05, steps=1, seed=1))
    with pool_of([mock_comfy]) as artist_a, pool_of([mock_comfy]) as artist_b:
        job_a = artist_a.submit(load_image_workflow("x.png", prefix="a"), inputs={"1": path_a})
        wait_until(lambda: len(mock_comfy.received_prompts) == 2, what="A queued on the server")
        job_b = artist_b.submit(load_image_workflow("x.png", prefix="b"), inputs={"1": path_b})
        wait_until(lambda: len(mock_comfy.received_prompts) == 3, what="B queued on the server")
        mock_comfy.resume_jobs()
        job_a.result(timeout=20), job_b.result(timeout=20)
    assert outcome_of(mock_comfy, blocker) == "success"
    read = {prefix: [r.inputs["1"][1] for _, r in runs([mock_comfy], prefix)] for prefix in ("a", "b")}
    assert read == {"a": [sha(bytes_a)], "b": [sha(bytes_b)]}


@pytest.mark.xfail(strict=True, reason="issue 11 defect 1")
def test_same_named_inputs_in_one_batch_render_their_own_bytes(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """Seen: job b read job a's bytes (a's upload, made after b's, overwrote it)."""
    (path_a, bytes_a), (path_b, bytes_b) = plates(tmp_path, 2, name="plate.0001.png")
    mock_comfy.pause_jobs()
    raw_submit(mock_comfy, sleep_workflow(seconds=0.05, steps=1, seed=2))
    with pool_of([mock_comfy]) as pool:
        batch = pool.map_async(
            [load_image_workflow("x.png", prefix="a"), load_image_workflow("x.png", prefix="b")],
            inputs=[{"1": path_a}, {"1": path_b}],
        )
        wait_until(lambda: len(mock_comfy.received_prompts) == 3, what="both jobs queued on the server")
        mock_comfy.resume_jobs()
        batch.results(timeout=20)
    read = {prefix: [r.inputs["1"][1] for _, r in runs([mock_comfy], prefix)] for prefix in ("a", "b")}
    assert read == {"a": [sha(bytes_a)], "b": [sha(bytes_b)]}


def test_same_bytes_under_one_name_may_share_an_upload(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """The other half of defect 1's rule: equal bytes may be reused; the job still renders them."""
    (path_a, bytes_a), = plates(tmp_path, 1)
    other = tmp_path / "copy"
    other.mkdir()
    (other / "ComfyUIClusterRun1.png").write_bytes(bytes_a)
    with pool_of([mock_comfy]) as pool:
        results = pool.map([load_image_workflow("x.png", prefix=p) for p in ("a", "b")], inputs=[{"1": path_a}, {"1": str(other / "ComfyUIClusterRun1.png")}], timeout=20)
    assert len(results) == 2
    assert [r.inputs["1"][1] for p in ("a", "b") for _, r in runs([mock_comfy], p)] == [sha(bytes_a)] * 2


# ---------------------------------------------------------------------------------------------
# 2. POST /prompt times out after the server accepted it.


@pytest.mark.xfail(strict=True, reason="issue 11 defect 2")
def test_accepted_then_stalled_post_leaves_no_second_run(mock_cluster_factory: Any) -> None:
    """Seen: the copy on s1 ran to the end ("success") after the job had moved to s2 and s1
    answered again: the attempt was recorded only after a successful POST."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    slow, other = cluster.servers
    slow.stall_prompt()  # s1 queues and runs the job, but its answer never comes ...
    slow.pause_jobs()
    with pool_of(cluster.servers, strategy=first_of("s1")) as pool:
        job = pool.submit(sleep_workflow(seconds=4, steps=8, prefix="once"))
        wait_until(lambda: slow.received_prompts, what="s1 accepted the prompt")
        slow.set_fault("hang")  # ... and then s1 stops answering anything for a while
        result = job.result(timeout=30)
        assert result.server == "s2"
        slow.clear_faults()  # s1 answers again while its copy still runs
        slow.resume_jobs()
        wait_until(lambda: all(r.outcome for _, r in runs(cluster.servers, "once")), timeout=20, what="the copy on s1 ended")
    ends = sorted((name, r.outcome) for name, r in runs(cluster.servers, "once"))
    assert ends == [("s1", "interrupted"), ("s2", "success")]


# ---------------------------------------------------------------------------------------------
# 3. One 500 (or one timeout) reading /history after the job's end.


@pytest.mark.xfail(strict=True, reason="issue 11 defect 3")
@pytest.mark.parametrize("fault", ["500", "reset", "hang"])
def test_one_failed_history_read_does_not_rerun_a_finished_job(mock_cluster_factory: Any, fault: str) -> None:
    """Seen: the job ran again on s2 (two executions, both "success") and s1 was marked offline."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    first = cluster.servers[0]
    first.fail_route("/history", fault, count=1, method="GET")
    with pool_of(cluster.servers, strategy=first_of("s1")) as pool:
        result = pool.submit(sleep_workflow(seconds=0.1, steps=2, prefix="read")).result(timeout=30)
        online = {s.name: s.online for s in pool.status()}
    assert [(name, r.outcome) for name, r in runs(cluster.servers, "read")] == [("s1", "success")]
    assert result.server == "s1" and online["s1"]


# ---------------------------------------------------------------------------------------------
# 12. Cancel interrupts a job that already finished.


@pytest.mark.xfail(strict=True, reason="issue 11 defect 12")
def test_cancel_of_a_finished_job_never_interrupts_another_artists_job(mock_comfy: MockComfyServer) -> None:
    """Seen: the other artist's job ended "interrupted": /interrupt was sent because our job
    had once been seen started, and this (older) server stops whatever runs."""
    mock_comfy.interrupt_ignores_id = True
    # Our websocket goes deaf (frames lost) and polling is slow: we do not learn that our job
    # has ended, as on a congested network.
    with pool_of([mock_comfy], reconcile_interval=30.0) as pool:
        started = threading.Event()
        job = pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix="ours"), on_event=lambda e: e.kind == "started" and started.set())
        assert started.wait(20)
        mock_comfy.mute_websockets(pool.client_id)
        wait_until(lambda: outcome_of(mock_comfy, job.prompt_id or "") == "success", what="our job finished on the server")
        theirs = raw_submit(mock_comfy, sleep_workflow(seconds=2, steps=4, prefix="theirs"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0] == [theirs], what="their job runs")
        job.cancel()
        mock_comfy.unmute_websockets()
        job.wait(20)
        wait_until(lambda: outcome_of(mock_comfy, theirs) is not None, what="their job ended")
    assert outcome_of(mock_comfy, theirs) == "success"


# ---------------------------------------------------------------------------------------------
# 13. Two concurrent download() into one folder.


def test_concurrent_downloads_into_one_folder_never_share_a_path(mock_cluster_factory: Any, tmp_path: Any) -> None:
    """Seen: both downloads returned the same path (both saw the name free before either
    wrote); one file overwrote the other."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    def by_color(candidates: Sequence[Any], workflow: Any) -> Any:
        wanted = "s1" if workflow["1"]["inputs"]["color"] == 10 else "s2"
        return next(c for c in candidates if c.name == wanted)

    with pool_of(cluster.servers, strategy=by_color) as pool:
        # Each server names its output same_00001_.png.
        job_a = pool.submit(image_workflow(color=10, prefix="same"))
        job_b = pool.submit(image_workflow(color=200, prefix="same"))
        assert (job_a.result(timeout=20).server, job_b.result(timeout=20).server) == ("s1", "s2")
        for server in cluster.servers:
            server.fail_route("/view", "hang", count=1)  # hold both downloads at the server
        paths: Dict[str, List[str]] = {}

        def download(job: Any, key: str) -> None:
            paths[key] = job.download(str(tmp_path))

        threads = [threading.Thread(target=download, args=(j, k)) for j, k in ((job_a, "a"), (job_b, "b"))]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(s.held_requests() == 1 for s in cluster.servers), what="both downloads asked")
        for server in cluster.servers:
            server.release_held()
        for thread in threads:
            thread.join(20)
    assert len(paths) == 2 and paths["a"] != paths["b"]
    contents = {open(p[0], "rb").read() for p in paths.values()}
    assert len(contents) == 2  # each file kept its own bytes


# ---------------------------------------------------------------------------------------------
# 4. A short outage fails queued jobs.


@pytest.mark.xfail(strict=True, reason="issue 11 defect 4")
def test_outage_clock_measures_only_the_current_outage(mock_comfy: MockComfyServer) -> None:
    """Seen: job B failed with NoServerAvailable at the first instant of the second, short
    outage: its "no server" clock had started in the first outage and was never reset while
    it waited for the full (but online) server.

    The pool's clock is injected and only moves when the test says. Canary jobs, queued
    ahead of B and cancelled while the server is in a given state, show that the dispatcher
    has looked at B in that state (it drops a cancelled local job on its next pass)."""
    clock = FakeClock()
    wait_for_server = 5.0
    mock_comfy.pause_jobs()
    with pool_of([mock_comfy], extra={"max_queue": 1}, background_status=False, status_ttl=3600.0, clock=clock,
                 wait_for_server=wait_for_server) as pool:
        a = pool.submit(sleep_workflow(seconds=0.2, steps=2, prefix="a"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="A runs (the server is full)")
        canaries = [pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix=f"c{i}")) for i in range(3)]
        b = pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix="b"))

        used = []

        def dispatcher_has_seen_b() -> None:
            canary = canaries.pop(0)
            canary.cancel()
            assert canary.wait(20)
            used.append(canary)

        def set_reachable(up: bool) -> None:
            mock_comfy.set_fault(None if up else "refuse")
            assert [s.online for s in pool.status(refresh=True)] == [up]
            dispatcher_has_seen_b()

        try:
            set_reachable(False)  # outage 1: B starts waiting for a server
            set_reachable(True)  # back: B waits for a full server only
            clock.advance(wait_for_server + 1)  # ... for longer than wait_for_server
            set_reachable(False)  # outage 2, just begun
            assert not b.done, f"B failed in a fresh outage: {b.exception(0)}"
            assert [c.status for c in used] == ["cancelled"] * 3  # none failed either
            mock_comfy.set_fault(None)
            pool.status(refresh=True)
            mock_comfy.resume_jobs()
            assert a.result(timeout=20) and b.result(timeout=20)
        finally:  # the pool closes against a reachable server whatever happened
            mock_comfy.set_fault(None)
            mock_comfy.resume_jobs()
