"""Behaviours the mutation run (tools/mutate.py, docs/TESTING.md) found unguarded: each test
checks what a user relies on, over the mock ComfyUI on loopback, and fails when the code that
keeps the promise is broken (the mutant it was written against is named in its docstring)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any, Dict, List, Sequence

import pytest
from helpers import callbacks_delivered, wait_until

from comfy_cluster import ServerPool
from comfy_cluster.jobs import TERMINAL_KINDS
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import fail_workflow, image_workflow, load_image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)

#: Short knobs so a fault shows within seconds (as in test_fault_matrix).
FAST: Dict[str, Any] = dict(ws_connect_timeout=5.0, probe_timeout=(0.5, 1.0), request_timeout=(1.0, 2.0),
                            reconcile_interval=0.5, server_lost_after=2.0, backoff_cap=0.5)


def pool_of(servers: Sequence[MockComfyServer], extra: Dict[str, Any], **kwargs: Any) -> ServerPool:
    return ServerPool([dict({"name": s.name, "url": s.url}, **extra) for s in servers], **dict(FAST, **kwargs))


def test_an_input_unreadable_at_upload_fails_the_job_on_the_spot(mock_cluster_factory: Any, tmp_path: Any) -> None:
    """The failure table's (upload, local) row: our own input file, gone by the time the job
    is sent, fails the job with the file's name; it is not moved from server to server and no
    server is marked offline for it (mutant: fault_of's "local" renamed, so the row is
    missed and the upload's "any other" row moves the job)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    plate = tmp_path / "plate.png"
    plate.write_bytes(png_bytes(8, 8, (1, 2, 3)))
    for s in cluster.servers:
        s.pause_jobs()  # the first job holds each server: ours waits in the pool's queue
    with pool_of(cluster.servers, {"max_queue": 1}) as pool:
        holders = [pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=i)) for i in range(2)]
        wait_until(lambda: all(len(s.received_prompts) == 1 for s in cluster.servers), what="both servers busy")
        job = pool.submit(load_image_workflow("plate.png", prefix="plate"), inputs={"1": str(plate)})
        os.remove(plate)  # checked at submit; gone before the upload
        for s in cluster.servers:
            s.resume_jobs()
        assert job.wait(30)
        assert all(h.result(timeout=30) for h in holders)
        assert job.status == "failed"
        assert "plate.png" in str(job.exception())
        assert [e for e in job.events if e.kind == "retrying"] == []
    assert all(len(s.received_prompts) == 1 for s in cluster.servers)  # nothing of it reached a server


def first_of(name: str) -> Any:
    """A strategy that takes ``name`` whenever it is a candidate (else the first candidate)."""
    return lambda candidates, workflow: next((c for c in candidates if c.name == name), candidates[0])


@pytest.mark.parametrize("status", ["413", "500"])
def test_an_upload_too_large_fails_the_job_and_any_other_upload_fault_moves_it(mock_cluster_factory: Any, tmp_path: Any, status: str) -> None:
    """The table's upload rows: a 413 on ``/upload/image`` (the input is too large for a
    proxy in front of the server) would be the same everywhere, so the job fails naming the
    size; any other upload fault moves the job at once, nothing of it being on the server
    (mutant: 413 taken for a plain 4xx, which the upload phase moves)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    plate = tmp_path / "plate.png"
    plate.write_bytes(png_bytes(8, 8, (4, 5, 6)))
    s1.fail_route("/upload/image", status, method="POST")
    with pool_of(cluster.servers, {}, strategy=first_of("s1"), status_ttl=3600.0) as pool:
        job = pool.submit(load_image_workflow("plate.png", prefix="plate"), inputs={"1": str(plate)})
        assert job.wait(30)
    assert len(s1.received_prompts) == 0
    if status == "413":
        assert job.status == "failed"
        assert "413" in str(job.exception()) and "too large" in str(job.exception())
        assert len(s2.received_prompts) == 0
    else:
        assert job.status == "succeeded", job.exception()
        assert job.result().server == "s2"


def test_a_client_error_on_post_fails_the_job_instead_of_trying_every_server(mock_cluster_factory: Any) -> None:
    """The table's (post, 4xx) row: a 4xx other than 400/401/403/404/413/429 on ``POST
    /prompt`` (405 from a proxy that does not pass the method) says the request itself is
    wrong: the job fails with the status, and is not sent to the next server (mutants: the
    "4xx" fault renamed, or every status taken for a 5xx, which may have queued it)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    s1.fail_route("/prompt", "405", method="POST")
    with pool_of(cluster.servers, {}, strategy=first_of("s1"), status_ttl=3600.0) as pool:
        job = pool.submit(image_workflow(color=5, prefix="c405"))
        assert job.wait(30)
    assert job.status == "failed" and "405" in str(job.exception())
    assert [e for e in job.events if e.kind == "retrying"] == []
    assert len(s2.received_prompts) == 0


