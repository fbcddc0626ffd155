"""Issue 17: a job's end never waits on user code, and close() is bounded and final.

Each defect of the issue's second fault-injection review is reproduced here against real mock
ComfyUI servers on loopback, with the pool's real threads; each test failed on the code before
the fix for the reason its docstring gives ("Seen: ").

Defect (issue 17) -> test
  1  close() leaves a runner, job ended twice   test_close_while_the_server_refuses_ends_every_runner_and_reports_once
  2  close() drops "done"                       test_close_never_drops_done_behind_a_slow_done_callback
  3  a callback reading a result deadlocks      test_a_callback_may_use_the_api[...] (10 cases)
  4  map(timeout) unbounded with a slow on_event test_map_is_bounded_whatever_on_event_does
  5  a strategy that raises hangs the pool      test_a_strategy_that_raises_fails_that_job_only
  6  reachable server declared lost, runs twice test_a_reachable_server_with_a_broken_history_is_not_declared_lost
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Sequence, Tuple

import pytest
from helpers import wait_until
from test_fault_matrix import first_of, library_threads, pool_of, runs

from comfy_cluster import JobCancelled
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.workflows import image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(120)

TERMINAL = ("succeeded", "failed", "cancelled")


class Recorder:
    """An on_event callback that records (job index or prefix, kind) and can be awaited."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.seen: List[Tuple[Any, str]] = []
        self.changed = threading.Condition(self.lock)

    def __call__(self, event: Any) -> None:
        with self.changed:
            self.seen.append((event.index if event.index is not None else event.prompt_id, event.kind))
            self.changed.notify_all()

    def terminal(self) -> List[Tuple[Any, str]]:
        with self.lock:
            return [s for s in self.seen if s[1] in TERMINAL]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout=timeout)


def terminal_events(job: Any) -> List[str]:
    return [e.kind for e in job.events if e.kind in TERMINAL]


# ---------------------------------------------------------------------------------------------
# 1. close() leaves a runner behind and reports a job twice.


def test_close_while_the_server_refuses_ends_every_runner_and_reports_once(mock_comfy: MockComfyServer) -> None:
    """Seen: close() returned after ~4 s with comfy-cluster-job-mock still alive; it went on
    retrying its cancel for server_lost_after (15 s) and then reported the job cancelled a
    second time (on_event and job.events), after close had returned."""
    before = set(library_threads())
    record = Recorder()
    mock_comfy.pause_jobs()
    try:
        pool = pool_of([mock_comfy], server_lost_after=15.0)
        job = pool.submit(sleep_workflow(seconds=3, steps=6, prefix="close1"), on_event=record)
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job runs")
        mock_comfy.set_fault("refuse")
        pool.close()
        left = set(library_threads()) - before
        assert left == set(), f"library threads alive after close(): {sorted(left)}"
        assert job.done and terminal_events(job) == ["cancelled"], job.events
        assert [k for _, k in record.terminal()] == ["cancelled"]
    finally:
        mock_comfy.set_fault(None)
        mock_comfy.resume_jobs()


# ---------------------------------------------------------------------------------------------
# 2. close() drops "done".


