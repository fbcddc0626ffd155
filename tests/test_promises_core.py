"""Behaviours of the core (attempts, dispatcher, runner, jobs) that the mutation run
(tools/mutate.py, docs/TESTING.md) found unguarded. Each test checks what a user relies on,
over the mock ComfyUI on loopback, and names in its docstring the mutant it was written
against (checked to fail with that mutant in place)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
from typing import Any, Dict, List, Sequence

import pytest
from helpers import ThawableClock, wait_until

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import load_image_workflow

pytestmark = pytest.mark.timeout(90)

#: Short knobs so a fault shows within seconds (as in test_promises).
FAST: Dict[str, Any] = dict(ws_connect_timeout=5.0, probe_timeout=(0.5, 1.0), request_timeout=(1.0, 2.0),
                            reconcile_interval=0.5, server_lost_after=2.0, backoff_cap=0.5)


def pool_of(servers: Sequence[Any], extra: Dict[str, Any], **kwargs: Any) -> ServerPool:
    return ServerPool([dict({"name": s.name, "url": s.url}, **extra) for s in servers], **dict(FAST, **kwargs))


def two_saves(seed: int) -> Dict[str, Any]:
    """EmptyImage -> SaveImage "first"; the same image -> TestSleep -> SaveImage "second": the
    mock runs "first" before the sleep, so a paused server holds the job between the two."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 1000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "first"}},
        "3": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 0.05, "steps": 1, "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "second"}},
    }


# ---------------------------------------------------------------------------------------------
# The failure table's (history, ...) rows: the result read after the job's end was signalled.


def test_a_result_read_that_fails_once_still_gives_every_output_of_the_job(mock_comfy: MockComfyServer) -> None:
    """The table's (history, any other) row: the job ended on its server, and the one read of
    its result (``/history``) answers 500. The read is retried, so the result lists every file
    the job wrote, also those whose websocket event was lost (a half-open socket for a moment)
    (mutant: the row's window 0, so the first failed read gives up and the result is made of
    the events heard only, without "first")."""
    mock_comfy.pause_jobs()
    mock_comfy.mute_websockets()  # "first" is announced to nobody
    try:
        with pool_of([mock_comfy], {}, reconcile_interval=3600.0) as pool:
            job = pool.submit(two_saves(seed=21))
            wait_until(lambda: mock_comfy.frames_lost("executed") >= 1, what="the first output's event lost")
            mock_comfy.unmute_websockets()
            mock_comfy.fail_route("/history", "500", method="GET", count=1)
            mock_comfy.resume_jobs()
            result = job.result(timeout=60)
    finally:
        mock_comfy.unmute_websockets()
        mock_comfy.resume_jobs()
    assert not mock_comfy.route_faults(), "the result was never read"
    assert sorted(f.filename.split("_")[0] for f in result.files) == ["first", "second"], result.files
    assert mock_comfy.execution_counts() == {job.prompt_id: 1}


