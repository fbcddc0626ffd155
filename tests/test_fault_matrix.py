"""Issue 11's fault matrix: each defect reproduced against the public API over real mock
ComfyUI servers on loopback, asserting the behaviour the issue asks for.

Every test was seen failing on main before the attempt lifecycle was rebuilt, for the reason
its docstring gives ("Seen: "); all pass on main now. A new defect's test goes in as
``xfail(strict=True)`` until its fix lands. The mock's faults
used here (route faults, accept-then-stall, refuse_for, interrupt_ignores_id, muted and
late-noticed websockets, per-execution records with input hashes) are shown working in
tests/test_mock_faults_injected.py.

Defect (issue 11) -> test (reproduced: all yes)
  1  inputs overwritten by another job  test_same_named_inputs_of_two_pools_render_their_own_bytes,
                                        test_same_named_inputs_in_one_batch_render_their_own_bytes
  2  POST times out after acceptance    test_accepted_then_stalled_post_leaves_no_second_run
  3  one 500/timeout on /history        test_one_failed_history_read_does_not_rerun_a_finished_job[500|reset|hang]
  4  short outage fails queued jobs     test_outage_clock_measures_only_the_current_outage
  5  idle capable server left idle      test_job_for_an_idle_servers_model_does_not_wait_behind_a_full_server
  6  fail_fast misses late jobs         test_fail_fast_cancels_jobs_added_after_the_failure
  7  cancel during a network blip       test_cancel_during_a_network_blip_removes_the_job_once_reachable
                                        test_close_during_a_short_network_blip_removes_the_job
  8  map_async sends before checking    test_map_async_checks_every_input_before_sending_anything
  9  /object_info failure stalls        test_failing_object_info_is_cached_and_never_fetched_on_the_dispatch_path[500|reset]
                                        test_a_failed_node_list_read_is_retried_for_a_waiting_job
                                        (a regression of the first rebuild, found under load)
 10  close() blocks, thread left        test_close_with_a_server_hanging_in_post_is_bounded_and_final
 12  cancel interrupts a finished job   test_cancel_of_a_finished_job_never_interrupts_another_artists_job
 13  concurrent downloads, one path     test_concurrent_downloads_into_one_folder_never_share_a_path
 14  map(timeout) leaves batch running  test_map_timeout_cancels_the_batch_or_gives_it_back
 15  network split: both copies run     test_network_split_removes_the_old_copy_once_reachable[first-cleanup-fails]
                                        ([clean-return] passed before the rebuild too)
Suspected points, all three confirmed:
     ws reconnect loses registration    test_job_events_survive_a_late_noticed_websocket_close
     SystemExit from a callback         test_system_exit_from_a_callback_does_not_strand_the_job
     custom strategy's non-candidate    test_custom_strategy_returning_a_non_candidate_cannot_bypass_the_online_check,
                                        test_custom_strategy_returning_a_non_candidate_cannot_bypass_max_queue
Chaos (slow): two pools sharing three servers, same-named plates, executions counted per job
on the servers: test_chaos_two_pools_same_named_inputs[1|2|3]
(11 and 16 are the portability engineer's, tested with their work.)
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import requests
from helpers import ThawableClock, wait_until

from comfy_cluster import ComfyClusterError, ServerPool
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.engine import Execution
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import fail_workflow, image_workflow, load_image_workflow, sleep_workflow, txt2img_workflow

pytestmark = pytest.mark.timeout(60)

#: Short knobs so a fault shows within seconds (the defaults are tuned for real networks).
FAST: Dict[str, Any] = dict(
    ws_connect_timeout=5.0,
    probe_timeout=(0.5, 1.0),
    request_timeout=(1.0, 2.0),
    reconcile_interval=0.5,
    server_lost_after=2.0,
    backoff_cap=0.5,
)


def pool_of(servers: Sequence[MockComfyServer], extra: Optional[Dict[str, Any]] = None, **kwargs: Any) -> ServerPool:
    """A pool over ``servers`` with the FAST knobs (``kwargs`` override them)."""
    configs = [dict({"name": s.name, "url": s.url}, **(extra or {})) for s in servers]
    return ServerPool(configs, **dict(FAST, **kwargs))


@contextlib.contextmanager
def started(*servers: MockComfyServer) -> Iterator[List[MockComfyServer]]:
    """Start servers made with their own arguments; stop them all afterwards."""
    try:
        yield [s.start() for s in servers]
    finally:
        for server in servers:
            server.stop()


def signal_on(kind: str, event: threading.Event) -> Any:
    """An on_event callback that sets ``event`` when a JobEvent of ``kind`` comes."""

    def on_event(job_event: Any) -> None:
        if job_event.kind == kind:
            event.set()

    return on_event


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


def test_accepted_then_stalled_post_leaves_no_second_run(mock_cluster_factory: Any) -> None:
    """Seen: the copy on s1 ran to the end ("success") after the job had moved to s2 and s1
    answered again: the attempt was recorded only after a successful POST."""
    cluster = mock_cluster_factory(speeds=(1, 4), names=("s1", "s2"))
    slow = cluster.servers[0]
    slow.stall_prompt()  # s1 queues and runs the job, but its answer never comes ...
    slow.pause_jobs()
    with pool_of(cluster.servers, strategy=first_of("s1"), request_timeout=(1.0, 1.0)) as pool:
        job = pool.submit(sleep_workflow(seconds=3, steps=6, prefix="once"))
        wait_until(lambda: slow.received_prompts, what="s1 accepted the prompt")
        slow.set_fault("hang")  # ... and then s1 stops answering anything for a while
        result = job.result(timeout=30)
        assert result.server == "s2"
        slow.clear_faults()  # s1 answers again while its copy still runs (held paused, so it
        # cannot finish before the pool removes it, however slowly a loaded machine goes)
        wait_until(lambda: slow.queue_snapshot() == ([], []), timeout=30, what="the copy on s1 removed")
        slow.resume_jobs()
        wait_until(lambda: all(r.outcome for _, r in runs(cluster.servers, "once")), timeout=20, what="the copy on s1 ended")
    ends = sorted((name, r.outcome) for name, r in runs(cluster.servers, "once"))
    assert ends == [("s1", "interrupted"), ("s2", "success")]


# ---------------------------------------------------------------------------------------------
# 3. One 500 (or one timeout) reading /history after the job's end.


@pytest.mark.parametrize("fault", ["500", "reset", "hang"])
def test_one_failed_history_read_does_not_rerun_a_finished_job(mock_cluster_factory: Any, fault: str) -> None:
    """Seen: the job ran again on s2 (two executions, both "success") and s1 was marked offline."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    first = cluster.servers[0]
    # No execution_success (an older ComfyUI): the end is only "executing" null, so the
    # result must be read from /history (a job heard whole on its socket needs no read).
    first.sends_execution_success = False
    first.fail_route("/history", fault, count=1, method="GET")
    # Only /history fails; probes time out late so a loaded machine's slow probe is no outage.
    with pool_of(cluster.servers, strategy=first_of("s1"), probe_timeout=(10.0, 10.0)) as pool:
        result = pool.submit(sleep_workflow(seconds=0.1, steps=2, prefix="read")).result(timeout=30)
        online = {s.name: s.online for s in pool.status()}
    assert [(name, r.outcome) for name, r in runs(cluster.servers, "read")] == [("s1", "success")]
    assert result.server == "s1" and online["s1"]