def test_close_never_drops_done_behind_a_slow_done_callback(mock_comfy: MockComfyServer) -> None:
    """Seen: while a done-callback ran, another job that had succeeded stayed wait() False;
    close() gave the callback thread 2 s and dropped everything queued behind it, done
    signals included: the succeeded job and the job close cancelled stayed not done for ever."""
    record = Recorder()
    held, release = threading.Event(), threading.Event()

    def slow(job: Any) -> None:
        held.set()
        release.wait(60)

    pool = pool_of([mock_comfy], extra={"max_queue": 1})  # one job on the server, the next waits here
    try:
        first = pool.submit(image_workflow(color=1, prefix="first"), on_event=record)
        first.add_done_callback(slow)
        assert held.wait(20), "the done-callback never ran"
        second = pool.submit(image_workflow(color=2, prefix="second"), on_event=record)
        assert second.wait(20), "a job that succeeded is not done while a callback runs"
        assert second.result(timeout=0).server == "mock"
        mock_comfy.pause_jobs()
        third = pool.submit(sleep_workflow(seconds=2, steps=2, prefix="third"), on_event=record)
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the third job runs")
        fourth = pool.submit(image_workflow(color=4, prefix="fourth"), on_event=record)  # waits locally
        pool.close()
        assert fourth.wait(0) and fourth.status == "cancelled"
        assert third.wait(0) and third.status == "cancelled"
        with pytest.raises(JobCancelled):
            third.result(timeout=0)
        assert second.wait(0) and second.status == "succeeded"
    finally:
        release.set()
        mock_comfy.resume_jobs()
        pool.close()
    # Terminal events queued behind the slow callback are delivered once it returns.
    assert record.wait_for(lambda r: len(r.terminal()) == 4), record.seen
    assert sorted(k for _, k in record.terminal()) == ["cancelled", "cancelled", "succeeded", "succeeded"]
    wait_until(lambda: not [n for n in library_threads() if "callbacks" in n], what="the callback thread ends")


# ---------------------------------------------------------------------------------------------
# 3. A callback that reads a result deadlocks the pool; every call must work from a callback.

OPS = ["result", "wait", "download", "cancel", "submit"]


@pytest.mark.parametrize("where", ["on_event", "done_callback"])
@pytest.mark.parametrize("op", OPS)
def test_a_callback_may_use_the_api(mock_comfy: MockComfyServer, tmp_path: Any, op: str, where: str) -> None:
    """Seen (download from on_event "succeeded", the issue's case): download() waited for
    result(), whose done signal was queued behind this very callback: no job of the pool ever
    became done again. result()/wait() of a job not yet ended, and a submit() whose result is
    awaited, deadlocked the same way, from on_event and from done-callbacks alike."""
    out: Dict[str, Any] = {}
    finished = threading.Event()
    pool = pool_of([mock_comfy])

    def act(target: Any) -> None:
        try:
            if op == "result":
                out["value"] = target.result(timeout=20).server
            elif op == "wait":
                out["value"] = target.wait(20)
            elif op == "download":
                out["value"] = len(target.download(str(tmp_path)))
            elif op == "cancel":
                out["value"] = target.cancel()
            else:
                out["value"] = pool.submit(image_workflow(color=7, prefix="fromcb")).result(timeout=20).server
        except BaseException as exc:  # recorded for the assertion below
            out["error"] = repr(exc)
        finally:
            finished.set()

    expected = {"result": "mock", "wait": True, "download": 1, "cancel": True, "submit": "mock"}[op]
    try:
        if op == "cancel":
            mock_comfy.pause_jobs()  # the target runs until the callback cancels it
        workflow = sleep_workflow(seconds=0.2, steps=2, prefix="target")
        if where == "on_event":
            # The job's own early event: the call waits for (or changes) the job's end.
            fired: List[bool] = []
            assigned = threading.Event()

            def on_event(event: Any) -> None:
                if event.kind == "queued" and not fired:
                    fired.append(True)
                    assigned.wait(20)  # ``target`` is bound once submit() has returned
                    act(target)

            target = pool.submit(workflow, on_event=on_event)
            assigned.set()
        else:
            # A done-callback of another job acts on this one, which ends later.
            other = pool.submit(image_workflow(color=5, prefix="other"))
            assert other.wait(20)
            target = pool.submit(workflow)
            other.add_done_callback(lambda job: act(target))
        assert finished.wait(40), f"{op} from {where} never returned"
        assert out.get("error") is None, out["error"]
        assert out["value"] == expected
        assert target.wait(20)
        assert target.status == ("cancelled" if op == "cancel" else "succeeded")
    finally:
        mock_comfy.resume_jobs()
        pool.close()