# ---------------------------------------------------------------------------------------------
# "Reported exactly once": each end a job can reach while another part of the library decides
# an end too. Counted where a user sees them: the terminal events in ``on_event``, in
# ``job.events``, and the done-callbacks (mutant: ``Job._finish`` without its "already final"
# guard, so a second decider reports a second end).


class Reports:
    """What a user's callbacks saw of one job."""

    def __init__(self) -> None:
        self.ends: List[str] = []
        self.done_calls = 0

    def on_event(self, event: Any) -> None:
        if event.kind in TERMINAL_KINDS:
            self.ends.append(event.kind)

    def done(self, job: Any) -> None:
        self.done_calls += 1


def reported_once(job: Any, reports: Reports) -> None:
    assert callbacks_delivered(job), "the callbacks never ran"
    assert len(reports.ends) == 1 and reports.done_calls == 1, (reports.ends, reports.done_calls)
    assert [e.kind for e in job.events if e.kind in TERMINAL_KINDS] == reports.ends == [job.status]


@pytest.mark.parametrize("how", ["cancel", "close"])
@pytest.mark.parametrize("where", ["running", "queued"])
def test_a_job_ended_by_cancel_or_close_is_reported_exactly_once(mock_comfy: MockComfyServer, how: str, where: str) -> None:
    """A job running on its server (its runner and the cancel or close both see its end) or
    waiting in the pool's queue (the scheduler and the cancel or close), ended by ``cancel()``
    or ``close()``: one terminal event, one done-callback, ``cancelled``."""
    mock_comfy.pause_jobs()
    pool = pool_of([mock_comfy], {"max_queue": 1})
    try:
        reports = {name: Reports() for name in ("running", "queued")}
        jobs = {}
        for i, name in enumerate(("running", "queued")):
            jobs[name] = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=i), on_event=reports[name].on_event)
            jobs[name].add_done_callback(reports[name].done)
            if name == "running":
                wait_until(lambda: len(mock_comfy.received_prompts) == 1, what="the first job on the server")
        job = jobs[where]
        if how == "cancel":
            assert job.cancel() is True
            assert job.wait(30)
        else:
            pool.close()
            assert all(j.done for j in jobs.values())
        mock_comfy.resume_jobs()
        for name, j in jobs.items():
            if j is job or how == "close":
                assert j.status == "cancelled", (name, j.status)
            else:
                assert j.wait(30) and j.status == "succeeded", (name, j.status)
        pool.close()
        for name, j in jobs.items():
            reported_once(j, reports[name])
    finally:
        mock_comfy.resume_jobs()
        pool.close()


def test_a_server_whose_proxy_refuses_the_job_is_never_offered_it_again(mock_comfy: MockComfyServer) -> None:
    """The table's (post, 401/403/404) row: a proxy in front of the only server answers 403 to
    ``POST /prompt`` while its ``GET /queue`` answers, so the server is soon online again; the
    job is not posted there a second time: it fails with the 403's reason once the server is
    back and still cannot take it (mutant: the 401/403/404 fault renamed, so the "any other"
    row moves the job without excluding the server, and it is posted there again and again)."""
    mock_comfy.fail_route("/prompt", "403", method="POST")
    with pool_of([mock_comfy], {}) as pool:
        job = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=2))
        assert job.wait(30)
    assert job.status == "failed" and "403" in str(job.exception())
    assert mock_comfy.route_faults()[0].hits == 1