# ---------------------------------------------------------------------------------------------
# 12. Cancel interrupts a job that already finished.


def test_cancel_of_a_finished_job_never_interrupts_another_artists_job(mock_comfy: MockComfyServer) -> None:
    """Seen: the other artist's job ended "interrupted": /interrupt was sent because our job
    had once been seen started, and this (older) server stops whatever runs."""
    mock_comfy.interrupt_ignores_id = True
    # Our websocket goes deaf (frames lost) and polling is slow: we do not learn that our job
    # has ended, as on a congested network.
    with pool_of([mock_comfy], reconcile_interval=30.0) as pool:
        started = threading.Event()
        job = pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix="ours"), on_event=signal_on("started", started))
        assert started.wait(20)
        mock_comfy.mute_websockets(pool.client_id)
        wait_until(lambda: outcome_of(mock_comfy, job.prompt_id or "") == "success", what="our job finished on the server")
        mock_comfy.pause_jobs()  # their job runs until our cancel is over, however loaded the machine
        theirs = raw_submit(mock_comfy, sleep_workflow(seconds=2, steps=4, prefix="theirs"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0] == [theirs], what="their job runs")
        job.cancel()
        mock_comfy.unmute_websockets()
        assert job.wait(20)
        mock_comfy.speed = 100.0  # an interrupt would have ended it by now (they work while paused)
        mock_comfy.resume_jobs()
        wait_until(lambda: outcome_of(mock_comfy, theirs) is not None, what="their job ended")
    assert outcome_of(mock_comfy, theirs) == "success"