# ---------------------------------------------------------------------------------------------
# 4. map(timeout=...) is not bounded while on_event is slow.


def test_map_is_bounded_whatever_on_event_does(mock_comfy: MockComfyServer) -> None:
    """Seen: map(timeout=4) with an on_event taking 0.2 s per progress event returned after
    16 s, never raising: once the jobs were final it waited for the callback queue without a
    limit. Here on_event holds the callback thread until map has returned."""
    release = threading.Event()
    returned: Dict[str, Any] = {}

    def on_event(event: Any) -> None:
        if event.kind == "progress":
            release.wait(60)

    pool = pool_of([mock_comfy])
    try:
        def run_map() -> None:
            try:
                returned["value"] = pool.map([sleep_workflow(seconds=0.05, steps=4, prefix=f"m{i}") for i in range(4)], on_event=on_event, timeout=4)
            except BaseException as exc:
                returned["value"] = exc

        thread = threading.Thread(target=run_map, name="test-map")
        thread.start()
        thread.join(40)
        assert not thread.is_alive(), "map(timeout=4) still running after 40 s"
        value = returned["value"]
        assert isinstance(value, (list, TimeoutError)), value
        if isinstance(value, list):
            assert [r.server for r in value] == ["mock"] * 4
    finally:
        release.set()
        pool.close()


# ---------------------------------------------------------------------------------------------
# 5. A strategy that raises hangs the pool.


def test_a_strategy_that_raises_fails_that_job_only(mock_comfy: MockComfyServer) -> None:
    """Seen: submit() accepted the job, every dispatcher pass failed on it ("dispatcher pass
    failed", every 0.5 s), the job stayed queued for ever and the healthy job behind it was
    never dispatched."""

    def picky(candidates: Sequence[Any], workflow: Any) -> Any:
        if workflow["3"]["inputs"]["filename_prefix"] == "bad":
            raise KeyError("ckpt_name")
        return candidates[0]

    with pool_of([mock_comfy], strategy=picky) as pool:
        bad = pool.submit(image_workflow(color=1, prefix="bad"))
        good = pool.submit(image_workflow(color=2, prefix="good"))
        assert good.result(timeout=20).server == "mock"
        assert bad.wait(20), bad.status
        assert bad.status == "failed"
        message = str(bad.exception())
        assert "strategy" in message and "picky" in message and "KeyError" in message and "ckpt_name" in message, message


# ---------------------------------------------------------------------------------------------
# 6. A reachable server is declared lost and the job runs twice.