class StopsAfterUpload:
    """A loopback TCP forwarder in front of one mock server that stops listening once an
    input upload has been answered (and closes the connection it came on): a ComfyUI that
    went away between a job's upload and its ``POST /prompt``, as the pool sees it (the POST
    is refused). Open websockets stay, as a process's own sockets do for a moment."""

    def __init__(self, target: MockComfyServer, then: str = "refuse") -> None:
        self._then = then  # "refuse": nothing listens; "drop": a full accept queue drops each SYN
        self._target = ("127.0.0.1", int(target.url.rsplit(":", 1)[1].split("/")[0]))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: List[socket.socket] = [self._listener]
        self._websockets: List[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            self._sockets += [client, upstream]
            uploading = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, uploading, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, uploading, False), daemon=True).start()

    def _stop(self) -> None:
        """Stop listening and cut every idle HTTP connection (the pool would reuse one)."""
        with contextlib.suppress(OSError):  # shutdown first: it wakes the accepting thread and stops the listening
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for s in self._sockets:
            if s not in self._websockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        if self._then == "drop":  # a listener on the port that never accepts, its queue full
            port = int(self.url.rsplit(":", 1)[1])
            jammed = socket.create_server(("127.0.0.1", port), backlog=0)
            self._sockets.append(jammed)
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                self._sockets.append(filler)
        self.stopped.set()

    def _pump(self, src: socket.socket, dst: socket.socket, uploading: threading.Event, request_side: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if request_side and data.startswith(b"POST /upload/image"):
                    uploading.set()
                if request_side and data.startswith(b"GET /ws"):
                    self._websockets += [src, dst]
                if not request_side and uploading.is_set() and b"\r\n\r\n" in data:
                    self._websockets += [src, dst]  # this one is cut after its answer
                    self._stop()  # nothing listens any more: new connections are refused
                    # ... and the client does not keep this connection for its next request
                    dst.sendall(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.parametrize("then, reason", [("refuse", "refused"), ("drop", "timed out")])
def test_a_server_gone_between_upload_and_post_moves_the_job_at_once(mock_cluster_factory: Any, tmp_path: Any, then: str, reason: str) -> None:
    """The table's (post, refused) and (post, connect_timeout) rows: the job's input is on
    s1, then s1 refuses the ``POST /prompt``'s connection, or never answers it (a full accept
    queue drops the SYN, as a host gone from the network does): nothing was sent, so the job
    moves to s2 at once and runs there, and s1 is marked offline (mutants: the row fails the
    job, or leaves s1 online)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    gate = StopsAfterUpload(s1, then)
    plate = tmp_path / "plate.png"
    plate.write_bytes(png_bytes(8, 8, (7, 8, 9)))
    configs = [{"name": "s1", "url": gate.url}, {"name": "s2", "url": s2.url}]
    try:
        with ServerPool(configs, strategy=first_of("s1"), status_ttl=3600.0, **FAST) as pool:
            job = pool.submit(load_image_workflow("plate.png", prefix="plate"), inputs={"1": str(plate)})
            assert job.result(timeout=30).server == "s2"
            # s1 was marked offline by the refusal, not left "online" until its next probe
            # (an hour away here): the next job goes straight to s2.
            second = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=3))
            assert second.result(timeout=30).server == "s2"
            assert [e.kind for e in second.events if e.kind == "retrying"] == []
    finally:
        gate.close()
    assert gate.stopped.is_set() and len(s1.received_prompts) == 0
    moved = [(e.from_server, e.to_server, e.reason) for e in job.events if e.kind == "retrying"]
    assert len(moved) == 1 and moved[0][:2] == ("s1", "s2") and reason in (moved[0][2] or ""), moved


def test_a_jobs_last_event_names_its_server_and_carries_comfyuis_message(mock_comfy: MockComfyServer) -> None:
    """The terminal event a user (and the gateway, which relays ``raw`` to web clients) gets:
    where the job ended, why, and ComfyUI's own message (execution_success's, or
    execution_error's with the node's exception) (mutants: ``JobControl.succeed/fail/
    cancelled`` dropping the server, the reason or the raw message)."""
    name = mock_comfy.name
    with pool_of([mock_comfy], {}) as pool:
        ok = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=4))
        bad = pool.submit(fail_workflow("boom"))
        assert ok.wait(30) and bad.wait(30)
        mock_comfy.pause_jobs()
        stopped = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=5))
        wait_until(lambda: any(e.kind == "started" for e in stopped.events), what="the job running")
        assert stopped.cancel() and stopped.wait(30)
        mock_comfy.resume_jobs()
    for job in (ok, bad, stopped):
        assert job.events[-1].prompt_id == job.prompt_id
    end = ok.events[-1]
    assert (end.kind, end.server) == ("succeeded", name) and (end.raw or {}).get("prompt_id") == ok.prompt_id
    end = bad.events[-1]
    assert (end.kind, end.server) == ("failed", name) and "boom" in (end.reason or "")
    assert (end.raw or {}).get("exception_message", "").strip() == "boom"
    end = stopped.events[-1]
    assert (end.kind, end.server) == ("cancelled", name) and end.reason
    error = stopped.exception()
    assert error.server == name and error.prompt_id == stopped.prompt_id and stopped.prompt_id in str(error)


def test_waiting_on_an_unfinished_job_returns_when_the_timeout_is_up(mock_comfy: MockComfyServer) -> None:
    """``wait``, ``result`` and ``exception`` with a timeout return (False, or TimeoutError)
    while the job still runs: a Nuke panel polls with them and must never hang (mutants: the
    timeout ignored, waiting for ever)."""
    import concurrent.futures

    mock_comfy.pause_jobs()
    try:
        with pool_of([mock_comfy], {}) as pool:
            job = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=6))
            assert job.wait(0.05) is False
            with pytest.raises((TimeoutError, concurrent.futures.TimeoutError)):
                job.result(timeout=0.05)
            with pytest.raises((TimeoutError, concurrent.futures.TimeoutError)):
                job.exception(timeout=0.05)
            assert not job.done
            mock_comfy.resume_jobs()
            assert job.exception(timeout=30) is None and job.wait(0)
    finally:
        mock_comfy.resume_jobs()


def test_a_server_that_fails_a_few_reads_while_running_the_job_keeps_it(mock_cluster_factory: Any) -> None:
    """The table's (follow, any other) row: ``GET /queue`` answering 500 twice while the job
    runs there is not a lost server: the job stays, runs once, and succeeds there (mutant: the
    row gives up at once, so the job moves and runs a second time elsewhere)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    s1.pause_jobs()
    try:
        with pool_of(cluster.servers, {}, strategy=first_of("s1"), status_ttl=3600.0, server_lost_after=30.0) as pool:
            job = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=7))
            wait_until(lambda: len(s1.received_prompts) == 1, what="the job on s1")
            s1.fail_route("/queue", "500", method="GET", count=2)
            wait_until(lambda: not s1.route_faults(), what="two failed reads of s1's queue")
            s1.resume_jobs()
            assert job.result(timeout=30).server == "s1"
    finally:
        s1.resume_jobs()
    assert [e for e in job.events if e.kind == "retrying"] == []
    assert len(s2.received_prompts) == 0