class Front:
    """A loopback TCP forwarder in front of one mock server, standing for the network between
    the pool and a ComfyUI that goes away at a given request. When a request starting with
    ``cut_at`` arrives (``b"GET /history/"``), that connection is cut unanswered and nothing
    listens any more: every new connection is refused. Open websockets stay (a process's own
    sockets outlive its listener for a moment) so the job's events still arrive.
    :meth:`listen_again` brings the server back on the same port."""

    def __init__(self, target: MockComfyServer, cut_at: bytes = b"", hold_at: bytes = b"") -> None:
        self._target = ("127.0.0.1", target.port)
        self._cut_at = cut_at
        # ``hold_at``: the first request starting with it is kept from the server (the client
        # times out and goes) until :meth:`deliver`: a request stuck on its way.
        self._hold_at = hold_at
        self._held: List[bytes] = []
        self._held_to: List[socket.socket] = []
        self.holding = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._http: List[socket.socket] = []
        self._all: List[socket.socket] = []
        self.stopped = threading.Event()
        self._serve(self._listener)

    def _serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._http += [client, upstream]
                self._all += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _stop(self) -> None:
        with contextlib.suppress(OSError):  # shutdown wakes the accepting thread
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            idle, self._http = self._http, []
        for s in idle:  # the pool would reuse an idle keep-alive connection
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.stopped.set()

    def listen_again(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._serve(self._listener)

    def _pump(self, src: socket.socket, dst: socket.socket, request_side: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if request_side and data.startswith(b"GET /ws"):
                    with self._lock:  # a websocket: it stays when the server goes
                        self._http = [s for s in self._http if s not in (src, dst)]
                if request_side and self._cut_at and not self.stopped.is_set() and data.startswith(self._cut_at):
                    self._stop()
                    break
                if request_side and (dst in self._held_to or (self._hold_at and not self.holding.is_set()
                                                               and data.startswith(self._hold_at))):
                    self._held_to = [dst]
                    self._held.append(data)
                    self.holding.set()
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            if s not in self._held_to:  # kept open for the held request
                with contextlib.suppress(OSError):
                    s.close()

    def deliver(self) -> None:
        """Send the held request on to the server (its client is long gone)."""
        upstream = self._held_to[0]
        upstream.sendall(b"".join(self._held))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._all)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.parametrize("then", ["back", "gone"])
def test_a_server_that_refuses_the_result_read_is_waited_for_briefly(mock_comfy: MockComfyServer, then: str) -> None:
    """The table's (history, refused) row: the job ended on its server and, as its result is
    read, the server stops listening. The pool's clock is frozen, so only refusals decide.
    "back": while the clock stands, the pool keeps trying, and once the server listens again
    the result holds every file (also the one whose event was lost). "gone": once 2 s of
    refusals have passed on the pool's clock, the job ends with what its events said, although
    the pool's loss window (``server_lost_after``) is an hour; it never runs again (mutants:
    the row's window 0, so the first refusal gives up and "first" is missing; or its 2 s
    dropped, so the job waits the hour)."""
    clock = ThawableClock()
    front = Front(mock_comfy, cut_at=b"GET /history/")
    mock_comfy.pause_jobs()
    mock_comfy.mute_websockets()
    try:
        with ServerPool([{"name": "m", "url": front.url}], **dict(FAST, clock=clock, background_status=False,
                                                                  status_ttl=3600.0, reconcile_interval=3600.0,
                                                                  server_lost_after=3600.0)) as pool:
            job = pool.submit(two_saves(seed=22 if then == "back" else 23))
            wait_until(lambda: mock_comfy.frames_lost("executed") >= 1, what="the first output's event lost")
            mock_comfy.unmute_websockets()
            mock_comfy.resume_jobs()
            assert front.stopped.wait(60), "the result was never read"
            if then == "back":
                # Refused while the pool's clock stands still: the job must not give up (with
                # the mutant it ends at the first refusal; nothing announces a refusal, so a
                # second of real time lets a few of them happen).
                assert not job.wait(1.0), job.result(0).files
                front.listen_again()
                result = job.result(timeout=60)
                assert sorted(f.filename.split("_")[0] for f in result.files) == ["first", "second"], result.files
            else:
                # The pool's clock moves on (nothing announces the refusals it counts) up to
                # two minutes: far longer than 2 s, far less than server_lost_after.
                while not job.wait(0.25) and clock.now < 1000.0 + 120.0:
                    clock.advance(1.0)
                result = job.result(timeout=0)
                assert [f.filename.split("_")[0] for f in result.files] == ["second"], result.files
            clock.thaw()  # the pool closes in real time
    finally:
        mock_comfy.unmute_websockets()
        mock_comfy.resume_jobs()
        front.close()
    assert mock_comfy.execution_counts() == {job.prompt_id: 1}


# ---------------------------------------------------------------------------------------------
# Cancel and clean-up (attempt.py): bounded, and retried until the copy is gone.


def first_of(name: str) -> Any:
    """A strategy that takes ``name`` whenever it is a candidate (else the first candidate)."""
    return lambda candidates, workflow: next((c for c in candidates if c.name == name), candidates[0])


def sleep_job(seed: int, prefix: str = "t") -> Dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 1000}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 0.05, "steps": 1, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