# ---------------------------------------------------------------------------------------------
# 13. Two concurrent download() into one folder.


def test_concurrent_downloads_into_one_folder_never_share_a_path(mock_cluster_factory: Any, tmp_path: Any) -> None:
    """Seen before the fix: both downloads returned the same path (both saw the name free
    before either wrote); one file overwrote the other. Fixed by outputs.py's atomic claim."""
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


def test_outage_clock_measures_only_the_current_outage(mock_comfy: MockComfyServer) -> None:
    """Seen: job B failed with NoServerAvailable at the first instant of the second, short
    outage: its "no server" clock had started in the first outage and was never reset while
    it waited for the full (but online) server.

    The pool's clock is injected and only moves when the test says. Canary jobs, queued
    ahead of B and cancelled while the server is in a given state, show that the dispatcher
    has looked at B in that state (it drops a cancelled local job on its next pass)."""
    clock = ThawableClock()
    wait_for_server = 60.0  # fake seconds; once the clock runs, ample time for every retry
    mock_comfy.pause_jobs()
    # The outages here are refusals, never hangs: generous probe/request timeouts keep a loaded
    # machine's slow answer from looking like a third outage.
    with pool_of([mock_comfy], extra={"max_queue": 1}, background_status=False, status_ttl=3600.0, clock=clock,
                 wait_for_server=wait_for_server, probe_timeout=(10.0, 10.0), request_timeout=(10.0, 10.0)) as pool:
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
            read = mock_comfy.answered("/object_info")
            mock_comfy.set_fault(None if up else "refuse")
            assert [s.online for s in pool.status(refresh=True)] == [up]
            dispatcher_has_seen_b()
            if up:  # a server back may have restarted: its node list is read again; let
                # that read end before the next outage rather than cutting it
                _wait_quietly(lambda: mock_comfy.answered("/object_info") > read, 5)

        try:
            set_reachable(False)  # outage 1: B starts waiting for a server
            set_reachable(True)  # back: B waits for a full server only
            clock.advance(wait_for_server + 1)  # ... for longer than wait_for_server
            set_reachable(False)  # outage 2, just begun
            assert not b.done, f"B failed in a fresh outage: {b.exception(0)}"
            assert [c.status for c in used] == ["cancelled"] * 3  # none failed either
            # From here time runs (grace periods of the pool end), and every job finishes.
            clock.thaw()
            mock_comfy.set_fault(None)
            pool.status(refresh=True)
            mock_comfy.resume_jobs()
            assert a.result(timeout=20) and b.result(timeout=20)
        finally:  # the pool closes against a reachable server whatever happened
            mock_comfy.set_fault(None)
            mock_comfy.resume_jobs()


# ---------------------------------------------------------------------------------------------
# 5. Jobs wait while a capable server is idle.


def test_job_for_an_idle_servers_model_does_not_wait_behind_a_full_server() -> None:
    """Seen: Z (model only on the idle s2) never left the local queue while s1 was full: the
    dispatcher's "this kind must wait" memo is keyed by node types, and Y (s1's model, same
    node types) had just been told to wait."""
    with started(MockComfyServer(name="s1", models=["one.safetensors"]), MockComfyServer(name="s2", models=["two.safetensors"])) as (s1, s2), \
            pool_of([s1, s2], extra={"max_queue": 1}) as pool:
        s1.pause_jobs()
        x = pool.submit(txt2img_workflow("one.safetensors", seed=1, prefix="x"))
        wait_until(lambda: s1.queue_snapshot()[0], what="X runs on s1 (full now)")
        y = pool.submit(txt2img_workflow("one.safetensors", seed=2, prefix="y"))
        z = pool.submit(txt2img_workflow("two.safetensors", seed=3, prefix="z"))
        try:
            wait_until(lambda: s2.received_prompts, timeout=5, what="Z sent to the idle s2")
            assert z.result(timeout=20).server == "s2"
            assert not y.done and y.status == "queued"
        finally:
            s1.resume_jobs()
        assert x.result(timeout=20) and y.result(timeout=20)