def test_cancel_reaches_a_running_job_without_waiting_for_the_next_poll(mock_comfy: MockComfyServer) -> None:
    """``cancel()`` wakes the attempt that runs the job: the job is interrupted on its server
    at once, not at the next reconcile poll (an hour away here) (mutant: the wake-up not sent,
    so a job whose server sends nothing while it runs, as a stalled GPU, is never stopped)."""
    mock_comfy.pause_jobs()  # no progress messages: nothing else wakes the attempt
    try:
        with pool_of([mock_comfy], {}, reconcile_interval=3600.0) as pool:
            job = pool.submit(sleep_workflow(seconds=0.05, steps=1, seed=8))
            wait_until(lambda: any(e.kind == "started" for e in job.events), what="the job running")
            assert job.cancel() is True
            assert job.wait(30) and job.status == "cancelled"
            wait_until(lambda: outcome(mock_comfy, job.prompt_id) is not None, what="the server's record of the job")
            assert outcome(mock_comfy, job.prompt_id) != "success"
    finally:
        mock_comfy.resume_jobs()


def outcome(server: MockComfyServer, prompt_id: str) -> Any:
    return next((r.outcome for r in server.executions if r.prompt_id == prompt_id), None)


def test_a_batchs_end_events_say_which_item_ended(mock_comfy: MockComfyServer) -> None:
    """``map``'s one ``on_event`` callback serves every job of the batch: each terminal event
    carries its item's index, so a caller can tell which frame succeeded or failed (mutant:
    the terminal event made without the index)."""
    ends: Dict[Any, str] = {}
    lock = threading.Lock()

    def on_event(event: Any) -> None:
        if event.kind in TERMINAL_KINDS:
            with lock:
                ends[event.index] = event.kind

    with pool_of([mock_comfy], {}) as pool:
        batch = pool.map_async([sleep_workflow(seconds=0.05, steps=1, seed=10), fail_workflow("frame 2"),
                                sleep_workflow(seconds=0.05, steps=1, seed=11)], on_event=on_event)
        batch.results(timeout=30, return_exceptions=True)
        for job in batch.jobs:
            assert callbacks_delivered(job)
    assert ends == {0: "succeeded", 1: "failed", 2: "succeeded"}