#: A pool whose own requests may wait long for an answer (a studio's slow proxy): the reads
#: that follow and cancel a job still give up after FOLLOW_TIMEOUT's 5 s.
PATIENT = dict(request_timeout=(1.0, 300.0), reconcile_interval=3600.0, background_status=False, status_ttl=3600.0)


@pytest.mark.parametrize("method, path", [("POST", "/queue"), ("GET", "/queue"), ("POST", "/interrupt")])
def test_cancel_ends_the_job_although_a_cancel_request_is_never_answered(mock_comfy: MockComfyServer, method: str, path: str) -> None:
    """``cancel()`` of a running job ends it ``cancelled`` within the loss window even when
    one of the requests that remove it from its server (the delete, the queue read between,
    the interrupt) is never answered: each is bounded by the follow timeout, not by the pool's
    long ``request_timeout``, and retried (mutants: ``cancel_on_server``'s requests made with
    the pool's request timeout, 300 s here)."""
    mock_comfy.pause_jobs()
    try:
        with pool_of([mock_comfy], {}, **PATIENT) as pool:
            job = pool.submit(sleep_job(31))
            wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job running")
            mock_comfy.fail_route(path, "hang", method=method, count=1)
            assert job.cancel() is True
            assert job.wait(30), f"cancel() still waiting for an answer to {method} {path}"
            assert job.status == "cancelled"
            mock_comfy.clear_route_faults()
    finally:
        mock_comfy.clear_route_faults()
        mock_comfy.resume_jobs()


def test_a_batch_cancel_does_not_wait_for_a_post_that_is_never_answered(mock_comfy: MockComfyServer) -> None:
    """``batch.cancel()`` waits only briefly for the pool's POSTs in flight (so that a
    cancelled batch's next job never starts between the delete and the interrupt): a POST
    whose answer never comes does not block it, and every job of the batch ends cancelled
    (mutants: ``PostGate.quiet`` without its patience, waiting for the POST's answer)."""
    mock_comfy.pause_jobs()
    mock_comfy.stall_prompt()  # the server queues each job; the answer never comes
    try:
        with pool_of([mock_comfy], {"max_queue": 2}, **PATIENT) as pool:
            batch = pool.map_async([sleep_job(32), sleep_job(33)])
            wait_until(lambda: mock_comfy.held_requests() == 2, what="both POSTs held")
            cancelling = threading.Thread(target=batch.cancel, daemon=True)
            cancelling.start()
            cancelling.join(15)
            assert not cancelling.is_alive(), "batch.cancel() waits for a POST that is never answered"
            mock_comfy.clear_route_faults()  # the answers come: each runner removes its job
            results = batch.results(timeout=60, return_exceptions=True)
        assert [job.status for job in batch.jobs] == ["cancelled", "cancelled"], results
    finally:
        mock_comfy.clear_route_faults()
        mock_comfy.resume_jobs()