# ---------------------------------------------------------------------------------------------
# 6. fail_fast misses jobs added after the failure.


class _SubmitGate(ServerPool):
    """A pool whose third and later submit() calls wait for ``gate``: a large batch still
    being queued when its first job fails (a real 1500-job batch does that by itself)."""

    gate: threading.Event
    calls = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > 2:
            assert self.gate.wait(20), "the batch's first failure never cancelled job 1"
        return super().submit(*args, **kwargs)


def test_fail_fast_cancels_jobs_added_after_the_failure() -> None:
    """Seen: jobs 2-5, queued after job 0 had failed and fail_fast had cancelled job 1, all
    ran ("succeeded"): fail_fast cancels only the jobs the batch held at the failure."""
    gate = threading.Event()

    def on_event(event: Any) -> None:
        if event.kind == "cancelled" and event.index == 1:
            gate.set()

    # Job 0 can only fail on s1; the others can only run on s2, held until the batch is queued.
    kinds = ("EmptyImage", "SaveImage")
    with started(MockComfyServer(name="s1", node_types=kinds + ("TestFail",)), MockComfyServer(name="s2", node_types=kinds + ("TestSleep",))) as (s1, s2):
        s2.pause_jobs()
        configs = [{"name": s.name, "url": s.url} for s in (s1, s2)]
        pool = _SubmitGate(configs, **FAST)
        pool.gate = gate
        with pool:
            workflows = [fail_workflow("first one fails")] + [sleep_workflow(seconds=0.2, steps=2, seed=i, prefix=f"j{i}") for i in range(1, 6)]
            batch = pool.map_async(workflows, fail_fast=True, on_event=on_event)
            # map_async queues the whole batch at once (no job is dispatched before the last is
            # queued), so the gate in submit() may never be reached: hold s2 until the failure.
            assert gate.wait(20), "the batch's first failure never cancelled job 1"
            results = batch.results(timeout=30, return_exceptions=True)
            # s2 is held until the cancels have reached it (interrupts work while paused): a
            # copy left there would run once resumed, whatever the machine's load.
            wait_until(lambda: s2.queue_snapshot() == ([], []), timeout=30, what="s2 rid of the batch's jobs")
            s2.resume_jobs()
        statuses = [job.status for job in batch.jobs]
        assert statuses[0] == "failed" and statuses[1:] == ["cancelled"] * 5, statuses
        # Only the job s2 was running when job 0 failed ran at all (interrupted): which of jobs
        # 1-5 that is depends on which runner's POST reached s2 first.
        ran = [r for i in range(1, 6) for _, r in runs([s2], f"j{i}")]
        assert len(ran) <= 1 and all(r.outcome == "interrupted" for r in ran), ran
        assert len(results) == 6


# ---------------------------------------------------------------------------------------------
# 7. cancel() during a network blip.