def test_a_reachable_server_with_a_broken_history_is_not_declared_lost(mock_cluster_factory: Any) -> None:
    """Seen: s1 answered every GET /queue, but its websocket was half-open and GET /history
    answered 500: the job was declared "stopped answering", s1 marked offline, and the job ran
    again on s2."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1 = cluster.servers[0]
    with pool_of(cluster.servers, strategy=first_of("s1"), probe_timeout=(10.0, 10.0)) as pool:
        s1.mute_websockets(pool.client_id)  # half-open: every frame to us is lost
        s1.fail_route("/history", "500", method="GET")  # e.g. an output history cannot serialise
        job = pool.submit(sleep_workflow(seconds=0.1, steps=2, prefix="reach"))
        assert job.wait(40), job.status
        online = {s.name: (s.online, s.error) for s in pool.status(refresh=True)}
        queue_reads = s1.answered("/queue")
    assert [(name, r.outcome) for name, r in runs(cluster.servers, "reach")] == [("s1", "success")]
    assert online["s1"][0], online
    assert queue_reads > 0
    assert job.status == "failed"
    message = str(job.exception())
    assert "s1" in message and "history" in message.lower() and "500" in message, message


# ---------------------------------------------------------------------------------------------
# Suspected points (issue 17), each settled by a test that failed before its fix.


@pytest.mark.parametrize("status", [401, 403, 404, 429, 413])
def test_a_proxys_4xx_on_post_moves_the_job_or_fails_it_clearly(mock_cluster_factory: Any, status: int, caplog: Any) -> None:
    """Seen: every 4xx on POST /prompt from one server (a proxy in front of it) failed the job
    ("HTTP 403 on POST /prompt") although another server could run it. Now 401/403/404 mark
    that server offline with the reason and move the job, 429 moves it (later or elsewhere),
    and 413 fails it with a message naming the size."""
    import logging

    caplog.set_level(logging.WARNING, logger="comfy_cluster.status")
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1 = cluster.servers[0]
    s1.fail_route("/prompt", str(status), method="POST")
    with pool_of(cluster.servers, strategy=first_of("s1"), probe_timeout=(10.0, 10.0), status_ttl=3600.0) as pool:
        job = pool.submit(image_workflow(color=3, prefix="proxy"))
        assert job.wait(30)
    # s1 answers GET /queue, so its next probe finds it online again: the moment it was marked
    # offline, with the reason, is in the status monitor's log.
    offline = [r.getMessage() for r in caplog.records if r.name == "comfy_cluster.status" and "s1 is offline" in r.getMessage()]
    if status == 413:
        assert job.status == "failed"
        message = str(job.exception())
        assert "413" in message and "bytes" in message and "too large" in message, message
        assert s2_ran(cluster) == 0
    else:
        assert job.status == "succeeded", job.exception()
        assert job.result().server == "s2"
        moved = [e for e in job.events if e.kind == "retrying"]
        assert [(e.from_server, e.to_server) for e in moved] == [("s1", "s2")] and str(status) in (moved[0].reason or "")
        assert offline and all(str(status) in m for m in offline), offline
        assert len(s1.received_prompts) == 0  # the proxy answered; ComfyUI never saw the job


def s2_ran(cluster: Any) -> int:
    return len(cluster.servers[1].executions)


def test_a_replaced_plate_is_never_sent_under_its_old_hash(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """Seen: a plate overwritten in place by other bytes of the same size, with its time stamp
    kept (a copy that keeps times, a coarse file system), was uploaded under the old bytes'
    hash: it overwrote the file the first job (still queued) was to read, and that job
    rendered the new bytes."""
    import os

    from comfy_cluster.testing.png import png_bytes
    from comfy_cluster.testing.workflows import load_image_workflow
    from test_fault_matrix import raw_submit, sha

    plate = tmp_path / "plate.0001.png"
    old, new = png_bytes(8, 8, (10, 20, 30)), png_bytes(8, 8, (200, 20, 30))
    assert len(old) == len(new)
    plate.write_bytes(old)
    stamp = os.stat(plate).st_mtime_ns
    mock_comfy.pause_jobs()
    raw_submit(mock_comfy, sleep_workflow(seconds=0.05, steps=1, seed=3))  # holds the GPU
    try:
        with pool_of([mock_comfy]) as pool:
            first = pool.submit(load_image_workflow("x.png", prefix="old"), inputs={"1": str(plate)})
            wait_until(lambda: len(mock_comfy.received_prompts) == 2, what="the first job queued on the server")
            with open(plate, "r+b") as fh:  # in place: same inode, same size
                fh.write(new)
            os.utime(plate, ns=(stamp, stamp))
            second = pool.submit(load_image_workflow("x.png", prefix="new"), inputs={"1": str(plate)})
            wait_until(lambda: len(mock_comfy.received_prompts) == 3, what="the second job queued on the server")
            mock_comfy.resume_jobs()
            first.result(timeout=20), second.result(timeout=20)
    finally:
        mock_comfy.resume_jobs()
    read = {p: [r.inputs["1"][1] for _, r in runs([mock_comfy], p)] for p in ("old", "new")}
    assert read == {"old": [sha(old)], "new": [sha(new)]}


def test_job_events_keep_only_the_last_preview_frame(mock_comfy: MockComfyServer) -> None:
    """Seen: job.events held every binary preview frame of the job (one per sampling step:
    unbounded memory per job). on_event still gets each frame; job.events keeps the last."""
    from comfy_cluster.testing.workflows import txt2img_workflow

    frames: List[bytes] = []

    def on_event(event: Any) -> None:
        if event.kind == "preview":
            frames.append(event.data)

    with pool_of([mock_comfy]) as pool:
        job = pool.submit(txt2img_workflow(steps=8, seed=11, prefix="prev"), on_event=on_event)
        job.result(timeout=30)
        done = threading.Event()
        job.add_done_callback(lambda j: done.set())  # runs after every on_event call of the job
        assert done.wait(20)
    previews = [e for e in job.events if e.kind == "preview"]
    assert len(frames) >= 8
    assert len(previews) == 1 and previews[0].data == frames[-1]
    assert job.events[-1].kind == "succeeded"


def test_cancel_returning_true_means_the_job_ends_cancelled(mock_comfy: MockComfyServer) -> None:
    """Seen: cancel() returned True and the job then ended "succeeded": it had finished on the
    server (our websocket deaf, so we did not know) before the cancel reached it. cancel()
    returning True now means the job ends cancelled; False means it had ended already."""
    from test_fault_matrix import outcome_of, signal_on

    with pool_of([mock_comfy], reconcile_interval=30.0) as pool:
        started = threading.Event()
        job = pool.submit(sleep_workflow(seconds=0.1, steps=1, prefix="raced"), on_event=signal_on("started", started))
        assert started.wait(20)
        mock_comfy.mute_websockets(pool.client_id)
        wait_until(lambda: outcome_of(mock_comfy, job.prompt_id or "") == "success", what="the job finished on the server")
        assert job.cancel() is True
        mock_comfy.unmute_websockets()
        assert job.wait(20)
        assert job.status == "cancelled", job.status
        with pytest.raises(JobCancelled):
            job.result(timeout=0)
        assert terminal_events(job) == ["cancelled"]
        assert "succeeded" in (job.events[-1].reason or "")
        other = pool.submit(image_workflow(color=9, prefix="after"))
        assert other.result(timeout=20).server == "mock"
        assert other.cancel() is False and other.status == "succeeded"


def test_the_dispatcher_keeps_nothing_per_batch_once_its_jobs_left() -> None:
    """Seen: the dispatcher's per-batch counter kept one entry per batch ever queued (a pool
    in a Nuke session for days runs thousands); 2000 batches left 2000 entries."""
    import gc
    import time
    import tracemalloc

    from comfy_cluster.server_config import ServerConfig
    from comfy_cluster.dispatcher import Choice, Dispatcher, Verdict
    from comfy_cluster.jobs import Job, JobControl

    server = ServerConfig(name="a", host="127.0.0.1")
    started = [0]

    def start(job: Any, srv: Any) -> bool:
        started[0] += 1
        return True

    dispatcher = Dispatcher(lambda job: Choice(Verdict.GO, server), start, lambda job, err: None, clock=time.monotonic, wait_for_server=30.0)
    try:
        kept: List[Any] = []  # the caller keeps its batch handles (so no id is reused)

        def run_batches(n: int) -> None:
            for _ in range(n // 25):  # 25 batches waiting at a time, as a busy session has
                jobs = []
                for _ in range(25):
                    job = Job(image_workflow())
                    job.batch = object()
                    kept.append(job.batch)
                    jobs.append(JobControl(job))
                dispatcher.add(jobs)
                wait_until(lambda: dispatcher.pending() == 0, what="every job dispatched")

        run_batches(50)  # warm up (the thread, the dicts' first sizes)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*dispatcher.py")])
        run_batches(2000)
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*dispatcher.py")])
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert started[0] == 2050
        assert grown < 20_000, f"the dispatcher holds {grown} bytes more after 2000 batches"
    finally:
        dispatcher.close()


def test_a_name_look_up_is_bounded_by_the_probe_timeout(mock_comfy: MockComfyServer, monkeypatch: Any) -> None:
    """Seen: a probe of a server whose name the resolver does not answer took as long as the
    resolver (here: for ever) although the probe timeout is 0.5 s: socket timeouts do not
    cover getaddrinfo. Patched: only the look-up of one name, a state no loopback server can
    produce; every other name resolves as usual."""
    import socket

    from comfy_cluster import ServerPool

    release = threading.Event()
    real = socket.getaddrinfo

    def slow_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "slow-dns.invalid":
            release.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    statuses: Dict[str, Any] = {}
    try:
        pool = ServerPool([{"name": "dns", "url": f"http://slow-dns.invalid:{mock_comfy.port}"}, {"name": "ok", "url": mock_comfy.url}],
                          probe_timeout=(0.5, 1.0), background_status=False)
        thread = threading.Thread(target=lambda: statuses.update({s.name: s for s in pool.status(refresh=True)}), name="test-status")
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "status() still waiting on a name look-up after 30 s"
        assert statuses["ok"].online and not statuses["dns"].online
        assert "slow-dns.invalid" in (statuses["dns"].error or ""), statuses["dns"].error
    finally:
        release.set()
        pool.close()


def test_close_from_a_done_callback_returns_and_leaves_no_thread(mock_comfy: MockComfyServer) -> None:
    """close() called on the callback thread itself (a script ending its pool when its last
    job is done) must not wait for that thread: it returns, every other job ends once, and
    the callback thread ends after the callback."""
    before = set(library_threads())
    closed = threading.Event()
    mock_comfy.pause_jobs()
    pool = pool_of([mock_comfy])
    try:
        other = pool.submit(sleep_workflow(seconds=1, steps=2, prefix="other"))
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the other job runs")
        mock_comfy.resume_jobs()
        first = pool.submit(image_workflow(color=4, prefix="first"))

        def close_pool(job: Any) -> None:
            pool.close()
            closed.set()

        first.add_done_callback(close_pool)
        assert closed.wait(40), "close() from a done-callback never returned"
        assert first.status == "succeeded" and other.wait(0) and terminal_events(other) in (["cancelled"], ["succeeded"])
        wait_until(lambda: set(library_threads()) <= before, what="every library thread ends")
    finally:
        mock_comfy.resume_jobs()
        pool.close()


def test_close_mid_batch_ends_every_job_exactly_once(mock_cluster_factory: Any) -> None:
    """close() in the middle of a batch (jobs running, queued on servers, waiting locally,
    moving away from a server that just started refusing): when it returns every job is done
    with exactly one terminal event, its last; on_event gets exactly one per job, and no
    library thread is left."""
    before = set(library_threads())
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    record = Recorder()
    pool = pool_of(cluster.servers, server_lost_after=15.0)
    try:
        batch = pool.map_async([sleep_workflow(seconds=0.3, steps=2, prefix=f"b{i}") for i in range(24)], on_event=record)
        wait_until(lambda: batch.counts()[0] >= 4, what="a few jobs done")
        s1.set_fault("refuse")  # its jobs start moving (or wait out the loss window)
        pool.close()
        left = set(library_threads()) - before
        assert left == set(), f"library threads alive after close(): {sorted(left)}"
        for job in batch.jobs:
            ends = terminal_events(job)
            assert job.done and len(ends) == 1 and job.events[-1].kind == ends[0], (job, job.events[-3:])
        assert record.wait_for(lambda r: len(r.terminal()) >= 24), record.terminal()
        per_job: Dict[Any, int] = {}
        for index, _ in record.terminal():
            per_job[index] = per_job.get(index, 0) + 1
        assert per_job == {i: 1 for i in range(24)}, per_job
    finally:
        s1.set_fault(None)
        pool.close()