@pytest.mark.parametrize("method, path, kind", [("POST", "/interrupt", "500"), ("POST", "/queue", "hang"), ("POST", "/interrupt", "hang")])
def test_copies_left_on_a_server_are_removed_although_the_first_try_fails(mock_cluster_factory: Any, method: str, path: str,
                                                                          kind: str) -> None:
    """Two jobs moved away from a server that went out of reach for a moment leave a copy
    each there (one running, one queued); once the server answers again both are removed and
    it counts none of our jobs (``in_flight``), although the first try fails (a 500) or is
    never answered: the try is bounded by the follow timeout and retried at once, not left for
    a later probe, which here never comes (mutants: ``remove_copies`` giving up or crashing at
    its first failed request, or after the first copy released; its requests made with the
    pool's request timeout, 300 s here)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    s1.pause_jobs()  # the copies on s1 only end when the pool removes them
    try:
        with pool_of(cluster.servers, {"max_queue": 2}, strategy=first_of("s1"), **PATIENT) as pool:
            jobs = [pool.submit(sleep_job(34 + i, prefix="moved")) for i in range(2)]
            wait_until(lambda: [len(q) for q in s1.queue_snapshot()] == [1, 1], what="one job runs on s1, one waits")
            s1.fail_route(path, kind, method=method, count=1)  # the first such request once s1 is back
            s1.refuse_for(3.0)  # longer than server_lost_after: the jobs move to s2
            assert [job.result(timeout=60).server for job in jobs] == ["s2", "s2"]
            wait_until(lambda: s1.queue_snapshot() == ([], []), timeout=20, what="the copies removed from s1")
            wait_until(lambda: pool.status()[0].in_flight == 0, timeout=20, what="s1 counting no job of ours")
            assert not s1.route_faults(), f"{method} {path} never failed"
    finally:
        s1.clear_route_faults()
        s1.resume_jobs()
    assert sorted(r.outcome or "" for r in s1.executions) == ["interrupted"]  # the queued copy never ran


def test_a_post_still_on_its_way_when_the_job_moved_is_removed_when_it_lands(mock_cluster_factory: Any) -> None:
    """A ``POST /prompt`` that gets no answer in time may still reach the server's queue
    later (a request stuck on its way): the job moves at once, and the copy it may leave is
    watched for a grace period on the pool's clock (frozen here) instead of being written off
    at the first look: when the request lands, the copy is removed before it can run to the
    end, so the job does not run twice (mutants: ``remove_copies``' POST grace ignored)."""
    clock = ThawableClock()
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    front = Front(s1, hold_at=b"POST /prompt")
    s1.pause_jobs()  # a copy that lands stays there until removed
    configs = [{"name": "s1", "url": front.url}, {"name": "s2", "url": s2.url}]
    try:
        with ServerPool(configs, **dict(FAST, strategy=first_of("s1"), clock=clock, background_status=False,
                                        status_ttl=3600.0)) as pool:
            job = pool.submit(sleep_job(41, prefix="late"))
            assert job.result(timeout=60).server == "s2"
            assert front.holding.is_set()
            front.deliver()  # the request reaches ComfyUI: the copy is queued on s1
            wait_until(lambda: s1.received_prompts, what="the late copy on s1")
            wait_until(lambda: (pool.status(refresh=True), s1.queue_snapshot() == ([], []))[1],
                       timeout=20, what="the late copy removed from s1")
            clock.thaw()
    finally:
        s1.resume_jobs()
        front.close()
    assert [r.outcome for r in s1.executions] in ([], ["interrupted"])


TLS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tls")


class TlsFrontBreaksAfterUpload:
    """An HTTPS front (TLS ends here, plain HTTP to the mock behind) whose TLS breaks once an
    input upload has been answered: every new connection then gets a plain-text answer to its
    TLS hello, as a misconfigured or restarted proxy gives. The upload's connection is closed
    after its answer and idle ones are cut, so the ``POST /prompt`` that follows needs a new
    connection; open websockets stay. One thread per connection (an SSL socket is not shared
    between threads)."""

    def __init__(self, target: MockComfyServer) -> None:
        self._target = ("127.0.0.1", target.port)
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(os.path.join(TLS_DIR, "server.pem"), os.path.join(TLS_DIR, "server.key"))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self.broken = threading.Event()
        self._lock = threading.Lock()
        self._idle: List[socket.socket] = []
        self._all: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._all.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.broken.is_set():
                client.recv(65536)  # the TLS hello, answered in plain text
                client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            tls = self._ctx.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._all += [tls, upstream]
                self._idle.append(tls)
            self._relay(tls, upstream)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()

    def _relay(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        uploading = False
        while True:
            readable = [tls] if tls.pending() else select.select([tls, upstream], [], [])[0]
            for src in readable:
                data = src.recv(65536)
                if not data:
                    upstream.close()
                    return
                if src is tls:
                    if data.startswith(b"GET /ws"):
                        with self._lock:  # a websocket: it stays when the TLS breaks
                            self._idle.remove(tls)
                    uploading = uploading or data.startswith(b"POST /upload/image")
                    upstream.sendall(data)
                elif uploading and b"\r\n\r\n" in data:
                    self.broken.set()
                    tls.sendall(data.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
                    with self._lock:
                        idle = [s for s in self._idle if s is not tls]
                    for s in idle:
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                    upstream.close()
                    return
                else:
                    tls.sendall(data)

    def close(self) -> None:
        with self._lock:
            sockets = list(self._all)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()


def test_a_tls_failure_between_upload_and_post_moves_the_job_at_once(mock_cluster_factory: Any, tmp_path: Any) -> None:
    """The table's (post, tls) row: the job's input is on s1 (over HTTPS), then s1's TLS breaks
    before the ``POST /prompt``: nothing was sent, so the job moves to s2 at once and runs
    there, and s1 is marked offline, so the next job goes straight to s2 (mutants: the row
    fails the job, or leaves s1 online)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    front = TlsFrontBreaksAfterUpload(s1)
    plate = tmp_path / "plate.png"
    plate.write_bytes(png_bytes(8, 8, (7, 8, 9)))
    configs = [{"name": "s1", "url": front.url, "verify_tls": os.path.join(TLS_DIR, "ca.pem")}, {"name": "s2", "url": s2.url}]
    try:
        with ServerPool(configs, **dict(FAST, strategy=first_of("s1"), status_ttl=3600.0)) as pool:
            job = pool.submit(load_image_workflow("plate.png", prefix="plate"), inputs={"1": str(plate)})
            assert job.result(timeout=60).server == "s2"
            second = pool.submit(sleep_job(51))
            assert second.result(timeout=60).server == "s2"
            assert [e.kind for e in second.events if e.kind == "retrying"] == []
    finally:
        front.close()
    assert front.broken.is_set() and len(s1.received_prompts) == 0
    moved = [(e.from_server, e.to_server, e.reason) for e in job.events if e.kind == "retrying"]
    assert len(moved) == 1 and moved[0][:2] == ("s1", "s2") and "TLS" in (moved[0][2] or ""), moved


def test_each_copy_is_recorded_before_its_post_and_at_its_confirmed_end(mock_comfy: MockComfyServer) -> None:
    """``on_attempt`` (a gateway's durable record of the copies it sent) hears of each copy
    twice: "reserved" before its POST and "ended" once its end there is confirmed, with the
    copy's prompt_id and server; and the server's status learns how long the job took
    (``avg_job_seconds``) and that it succeeded (mutants: the ledger's release telling
    ``on_attempt`` nothing or another phase, or the status without the job's time)."""
    seen: List[Any] = []
    with pool_of([mock_comfy], {}) as pool:
        job = pool.submit(sleep_job(61), on_attempt=lambda *record: seen.append(record))
        job.result(timeout=60)
        wait_until(lambda: len(seen) == 2, what="the copy's end recorded")
        status = pool.status()[0]
    assert seen == [(job.prompt_id, mock_comfy.name, "reserved"), (job.prompt_id, mock_comfy.name, "ended")]
    assert status.jobs_succeeded == 1 and status.in_flight == 0
    assert status.avg_job_seconds is not None and status.avg_job_seconds > 0


def test_copies_left_by_two_outages_of_one_server_are_both_removed(mock_cluster_factory: Any) -> None:
    """A server out of reach twice, each time leaving a copy of a job that moved: the clean-up
    after the first outage does not keep the second copy from being removed (mutants: the
    server left marked "being cleaned" after its clean-up, so no later one ever runs)."""
    cluster = mock_cluster_factory(speeds=(1, 1), names=("s1", "s2"))
    s1, s2 = cluster.servers
    s1.pause_jobs()
    try:
        with pool_of(cluster.servers, {}, strategy=first_of("s1"), **PATIENT) as pool:
            for n in range(2):
                job = pool.submit(sleep_job(71 + n, prefix=f"outage{n}"))
                wait_until(lambda: s1.queue_snapshot()[0], what="the job runs on s1")
                s1.refuse_for(3.0)  # longer than server_lost_after: the job moves to s2
                assert job.result(timeout=60).server == "s2"
                wait_until(lambda: s1.queue_snapshot() == ([], []), timeout=20, what=f"copy {n} removed from s1")
                wait_until(lambda: pool.status()[0].in_flight == 0, timeout=20, what="s1 counting no job of ours")
    finally:
        s1.resume_jobs()
    assert [r.outcome for r in s1.executions] == ["interrupted", "interrupted"]


def test_a_job_that_loaded_a_model_is_timed_apart_from_jobs_that_did_not(mock_cluster_factory: Any) -> None:
    """A server's status keeps two job times (README): ``cold_job_seconds`` from jobs that had
    to load their model, ``avg_job_seconds`` from those that found it loaded; the warm-model
    strategy weighs a load with their difference (mutants: the release of a copy not telling
    the status whether it was cold)."""
    from comfy_cluster.testing.workflows import txt2img_workflow

    cluster = mock_cluster_factory(speeds=(1.0,), models=["a.safetensors"], model_load_seconds=0.05)
    with pool_of(cluster.servers, {}) as pool:
        pool.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1)).result(timeout=60)
        wait_until(lambda: pool.status()[0].jobs_succeeded == 1, what="the first job counted")
        cold = pool.status()[0]
        pool.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=2)).result(timeout=60)
        wait_until(lambda: pool.status()[0].jobs_succeeded == 2, what="the second job counted")
        warm = pool.status()[0]
    assert cold.cold_job_seconds is not None and cold.avg_job_seconds is None
    assert warm.avg_job_seconds is not None and warm.cold_job_seconds == cold.cold_job_seconds


# ---------------------------------------------------------------------------------------------
# What a running job reports (runner.py): its events, and how it ended when the server ended it.


def test_a_job_reports_its_run_as_comfyui_tells_it(mock_comfy: MockComfyServer) -> None:
    """The events of a job whose first node is cached from the job before: started, cached
    (naming the cached node), executing per node, progress (value of max, per node), output
    (the files), then succeeded (mutants: ``_on_message`` dropping or mislabelling a kind)."""
    events: List[Any] = []
    with pool_of([mock_comfy], {}) as pool:
        pool.submit(sleep_job(81)).result(timeout=60)
        wf = sleep_job(81)
        wf["2"]["inputs"]["seed"] = 82  # node 1 is the same: cached; the sleep is not
        wf["2"]["inputs"]["steps"] = 2
        job = pool.submit(wf, on_event=events.append)
        job.result(timeout=60)
        wait_until(lambda: events and events[-1].kind == "succeeded", what="the last event delivered")
    kinds = [e.kind for e in events]
    assert kinds[0] == "submitted" and kinds.index("started") < kinds.index("cached") < kinds.index("executing")
    cached = next(e for e in events if e.kind == "cached")
    assert cached.nodes == ("1",) and cached.server == mock_comfy.name
    assert [e.node for e in events if e.kind == "executing"] == ["2", "3"]
    progress = [(e.node, e.value, e.max) for e in events if e.kind == "progress"]
    assert progress == [("2", 1.0, 2.0), ("2", 2.0, 2.0)]
    (output,) = [e for e in events if e.kind == "output"]
    assert output.node == "3" and [f.filename for f in output.files] == [f.filename for f in job.result().files]
    assert kinds[-1] == "succeeded"


def test_a_job_interrupted_on_its_server_by_someone_else_ends_cancelled_saying_so(mock_comfy: MockComfyServer) -> None:
    """Another client interrupts what runs on the server (ComfyUI's Cancel button): the job
    ends ``cancelled``, its reason saying it was interrupted on the server, and it is not run
    again (mutants: the interruption taken for our own cancel, or for a failure)."""
    import requests

    mock_comfy.pause_jobs()
    try:
        with pool_of([mock_comfy], {}) as pool:
            job = pool.submit(sleep_job(83))
            wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job running")
            requests.post(mock_comfy.url + "/interrupt", json={}, timeout=10).raise_for_status()
            assert job.wait(60)
    finally:
        mock_comfy.resume_jobs()
    assert job.status == "cancelled" and job.events[-1].reason == "interrupted on the server"
    assert mock_comfy.execution_counts() == {job.prompt_id: 1}


def test_a_failed_job_names_the_node_and_comfyuis_exception(mock_comfy: MockComfyServer) -> None:
    """A node that raises: the job's error names the node (id and type), ComfyUI's exception
    type and message, and carries its traceback, the job's prompt_id and server (mutants:
    ``job_failed`` (answers.py) dropping a field)."""
    from comfy_cluster.errors import JobFailed
    from comfy_cluster.testing.workflows import fail_workflow

    with pool_of([mock_comfy], {}) as pool:
        job = pool.submit(fail_workflow("the GPU caught fire"))
        assert job.wait(60)
    error = job.exception()
    assert isinstance(error, JobFailed)
    assert (error.node_id, error.node_type, error.prompt_id, error.server) == ("2", "TestFail", job.prompt_id, mock_comfy.name)
    assert error.exception_message == "the GPU caught fire" and error.exception_type and error.traceback
    assert "node 2 (TestFail)" in str(error) and "the GPU caught fire" in str(error)


@pytest.mark.parametrize("how", ["succeeds", "fails", "interrupted"])
def test_a_job_whose_events_are_all_lost_ends_as_its_servers_history_says(mock_comfy: MockComfyServer, how: str) -> None:
    """A half-open websocket loses every event of the job: the pool learns its end from the
    server's queue and history, with the same outcome a user would have got from the events:
    the files, or the failing node and ComfyUI's message, or "interrupted on the server"
    (mutants: ``_from_history`` misreading an error or an interruption)."""
    import requests

    from comfy_cluster.testing.workflows import fail_workflow

    mock_comfy.mute_websockets()
    if how == "interrupted":
        mock_comfy.pause_jobs()
    try:
        with pool_of([mock_comfy], {}) as pool:
            job = pool.submit(fail_workflow("no VRAM left") if how == "fails" else sleep_job(91))
            if how == "interrupted":
                wait_until(lambda: mock_comfy.queue_snapshot()[0], what="the job running")
                requests.post(mock_comfy.url + "/interrupt", json={}, timeout=10).raise_for_status()
            assert job.wait(60)
    finally:
        mock_comfy.unmute_websockets()
        mock_comfy.resume_jobs()
    if how == "succeeds":
        assert job.status == "succeeded" and [f.filename.split("_")[0] for f in job.result().files] == ["t"]
    elif how == "fails":
        error = job.exception()
        assert job.status == "failed" and (error.node_id, error.node_type) == ("2", "TestFail")
        assert error.exception_message == "no VRAM left" and error.prompt_id == job.prompt_id
    else:
        assert job.status == "cancelled" and job.events[-1].reason == "interrupted on the server"
    assert [e.kind for e in job.events if e.kind == "retrying"] == []
    assert mock_comfy.execution_counts() == {job.prompt_id: 1}


def test_a_job_cancelled_while_its_input_uploads_is_never_posted(mock_comfy: MockComfyServer, tmp_path: Any) -> None:
    """Cancel stops the job where it is: cancelled while its input is on its way to the
    server, it is never sent to the server's queue (so it never runs there, not even for a
    moment) and ends ``cancelled`` (mutant: the cancel check before ``POST /prompt`` removed,
    so the job is posted and only then removed)."""
    plate = tmp_path / "plate.png"
    plate.write_bytes(png_bytes(8, 8, (1, 1, 1)))
    mock_comfy.fail_route("/upload/image", "hang", method="POST", count=1)  # held, then answered
    try:
        with pool_of([mock_comfy], {}, request_timeout=(1.0, 60.0)) as pool:
            job = pool.submit(load_image_workflow("plate.png", prefix="plate"), inputs={"1": str(plate)})
            wait_until(lambda: mock_comfy.held_requests() == 1, what="the upload on its way")
            assert job.cancel() is True
            mock_comfy.release_held()
            assert job.wait(30) and job.status == "cancelled"
    finally:
        mock_comfy.clear_route_faults()
    assert mock_comfy.received_prompts == []