def test_cancel_during_a_network_blip_removes_the_job_once_reachable(mock_comfy: MockComfyServer) -> None:
    """Seen: the job was reported cancelled at once ("cancelled (server unreachable)") and its
    copy ran to the end ("success") once the server was reachable again: the delete and the
    interrupt were never retried."""
    mock_comfy.pause_jobs()
    with pool_of([mock_comfy]) as pool:
        job = pool.submit(sleep_workflow(seconds=3, steps=6, prefix="blip"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job runs")
        mock_comfy.set_fault("refuse")  # a network blip
        job.cancel()
        assert job.wait(20) and job.status == "cancelled"
        mock_comfy.set_fault(None)  # the copy is held paused until the pool has removed it
        wait_until(lambda: mock_comfy.queue_snapshot() == ([], []), timeout=30, what="the copy removed once reachable")
        mock_comfy.resume_jobs()
        wait_until(lambda: all(r.outcome for _, r in runs([mock_comfy], "blip")), timeout=20, what="the copy ended")
    assert [r.outcome for _, r in runs([mock_comfy], "blip")] == ["interrupted"]


def test_close_during_a_short_network_blip_removes_the_job(mock_comfy: MockComfyServer) -> None:
    """close() takes cancel's path (Ctrl-C in the CLI calls close()). Seen: close() returned
    with the job "cancelled (server unreachable)" and its copy ran to the end ("success")
    once the half-second blip was over."""
    mock_comfy.pause_jobs()
    pool = pool_of([mock_comfy])
    job = pool.submit(sleep_workflow(seconds=3, steps=6, prefix="closeblip"))
    wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job runs")
    mock_comfy.refuse_for(0.5)
    pool.close()
    assert job.done and job.status == "cancelled"
    wait_until(lambda: mock_comfy.queue_snapshot() == ([], []), timeout=30, what="the copy removed by close()")
    mock_comfy.resume_jobs()
    wait_until(lambda: all(r.outcome for _, r in runs([mock_comfy], "closeblip")), timeout=20, what="the copy ended")
    assert [r.outcome for _, r in runs([mock_comfy], "closeblip")] == ["interrupted"]


# ---------------------------------------------------------------------------------------------
# 8. map_async with a missing input file for job k.


def test_map_async_checks_every_input_before_sending_anything(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """Seen: map_async raised for job 2's missing file, and jobs 0 and 1 (already queued
    locally) were sent and ran, with no handle left to cancel them."""
    (good, _), = plates(tmp_path, 1)
    with pool_of([mock_comfy]) as pool:
        with pytest.raises(ComfyClusterError, match="missing.png"):
            pool.map_async(
                [load_image_workflow("x.png", prefix=f"m{i}") for i in range(3)],
                inputs=[{"1": good}, {"1": good}, {"1": str(tmp_path / "missing.png")}],
            )
        # A job submitted afterwards runs after anything the failed call left in the queue.
        pool.submit(image_workflow(color=5, prefix="after")).result(timeout=20)
    assert [prefix for prefix in ("m0", "m1") if runs([mock_comfy], prefix)] == []
    assert [p[1]["3"]["inputs"]["filename_prefix"] for p in mock_comfy.received_prompts] == ["after"]


# ---------------------------------------------------------------------------------------------
# 9. A server whose /object_info fails stalls everything.


@pytest.mark.parametrize("fault", ["500", "reset"])
def test_failing_object_info_is_cached_and_never_fetched_on_the_dispatch_path(mock_cluster_factory: Any, fault: str) -> None:
    """Seen: s1's /object_info was asked again by every submit and dispatcher pass (5 jobs:
    hits >= 5; with a hanging server each ask blocks the caller up to 10 s)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1 = cluster.servers[0]
    s1.fail_route("/object_info", fault)
    with pool_of(cluster.servers, backoff_cap=30.0) as pool:
        servers = [pool.submit(image_workflow(color=i, prefix=f"o{i}")).result(timeout=20).server for i in range(5)]
    assert servers == ["s2"] * 5
    assert s1.route_faults()[0].hits <= 2


def test_a_failed_node_list_read_is_retried_for_a_waiting_job(mock_comfy: MockComfyServer) -> None:
    """Found under load in the rebuilt pool (2a3daf0): a queued job whose server's node list
    could not be read once (here a 500 right after the server came back) keeps that answer
    in its own capability cache and never asks again: it waits until wait_for_server fails it,
    although /object_info answers again at once. Seen: B not finished after 8 s while the
    server sat idle."""
    mock_comfy.pause_jobs()
    # The outage is a refusal: probe timeouts only bound a hang (a slow probe is no outage).
    with pool_of([mock_comfy], extra={"max_queue": 1}, probe_timeout=(10.0, 10.0)) as pool:
        a = pool.submit(sleep_workflow(seconds=0.2, steps=2, prefix="a"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="A runs (the server is full)")
        b = pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix="b"))
        mock_comfy.set_fault("refuse")
        assert [s.online for s in pool.status(refresh=True)] == [False]
        mock_comfy.fail_route("/object_info", "500", count=1)  # the first read after the return fails
        mock_comfy.set_fault(None)
        assert [s.online for s in pool.status(refresh=True)] == [True]
        _wait_quietly(lambda: mock_comfy.route_faults() == [], 5)
        mock_comfy.resume_jobs()
        assert a.result(timeout=20).server == "mock"
        assert b.result(timeout=20).server == "mock"  # before wait_for_server (30 s) would fail it


# ---------------------------------------------------------------------------------------------
# 10. close() with a server hanging in POST.


def library_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("comfy-cluster")]


def test_close_with_a_server_hanging_in_post_is_bounded_and_final(mock_comfy: MockComfyServer) -> None:
    """Seen: close() returned (after its 15 s join deadline) with the runner thread
    comfy-cluster-job-mock still alive and the job unresolved ("queued")."""
    before = set(library_threads())
    mock_comfy.fail_route("/prompt", "hang", method="POST")  # the POST is never answered
    pool = pool_of([mock_comfy], request_timeout=(1.0, 60.0))
    job = pool.submit(image_workflow(color=3, prefix="hung"))
    wait_until(lambda: mock_comfy.held_requests() == 1, what="the POST hangs")
    pool.close()
    assert job.done and job.status in ("cancelled", "failed"), job.status
    assert set(library_threads()) <= before, library_threads()


# ---------------------------------------------------------------------------------------------
# 14. map(timeout=...) raises and leaves the batch running.


def test_map_timeout_cancels_the_batch_or_gives_it_back(mock_comfy: MockComfyServer) -> None:
    """Seen: map raised TimeoutError without a batch attribute, and none of the jobs was ever
    cancelled (they sat on the server, and would have run to the end)."""
    ended: Dict[int, str] = {}
    all_ended = threading.Event()

    def on_event(event: Any) -> None:
        if event.kind in ("succeeded", "failed", "cancelled"):
            ended[event.index] = event.kind
            if len(ended) == 4:
                all_ended.set()

    mock_comfy.pause_jobs()  # nothing can finish in time
    try:
        with pool_of([mock_comfy]) as pool:
            with pytest.raises(TimeoutError) as raised:
                pool.map([sleep_workflow(seconds=0.2, steps=1, seed=i, prefix=f"t{i}") for i in range(4)], timeout=0.5, on_event=on_event)
            batch = getattr(raised.value, "batch", None)
            if batch is not None:  # given back: the caller decides
                assert len(batch.jobs) == 4
                batch.cancel()
            assert all_ended.wait(30), ended
            assert ended == {i: "cancelled" for i in range(4)}
    finally:
        mock_comfy.resume_jobs()
    assert all(r.outcome != "success" for i in range(4) for _, r in runs([mock_comfy], f"t{i}"))


# ---------------------------------------------------------------------------------------------
# 15. After a 2-3 s network split the job moves, and the old copy also runs to the end.


@pytest.mark.parametrize(
    "cleanup_blip",
    [
        pytest.param(False, id="clean-return"),
        pytest.param(True, id="first-cleanup-fails"),
    ],
)
def test_network_split_removes_the_old_copy_once_reachable(mock_cluster_factory: Any, cleanup_blip: bool) -> None:
    """Seen (first-cleanup-fails): s1's copy ran to the end ("success") after the job had
    moved to s2: the one clean-up try met a 500 and the copy was forgotten (on main; also on
    core's a03279c, whose remove_copies retries only at the next offline-to-online change,
    and a 500 is an answer). A clean return is already handled (that case passes)."""
    cluster = mock_cluster_factory(speeds=(1, 6), names=("s1", "s2"))
    s1 = cluster.servers[0]
    s1.pause_jobs()
    # The copy left on s1 is held paused until the pool removes it: by a clean-up retried on the
    # next probe (status_ttl 1 s), not only on the next offline-to-online change.
    with pool_of(cluster.servers, strategy=first_of("s1"), status_ttl=1.0) as pool:
        job = pool.submit(sleep_workflow(seconds=6, steps=12, prefix="split"))
        wait_until(lambda: s1.queue_snapshot()[0], what="the job runs on s1")
        if cleanup_blip:  # s1's first answers after the split fail: the removal must retry
            for path in ("/queue", "/interrupt"):
                s1.fail_route(path, "500", count=1, method="POST")
        s1.refuse_for(3.0)  # longer than server_lost_after: the job moves
        assert job.result(timeout=30).server == "s2"
        wait_until(lambda: requests_ok(s1), what="s1 back")
        # s1's copy stays paused until the pool removes it: it cannot finish first on a slow machine.
        wait_until(lambda: s1.queue_snapshot() == ([], []), timeout=30, what="the old copy removed from s1")
        s1.resume_jobs()
        wait_until(lambda: all(r.outcome for _, r in runs(cluster.servers, "split")), timeout=20, what="every copy ended")
    ends = sorted((name, r.outcome) for name, r in runs(cluster.servers, "split"))
    assert ends == [("s1", "interrupted"), ("s2", "success")]


def requests_ok(server: MockComfyServer) -> bool:
    try:
        return requests.get(server.url + "/queue", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


# ---------------------------------------------------------------------------------------------
# Suspected points.


def test_job_events_survive_a_late_noticed_websocket_close(mock_comfy: MockComfyServer) -> None:
    """Confirmed. Seen: after the reconnect the server dropped the new socket's registration
    when it noticed the old socket's close (same clientId, as ComfyUI does); the pool got no
    more events and learned the job's end only from its slow polling (here never: 1 h)."""
    with pool_of([mock_comfy], reconcile_interval=3600.0) as pool:  # no periodic poll during the test
        progressed = threading.Event()
        job = pool.submit(sleep_workflow(seconds=1.0, steps=4, prefix="ws"), on_event=signal_on("progress", progressed))
        assert progressed.wait(20)
        mock_comfy.pause_jobs()
        mock_comfy.drop_websockets_late()
        wait_until(lambda: pool.client_id in mock_comfy.connected_clients() or mock_comfy.open_websockets() >= 1, what="reconnected")
        wait_until(lambda: pool.client_id not in mock_comfy.connected_clients(), what="registration dropped by the late close")
        mock_comfy.resume_jobs()
        assert job.result(timeout=30).server == "mock"  # the periodic poll never comes: events or the deaf-socket polling


def test_system_exit_from_a_callback_does_not_strand_the_job(mock_comfy: MockComfyServer) -> None:
    """Confirmed. Seen: SystemExit raised by on_event("succeeded") killed the runner thread
    before the job was marked finished: the job stayed "running" for ever although the server
    had finished it. (Raised on "started" it also leaves a dead runner that close() waits on
    for its whole 15 s deadline.)"""

    def on_event(event: Any) -> None:
        if event.kind == "succeeded":
            raise SystemExit(3)

    with pool_of([mock_comfy]) as pool:
        job = pool.submit(image_workflow(color=8, prefix="exit"), on_event=on_event)
        assert job.wait(30), job.status  # the image job itself takes milliseconds; stranded, it never ends
        assert job.status == "succeeded"
        assert pool.submit(image_workflow(color=9, prefix="next")).result(timeout=20).server == "mock"


def test_custom_strategy_returning_a_non_candidate_cannot_bypass_the_online_check(mock_cluster_factory: Any) -> None:
    """Confirmed. Seen: the strategy's "s1" (offline, not a candidate) was used three times:
    the job failed after 3 attempts on s1 ("connection refused") instead of never going there."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1 = cluster.servers[0]
    # The outage is a refusal: probes time out late so a slow probe on a loaded machine is none.
    with pool_of(cluster.servers, strategy=lambda candidates, workflow: "s1", probe_timeout=(10.0, 10.0)) as pool:
        assert [s.online for s in pool.status(refresh=True)] == [True, True]
        s1.set_fault("refuse")
        assert [s.online for s in pool.status(refresh=True)] == [False, True]
        job = pool.submit(image_workflow(color=4, prefix="strat"))
        assert job.wait(20)
    assert [e for e in job.events if e.from_server == "s1"] == []
    err = job.exception()
    assert err is None or getattr(err, "server", None) != "s1", err


def test_custom_strategy_returning_a_non_candidate_cannot_bypass_max_queue(mock_cluster_factory: Any) -> None:
    """Confirmed. Seen: s1 (max_queue 1, already holding our job) got the second job too."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    s1.pause_jobs()
    try:
        with pool_of(cluster.servers, extra={"max_queue": 1}, strategy=lambda candidates, workflow: "s1") as pool:
            # A sleeping job, so that pause_jobs() keeps it (and s1's only slot) busy.
            first = pool.submit(sleep_workflow(seconds=1.0, steps=2, seed=5, prefix="q1"))
            wait_until(lambda: len(s1.received_prompts) == 1, what="first job on s1")
            second = pool.submit(image_workflow(color=6, prefix="q2"))
            # The second job goes elsewhere, fails, or waits; s1 must not get it.
            _wait_quietly(lambda: len(s1.received_prompts) > 1 or bool(s2.received_prompts) or second.done, 5)
            assert len(s1.received_prompts) == 1
            first.cancel()
    finally:
        s1.resume_jobs()


def _wait_quietly(predicate: Any, timeout: float) -> bool:
    """wait_until that does not raise: for "this must never happen" checks with a bound."""
    try:
        wait_until(predicate, timeout=timeout)
        return True
    except AssertionError:
        return False


# ---------------------------------------------------------------------------------------------
# Chaos: two artists' pools share the servers, every job's input has the same file name.

CHAOS_JOBS_PER_POOL = 100


def plate_workflow(prefix: str, seed: int) -> Dict[str, Any]:
    """LoadImage -> TestSleep -> SaveImage: a job that reads its plate and takes a moment."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 0.15, "steps": 3, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def chaos_step(rng: random.Random, servers: Sequence[MockComfyServer], log: List[str]) -> None:
    """One fault under which the promise is "exactly once": nothing here loses a job or
    splits the network for longer than the pools' server_lost_after."""
    server = rng.choice(servers)
    kind = rng.choice(["refuse", "history500", "drop_ws", "drop_ws_late", "stall_post"])
    log.append(f"{kind} {server.name}")
    if kind == "refuse":
        server.refuse_for(rng.uniform(0.1, 0.6))
    elif kind == "history500":
        server.fail_route("/history", "500", count=rng.randint(1, 3), method="GET")
    elif kind == "drop_ws":
        server.drop_websockets()
    elif kind == "drop_ws_late":
        server.drop_websockets_late()
    else:
        server.stall_prompt(delay=0.2, count=1)  # answered late, within the client's timeout


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_two_pools_same_named_inputs(mock_cluster_factory: Any, tmp_path: Any, seed: int) -> None:
    """Two pools (two artists, the Nuke node's default name on every plate) run batches over
    three shared servers while faults come and go. Every job must run exactly once and read
    only its own plate. Seen: jobs read the other pool's plate (same name, overwritten) and
    jobs ran twice after a 500 on /history."""
    rng = random.Random(seed)
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    expected: Dict[str, str] = {}
    batches_inputs: List[List[Dict[str, str]]] = []
    workflows: List[List[Dict[str, Any]]] = []
    for artist in ("a", "b"):
        inputs, wfs = [], []
        for i in range(CHAOS_JOBS_PER_POOL):
            folder = tmp_path / f"{artist}{i}"
            folder.mkdir()
            data = png_bytes(8, 8, (i, 100 if artist == "a" else 200, seed))
            (folder / "ComfyUIClusterRun1.png").write_bytes(data)
            prefix = f"{artist}{i:03d}"
            expected[prefix] = sha(data)
            inputs.append({"1": str(folder / "ComfyUIClusterRun1.png")})
            wfs.append(plate_workflow(prefix, seed * 1000 + i))
        batches_inputs.append(inputs)
        workflows.append(wfs)
    knobs: Dict[str, Any] = dict(server_lost_after=3.0, request_timeout=(1.0, 2.0))
    log: List[str] = []
    done = threading.Event()

    def chaos() -> None:
        while not done.wait(rng.uniform(0.2, 0.6)):
            chaos_step(rng, cluster.servers, log)

    with pool_of(cluster.servers, **knobs) as pool_a, pool_of(cluster.servers, **knobs) as pool_b:
        batches = [pool.map_async(wfs, inputs=inputs) for pool, wfs, inputs in zip((pool_a, pool_b), workflows, batches_inputs)]
        thread = threading.Thread(target=chaos, name="chaos")
        thread.start()
        try:
            results = [b.results(timeout=180, return_exceptions=True) for b in batches]
        finally:
            done.set()
            thread.join()
            cluster.clear_faults()
    failed = [r for rs in results for r in rs if isinstance(r, BaseException)]
    successes: Dict[str, int] = {p: 0 for p in expected}
    foreign: List[str] = []
    for server in cluster.servers:
        for record in server.executions:
            prefix = record.prompt["3"]["inputs"]["filename_prefix"]
            if record.outcome == "success":
                successes[prefix] += 1
            if "1" in record.inputs and record.inputs["1"][1] != expected[prefix]:
                foreign.append(f"{prefix} on {server.name}")
    print(f"FIGURES chaos seed={seed} faults={len(log)} failed={len(failed)} foreign={len(foreign)} twice={sum(1 for n in successes.values() if n > 1)}")
    assert failed == []
    assert foreign == [], f"{len(foreign)} executions read another job's plate: {foreign[:5]}"
    assert {p: n for p, n in successes.items() if n != 1} == {}, "jobs not run exactly once"
