"""The runner alone (one attempt's I/O: the checks before ``POST /prompt``, the POST and what
its failures mean, following the job to its end through its events, ``/queue`` and
``/history``, and cancel), over a fake server that is at once the attempt's client and its
websocket, with the pool's clock moved only by the test: every failed request takes
``FakeServer.cost`` seconds of it. No network, no pool: what the pool does with each
:class:`Outcome` (move, fail, report) is tested over the mock in test_promises*.py; these pin
what the runner tells it, and what the job's user hears on the way."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from helpers import FakeClock, sleep_workflow, wait_until

from comfy_cluster.attempt import Attempt, AttemptPhase, PostGate
from comfy_cluster.errors import ComfyClusterError, JobFailed, LocalFileError, NodeError, ServerError, WorkflowError
from comfy_cluster.follow import HISTORY_GRACE
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.policy import REFUSED_LOST_AFTER, Action
from comfy_cluster.runner import Outcome, RunnerContext, follow_attempt, is_server_specific, run_attempt

pytestmark = pytest.mark.timeout(60)

NAME = "s1"
POSITION = 3
#: Long enough that a test finishing quickly shows the runner looked without waiting for it.
NEVER = 3600.0


def refused() -> ServerError:
    return ServerError(f"{NAME}: cannot connect: refused", server=NAME, fault="refused")


def read_timeout() -> ServerError:
    return ServerError(f"{NAME}: no answer (read timed out)", server=NAME, fault="read_timeout")


def image(name: str, subfolder: str = "", kind: str = "output") -> Dict[str, Any]:
    return {"filename": name, "subfolder": subfolder, "type": kind}


class FakeServer:
    """One ComfyUI server as an attempt sees it: its client (queue, history, prompt, delete,
    interrupt) and its websocket (register, ensure_connected). Events go to whoever registered
    the prompt_id. ``fail[method]`` lists errors the next calls raise, in order (a request
    that times out costs its read timeout of the clock, any other failure ``cost`` seconds);
    ``down`` makes a method fail until cleared. ``on_post(pid)`` is what the server does with
    a prompt it takes. ``timeout`` is the pool's ``request_timeout``; the timeout of every
    other request is recorded in ``timeouts``."""

    timeout = (10.0, 2.0)  # a pool tuned for quick failover: reads of 2 s, below FOLLOW_TIMEOUT's 5

    def __init__(self, clock: FakeClock, cost: float = 1.0) -> None:
        self.clock = clock
        self.cost = cost
        self.running: List[str] = []
        self.pending: List[str] = []
        self.items: Dict[str, Dict[str, Any]] = {}
        self.listeners: Dict[str, Callable[[Dict[str, Any]], None]] = {}
        self.fail: Dict[str, List[BaseException]] = {}
        self.down: Dict[str, BaseException] = {}
        self.calls: List[Tuple[str, Any]] = []
        self.timeouts: List[Any] = []
        self.posted: List[Dict[str, Any]] = []
        self.own_id: Optional[str] = None  # an old server that answers its own prompt_id
        self.on_post: Callable[[str], None] = self.queue_it
        self.on_history: Callable[[str], None] = lambda pid: None
        self.on_interrupt: Callable[[str], None] = self.interrupted
        self.looks = 0
        #: (n, outputs): at the n-th read of the queue, what runs or waits there has ended.
        self.ends_at_look: Optional[Tuple[int, Dict[str, Any]]] = None

    def _call(self, method: str, arg: Any = None, timeout: Any = "default") -> None:
        self.calls.append((method, arg))
        if timeout != "default":
            self.timeouts.append(timeout)
        errors = self.fail.get(method)
        error = errors.pop(0) if errors else self.down.get(method)
        if error is not None:
            timed_out = isinstance(error, ServerError) and error.fault == "read_timeout"
            self.clock.advance((timeout or self.timeout)[1] if timed_out and timeout != "default" else self.cost)
            raise error

    # -- the client --------------------------------------------------------------------------

    def post_prompt(self, body: Dict[str, Any], *, timeout: Any = None) -> Dict[str, Any]:
        self._call("post", body)
        self.posted.append(body)
        pid = self.own_id or body["prompt_id"]
        self.on_post(pid)
        return {"prompt_id": pid, "number": len(self.posted), "node_errors": {}}

    def queue(self, *, timeout: Any = None) -> Tuple[List[str], List[str]]:
        self._call("queue", None, timeout)
        self.looks += 1
        if self.ends_at_look is not None and self.looks >= self.ends_at_look[0]:
            for pid in self.running + self.pending:
                self.finish(pid, self.ends_at_look[1])
        return list(self.running), list(self.pending)

    def history(self, prompt_id: str, *, timeout: Any = None) -> Optional[Dict[str, Any]]:
        self._call("history", prompt_id, timeout)
        self.on_history(prompt_id)
        return self.items.get(prompt_id)

    def delete_pending(self, prompt_ids: List[str], *, timeout: Any = None) -> None:
        self._call("delete", list(prompt_ids), timeout)
        self.pending = [p for p in self.pending if p not in prompt_ids]

    def interrupt(self, prompt_id: str, *, timeout: Any = None) -> None:
        self._call("interrupt", prompt_id, timeout)
        if prompt_id in self.running:
            self.on_interrupt(prompt_id)

    # -- the websocket -----------------------------------------------------------------------

    def register(self, prompt_id: str, put: Callable[[Dict[str, Any]], None]) -> None:
        self.listeners[prompt_id] = put

    def unregister(self, prompt_id: str) -> None:
        self.listeners.pop(prompt_id, None)

    def ensure_connected(self) -> None:
        self._call("connect")

    # -- what the server does ----------------------------------------------------------------

    def send(self, pid: str, kind: str, data: Any = None) -> None:
        self.listeners[pid]({"type": kind, "data": data if data is not None else {"prompt_id": pid}})

    def queue_it(self, pid: str) -> None:
        self.pending.append(pid)

    def start(self, pid: str) -> None:
        if pid in self.pending:
            self.pending.remove(pid)
        self.running.append(pid)

    def finish(self, pid: str, outputs: Optional[Dict[str, Any]] = None, status: str = "success",
               messages: Optional[List[Any]] = None) -> None:
        """The job leaves the queue for the history."""
        for q in (self.running, self.pending):
            if pid in q:
                q.remove(pid)
        self.items[pid] = {"outputs": outputs or {}, "status": {"status_str": status, "completed": status == "success",
                                                               "messages": messages or []}}

    def interrupted(self, pid: str) -> None:
        self.finish(pid, status="error", messages=[["execution_start", {}], ["execution_interrupted", {"prompt_id": pid}]])


class Run:
    """One job with one attempt on the fake server, and what its user heard."""

    def __init__(self, *, cost: float = 1.0, lost_after: float = 15.0, interval: float = 0.01, owner: str = "ann") -> None:
        self.clock = FakeClock()
        self.server = FakeServer(self.clock, cost)
        self.events: List[Any] = []
        self.on_event: Callable[[Any], None] = lambda e: None
        self.job = Job(sleep_workflow(), index=0, owner=owner, on_event=self._heard)
        self.noted: List[Tuple[str, str, str]] = []
        self.job._on_attempt = self._note  # what ServerPool(on_attempt=...) sets
        self.control = JobControl(self.job)
        self.attempt = Attempt(self.control, NAME, 1)
        self.uploads: Callable[[Any], Dict[str, Any]] = lambda client: {"1": {"class_type": "EmptyImage", "inputs": {}}}
        self.cancelled_here: List[str] = []
        self.ctx = RunnerContext(client=self.server, socket=self.server, client_id="me",  # type: ignore[arg-type]
                                 position=lambda: POSITION, uploads=lambda c: self.uploads(c),
                                 cancelled_here=lambda: list(self.cancelled_here), post_gate=PostGate(),
                                 reconcile_interval=interval, server_lost_after=lost_after, clock=self.clock)
        self.note_error: Optional[BaseException] = None

    def _heard(self, event: Any) -> None:
        self.events.append(event)
        self.on_event(event)

    def _note(self, prompt_id: str, server: str, phase: str) -> None:
        self.noted.append((prompt_id, server, phase))
        if self.note_error is not None:
            raise self.note_error

    def kinds(self) -> List[str]:
        return [e.kind for e in self.events]

    def event(self, kind: str) -> Any:
        (found,) = [e for e in self.events if e.kind == kind]
        return found

    def cancel(self) -> None:
        """What job.cancel() does in a pool: flag it, wake its runner."""
        self.control.mark_cancel()
        self.control.notify_cancel()

    def go(self, how: Callable[[Attempt, RunnerContext], Outcome] = run_attempt, bound: float = 20.0) -> Outcome:
        """Run the attempt on a thread: a runner that waits for ever fails the test within
        ``bound`` seconds instead of hanging it."""
        out: List[Outcome] = []
        thread = threading.Thread(target=lambda: out.append(how(self.attempt, self.ctx)), daemon=True)
        thread.start()
        thread.join(bound)
        assert out, f"the attempt did not end within {bound} s"
        # Whatever the ending, the attempt no longer hears the server's events.
        assert self.server.listeners == {}
        # No read of a server that may be gone outlasts FOLLOW_TIMEOUT or the pool's own
        # request_timeout, whichever is shorter (not the pool's timeout alone).
        assert all(t == (3.05, 2.0) for t in self.server.timeouts), self.server.timeouts
        return out[0]


def runs_to_the_end(server: FakeServer, outputs: Dict[str, Any]) -> Callable[[str], None]:
    """A server that runs the job as soon as it takes it, telling it all on the websocket."""

    def on_post(pid: str) -> None:
        server.start(pid)
        server.send(pid, "execution_start", {"prompt_id": pid})
        server.send(pid, "execution_cached", {"nodes": ["1", 2], "prompt_id": pid})
        server.send(pid, "executing", {"node": "3", "prompt_id": pid})
        server.send(pid, "progress", {"value": 2, "max": 4, "node": "3", "prompt_id": pid})
        server.listeners[pid]({"type": "_binary", "data": b"\x00\x00\x00\x01preview"})
        for node, out in outputs.items():
            server.send(pid, "executed", {"node": node, "output": out, "prompt_id": pid})
        server.send(pid, "execution_success", {"prompt_id": pid, "timestamp": 1})
        server.finish(pid, outputs)
        server.send(pid, "executing", {"node": None, "prompt_id": pid})

    return on_post


# ---------------------------------------------------------------------------------------------
# A job that runs: what its user hears, what the pool is told.


def test_a_job_reports_each_step_as_its_server_tells_it_and_ends_with_the_result() -> None:
    """The socket carries the whole job (its start, each step, its success, then the end): the
    result is the one its ``executed`` frames announced, with no ``GET /history`` (one round
    trip less per job; test_job_path checks it against the mock's history)."""
    r = Run()
    uploaded_to: List[Any] = []
    workflow = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    r.uploads = lambda client: uploaded_to.append(client) or workflow
    outputs = {"9": {"images": [image("a.png", "shot1"), image("b.png", "", "temp")]}}
    r.server.on_post = runs_to_the_end(r.server, outputs)
    # The pool's clock as the runner reads the frames: 5 s in the queue, then 7 s of run from
    # its start to its output.
    r.on_event = lambda e: r.clock.advance({"queued": 5.0, "output": 7.0}.get(e.kind, 0.0))
    began = r.clock()
    out = r.go()
    assert out.kind == "succeeded" and out.confirmed
    assert [c for c in r.server.calls if c[0] == "history"] == []  # heard whole: nothing to read
    assert {n: [(f.filename, f.subfolder, f.type, f.node) for f in fs] for n, fs in (out.outputs or {}).items()} == {
        "9": [("a.png", "shot1", "output", "9"), ("b.png", "", "temp", "9")]}
    assert out.exec_seconds == 7.0  # from its start on the server, not from its POST
    assert out.raw == {"prompt_id": r.attempt.prompt_id, "timestamp": 1}  # ComfyUI's success message, relayed
    assert r.server.posted == [{"prompt": workflow, "client_id": "me", "prompt_id": r.attempt.prompt_id}]
    assert r.kinds() == ["submitted", "queued", "started", "cached", "executing", "progress", "preview", "output"]
    assert all(e.server == NAME and e.prompt_id == r.attempt.prompt_id for e in r.events)
    assert r.event("queued").position == POSITION
    assert r.event("cached").nodes == ("1", "2")
    assert r.event("executing").node == "3"
    progress = r.event("progress")
    assert (progress.node, progress.value, progress.max) == ("3", 2.0, 4.0)
    assert r.event("preview").data == b"\x00\x00\x00\x01preview"
    output = r.event("output")
    assert output.node == "9"
    assert [(f.filename, f.subfolder, f.type, f.node) for f in output.files] == [("a.png", "shot1", "output", "9"), ("b.png", "", "temp", "9")]
    assert r.control.last_exec_start == began + 5.0  # when it started there (the scheduler's estimates)
    assert r.event("started").raw == {"prompt_id": r.attempt.prompt_id}
    # Each event of a websocket message carries its data as sent (the gateway relays it).
    pid = r.attempt.prompt_id
    assert r.event("cached").raw == {"nodes": ["1", 2], "prompt_id": pid}
    assert r.event("executing").raw == {"node": "3", "prompt_id": pid}
    assert r.event("progress").raw == {"value": 2, "max": 4, "node": "3", "prompt_id": pid}
    assert r.event("output").raw == {"node": "9", "output": outputs["9"], "prompt_id": pid}
    assert r.job.status == "running" and r.job.prompt_id == r.attempt.prompt_id
    assert r.noted == [(r.attempt.prompt_id, NAME, "reserved")]  # once per copy
    assert uploaded_to == [r.server]  # its inputs went to the server it runs on


def test_a_job_heard_whole_lists_its_outputs_in_the_workflows_order() -> None:
    """Frames of outputs come in the order nodes ran: the result lists them in the workflow's
    order, a node the workflow does not have (expanded by a node at run time) after, as it
    does when read from /history (next test)."""
    r = Run()  # the workflow's nodes: 1, 2, 3

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "execution_start", {})
        for node, name in (("3", "c.png"), ("10.0.1", "x.png"), ("2", "b.png")):
            r.server.send(pid, "executed", {"node": node, "output": {"images": [image(name)]}})
        r.server.send(pid, "execution_success", {})
        r.server.finish(pid)
        r.server.send(pid, "executing", {"node": None})

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "succeeded"
    assert [(n, [f.filename for f in fs]) for n, fs in (out.outputs or {}).items()] == [
        ("2", ["b.png"]), ("3", ["c.png"]), ("10.0.1", ["x.png"])]
    assert [c for c in r.server.calls if c[0] == "history"] == []


def test_a_server_that_never_says_success_has_the_result_read_from_its_history() -> None:
    """An older ComfyUI sends no ``execution_success``: the frames heard may not be the whole
    result (here one of two outputs was announced), so the end is read from /history. Its
    outputs in the workflow's order (ComfyUI lists a history item's in no set order)."""
    r = Run()
    announced = {"images": [image("a.png")]}

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "execution_start", {})
        r.server.send(pid, "executed", {"node": "2", "output": announced})
        r.server.finish(pid, {"3": {"images": [image("b.png")]}, "2": announced})
        r.server.send(pid, "executing", {"node": None})

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "succeeded" and out.raw is None
    assert [(n, [f.filename for f in fs]) for n, fs in (out.outputs or {}).items()] == [("2", ["a.png"]), ("3", ["b.png"])]


def test_a_progress_without_numbers_is_not_reported() -> None:
    """A progress message without a numeric value or max (a custom node's) is passed over;
    messages with odd data are read as having none."""
    r = Run()

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "progress", {"value": "half", "max": 4, "node": "3"})
        r.server.send(pid, "progress", {"value": 1, "max": None, "node": "3"})
        r.server.send(pid, "progress", {"value": 1.5, "max": 3, "node": "3"})
        r.server.listeners[pid]({"type": "execution_cached", "data": ["not", "a", "dict"]})  # odd data: no nodes
        r.server.listeners[pid]({"type": "status"})  # a kind the runner does not use, without data
        r.server.finish(pid)
        r.server.send(pid, "executing", {"node": None})

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "succeeded" and out.raw is None  # no success message heard: none to relay
    assert [(e.value, e.max) for e in r.events if e.kind == "progress"] == [(1.5, 3.0)]
    assert r.event("cached").nodes == ()


def test_the_attempt_is_posted_only_after_it_is_recorded_and_marked_as_sent() -> None:
    """The copy is recorded ("reserved") and the attempt marked posted before the POST leaves,
    so a POST that times out after the server took it still leaves a copy to find and remove."""
    r = Run()
    seen: List[Any] = []

    def on_post(pid: str) -> None:
        seen.append((list(r.noted), r.attempt.posted, r.attempt.phase))
        r.server.finish(pid)
        r.server.send(pid, "executing", {"node": None})

    r.server.on_post = on_post
    assert r.go().kind == "succeeded"
    assert seen == [([(r.attempt.prompt_id, NAME, "reserved")], True, AttemptPhase.POSTED)]


def test_a_job_whose_result_is_written_late_waits_for_it() -> None:
    """The end signal comes a moment before the history has the job: the result is read again
    until it is there, not taken from the events alone."""
    r = Run()
    outputs = {"9": {"images": [image("a.png")]}, "10": {"images": [image("late.png")]}}

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "executed", {"node": "9", "output": outputs["9"]})
        r.server.send(pid, "execution_success", {})
        r.server.send(pid, "executing", {"node": None})

    reads = []

    def on_history(pid: str) -> None:
        reads.append(pid)
        if len(reads) == 3:
            r.server.finish(pid, outputs)

    r.server.on_post = on_post
    r.server.on_history = on_history
    out = r.go()
    assert out.kind == "succeeded" and sorted(out.outputs or {}) == ["10", "9"]


def drops_while_running(r: Run, end: Callable[[str], None], run_seconds: float = 0.0) -> None:
    """The server starts the job 2 s after its POST (at the first read of its queue); the
    socket drops during the run and comes back (what it carried meanwhile is not known, so the
    end is read from ``/history``); after ``run_seconds`` the job ends: ``end(pid)`` takes it
    out of the queue, then come its success and closing frames. The frames of each step reach
    the runner after the read of the queue that sends them, as a socket's would."""
    pid = lambda: r.attempt.prompt_id  # noqa: E731
    script: Dict[int, Callable[[], Any]] = {
        0: lambda: (r.server.send(pid(), "execution_start", {}),
                    r.server.send(pid(), "executed", {"node": "9", "output": {"images": [image("a.png", "shot1")]}}),
                    r.server.listeners[pid()]({"type": "_disconnected"})),
        1: lambda: r.server.listeners[pid()]({"type": "_reconnected"}),
        2: lambda: (r.clock.advance(run_seconds),
                    r.server.send(pid(), "executed", {"node": "9", "output": {"images": [image("b.png", "", "temp")]}}),
                    r.server.send(pid(), "execution_success", {"ok": 1}),
                    end(pid()),
                    r.server.send(pid(), "executing", {"node": None})),
    }

    def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        look = r.server.looks
        if look == 0:
            r.clock.advance(2.0)
            r.server.start(pid())
        answer = FakeServer.queue(r.server, timeout=timeout)
        script.get(look, lambda: None)()
        return answer

    r.server.queue = queue  # type: ignore[method-assign]


def test_a_job_whose_socket_dropped_while_it_ran_has_its_result_read_from_its_history() -> None:
    r = Run()
    files = [image("a.png", "shot1"), image("b.png", "", "temp")]
    drops_while_running(r, lambda pid: r.server.finish(pid, {"9": {"images": files}}), run_seconds=7.0)
    out = r.go()
    assert [c[0] for c in r.server.calls].count("history") == 1
    assert out.kind == "succeeded" and out.confirmed
    assert {n: [(f.filename, f.subfolder, f.type, f.node) for f in fs] for n, fs in (out.outputs or {}).items()} == {
        "9": [("a.png", "shot1", "output", "9"), ("b.png", "", "temp", "9")]}
    assert out.raw == {"ok": 1}  # ComfyUI's success message, relayed whichever way the result came
    assert out.exec_seconds == 7.0  # from its start on the server, not from its POST


def test_a_result_that_never_reaches_the_history_is_taken_from_the_events() -> None:
    """The socket dropped while the job ran, so its end is read from ``/history``, which never
    has the job (a server that lost it in a restart right after its end): after HISTORY_GRACE
    seconds of the pool's clock the result is what the events announced, and the job is not
    run again."""
    r = Run(cost=3.0)
    drops_while_running(r, lambda pid: r.server.running.remove(pid))
    r.server.on_history = lambda pid: r.clock.advance(3.0)
    began = r.clock()
    out = r.go()
    assert out.kind == "succeeded" and out.raw == {"ok": 1}
    assert [f.filename for f in (out.outputs or {})["9"]] == ["a.png", "b.png"]
    assert [k for k in r.kinds() if k in ("started", "output")] == ["started", "output", "output"]
    assert r.clock() - began >= 2.0 + HISTORY_GRACE  # the history was read for its grace
    assert out.exec_seconds == r.clock() - began - 2.0  # from its start, not its POST


def ends_with_two_outputs(r: Run) -> Callable[[str], None]:
    """The job ends; the websocket announced one of its two outputs (the other's event lost)."""

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "executed", {"node": "9", "output": {"images": [image("a.png")]}})
        r.server.send(pid, "execution_success", {})
        r.server.finish(pid, {"9": {"images": [image("a.png")]}, "10": {"images": [image("b.png")]}})
        r.server.send(pid, "executing", {"node": None})

    return on_post


@pytest.mark.parametrize("fault, waited", [(refused, REFUSED_LOST_AFTER), (read_timeout, 10.0)])
def test_a_result_read_that_keeps_failing_is_retried_for_the_loss_window(fault: Callable[[], ServerError], waited: float) -> None:
    """The job's end was signalled, and reading its result fails: it is read again for the
    loss window (the pool's ``server_lost_after``; 2 s for a refused connection), then the
    result is the events' (the job ran: it is not run again)."""
    r = Run(lost_after=10.0 if fault is read_timeout else 60.0)
    r.server.on_post = ends_with_two_outputs(r)
    r.server.down["history"] = fault()
    began = r.clock()
    out = r.go()
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]
    assert waited <= r.clock() - began <= waited + 2 * 2.0


@pytest.mark.parametrize("fault", [refused, read_timeout])
def test_a_result_read_that_fails_once_still_gives_the_whole_result(fault: Callable[[], ServerError]) -> None:
    r = Run(cost=1.0, lost_after=60.0)
    r.server.on_post = ends_with_two_outputs(r)
    r.server.fail["history"] = [fault()]
    out = r.go()
    assert out.kind == "succeeded" and sorted(out.outputs or {}) == ["10", "9"]


# ---------------------------------------------------------------------------------------------
# A job that fails or is stopped on its server.


def test_a_failing_node_is_named_with_comfyuis_exception() -> None:
    r = Run()
    data = {"prompt_id": "x", "node_id": "7", "node_type": "KSampler", "exception_type": "RuntimeError",
            "exception_message": "  out of memory\n", "traceback": ["line 1", 2]}

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "execution_error", data)

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "failed" and out.raw == data
    error = out.error
    assert isinstance(error, JobFailed)
    assert str(error) == f"{NAME}: node 7 (KSampler) failed: RuntimeError: out of memory"
    assert (error.prompt_id, error.server, error.node_id, error.node_type) == (r.attempt.prompt_id, NAME, "7", "KSampler")
    assert (error.exception_type, error.exception_message, error.traceback) == ("RuntimeError", "out of memory", ["line 1", "2"])


def test_a_failure_without_node_or_exception_still_reads_clearly() -> None:
    r = Run()
    r.server.on_post = lambda pid: r.server.send(pid, "execution_error", {"prompt_id": pid})
    error = r.go().error
    assert isinstance(error, JobFailed)
    assert (error.node_id, error.node_type, error.exception_type, error.exception_message) == (None, None, "", "")
    assert str(error) == f"{NAME}: node None (None) failed: : "


@pytest.mark.parametrize("ours", [False, True])
def test_an_interrupted_job_ends_cancelled_saying_whose_cancel_it_was(ours: bool) -> None:
    r = Run()

    def on_post(pid: str) -> None:
        r.server.start(pid)
        if ours:
            r.control.mark_cancel()
        r.server.send(pid, "execution_interrupted", {"prompt_id": pid, "node_id": "3"})

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "cancelled" and out.reason == ("cancelled" if ours else "interrupted on the server")
    if not ours:  # ComfyUI's message, relayed
        assert out.raw == {"prompt_id": r.attempt.prompt_id, "node_id": "3"}


# ---------------------------------------------------------------------------------------------
# Events lost: the end is read from the server's queue and history.


def lost_events(r: Run, how: str) -> None:
    """The server runs the job and ends it, but every event is lost."""

    def on_post(pid: str) -> None:
        if how == "succeeds":
            r.server.finish(pid, {"9": {"images": [image("a.png")]}})
        elif how == "fails":
            r.server.finish(pid, status="error", messages=[
                ["execution_start", {}], ["execution_error", "not a dict"], ["other"],
                ["execution_error", {"node_id": "4", "node_type": "VAEDecode", "exception_type": "E", "exception_message": "m"}]])
        elif how == "interrupted":
            r.server.interrupted(pid)
        elif how == "error":
            r.server.finish(pid, status="error", messages=[["execution_start", {}], ["execution_error"]])
        else:
            raise AssertionError(how)

    r.server.on_post = on_post


@pytest.mark.parametrize("how", ["succeeds", "fails", "interrupted", "error"])
def test_a_job_whose_events_are_lost_ends_as_its_servers_history_says(how: str) -> None:
    r = Run()
    lost_events(r, how)
    out = r.go()
    if how == "succeeds":
        assert out.kind == "succeeded" and [f.filename for f in (out.outputs or {})["9"]] == ["a.png"]
    elif how == "fails":
        assert out.kind == "failed" and isinstance(out.error, JobFailed)
        assert (out.error.node_id, out.error.node_type, out.error.prompt_id, out.error.server) == ("4", "VAEDecode", r.attempt.prompt_id, NAME)
        assert str(out.error) == f"{NAME}: node 4 (VAEDecode) failed: E: m"
    elif how == "interrupted":
        assert out.kind == "cancelled" and out.reason == "interrupted on the server"
    else:  # an error whose message is not readable
        assert out.kind == "failed" and isinstance(out.error, JobFailed)
        assert str(out.error) == f"{NAME}: job {r.attempt.prompt_id} ended with an error"
        assert (out.error.prompt_id, out.error.server) == (r.attempt.prompt_id, NAME)


def test_a_job_seen_running_counts_its_time_from_then() -> None:
    """No event arrives, but a read of the queue shows the job running: the job is running for
    its user, and its time counts from that look."""
    r = Run()
    r.server.on_post = r.server.start
    r.on_event = lambda e: r.clock.advance(5.0) if e.kind == "queued" else None
    seen_running: List[str] = []

    def queue_and_finish(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        if not seen_running:
            r.clock.advance(3.0)  # posted 3 s before this look saw it running
        answer = FakeServer.queue(r.server, timeout=timeout)
        if r.server.running:
            if seen_running:
                r.clock.advance(4.0)
                r.server.finish(r.server.running[0])
            seen_running.append(r.job.status)
        return answer

    r.server.queue = queue_and_finish  # type: ignore[method-assign]
    out = r.go()
    assert seen_running[0] == "queued" and r.job.status == "running"
    assert out.kind == "succeeded" and out.exec_seconds == 4.0


def test_a_job_lost_by_its_server_moves_elsewhere() -> None:
    """In neither the queue nor the history (a server restarted and lost it): the job moves,
    its end there confirmed (nothing to remove), the server not marked down."""
    r = Run()
    r.server.on_post = lambda pid: None
    out = r.go()
    assert out.kind == "move" and out.confirmed and out.reason == "server restarted and lost the job"
    assert out.decision.action is Action.MOVE and not out.decision.mark_down and not out.decision.exclude


def test_a_job_that_signalled_success_and_was_then_lost_keeps_its_result() -> None:
    """Success was signalled, then the server restarted before its end signal and its
    history went: the result from the events, not a second run."""
    r = Run(interval=NEVER)

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "executed", {"node": "9", "output": {"images": [image("a.png")]}})
        r.server.send(pid, "execution_success", {"done": 1})
        r.server.running.remove(pid)  # the closing "executing: null" never comes

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "succeeded" and out.raw == {"done": 1}
    assert [f.filename for f in (out.outputs or {})["9"]] == ["a.png"]


@pytest.mark.parametrize("kind", ["_disconnected", "_reconnected"])
def test_a_dropped_websocket_makes_the_runner_look_at_once(kind: str) -> None:
    """The socket dropped (or came back): the job may have ended meanwhile, so its end is read
    from the server then, not after the next reconcile interval (an hour here)."""
    r = Run(interval=NEVER)

    def on_post(pid: str) -> None:
        r.server.finish(pid, {"9": {"images": [image("a.png")]}})
        r.server.listeners[pid]({"type": kind})

    r.server.on_post = on_post
    assert r.go().kind == "succeeded"


def test_after_a_reconnect_the_runner_looks_often_until_an_event_comes() -> None:
    """After a reconnect ComfyUI may route the job's events nowhere: the runner reads the queue
    every SUSPECT_INTERVAL until an event proves the socket hears it, so a job that ends
    silently is still seen ending, within seconds rather than the reconcile interval."""
    r = Run(interval=NEVER)
    looks: List[int] = []

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.listeners[pid]({"type": "_reconnected"})

    def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        looks.append(1)
        if len(looks) == 2:
            r.server.finish(r.server.running[0])
        return FakeServer.queue(r.server, timeout=timeout)

    r.server.on_post = on_post
    r.server.queue = queue  # type: ignore[method-assign]
    assert r.go().kind == "succeeded"


# ---------------------------------------------------------------------------------------------
# A server that stops answering while it holds the job.


@pytest.mark.parametrize("fault, window", [(read_timeout, 15.0), (refused, REFUSED_LOST_AFTER)])
def test_a_server_that_stops_answering_is_given_up_after_the_loss_window(fault: Callable[[], ServerError], window: float) -> None:
    """Reads of the queue fail for the loss window (``server_lost_after``; 2 s of refusals):
    the job moves, the server marked down, the copy possibly still there (removed later)."""
    r = Run(lost_after=15.0)
    r.server.on_post = r.server.start
    r.server.down["queue"] = fault()
    began = r.clock()
    out = r.go()
    assert window <= r.clock() - began <= window + 2 * 2.0  # two reads, at most 2 s each
    assert out.kind == "move" and not out.confirmed
    assert out.decision.action is Action.MOVE and out.decision.mark_down and out.decision.maybe_there
    assert out.reason == "stopped answering: " + str(fault())[len(NAME) + 2:]
    assert out.error is not None and out.error.args == fault().args


def test_the_loss_window_counts_continuous_silence_only() -> None:
    """10 s of failed reads, one answer, 10 s more: never 15 s in a row, so the job stays."""
    r = Run(lost_after=15.0)
    r.server.on_post = r.server.start
    reads: List[int] = []

    def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        reads.append(1)
        n = len(reads)
        if n <= 10 or 11 < n <= 21:
            r.server.clock.advance(1.0)
            raise read_timeout()
        if n > 21:
            r.server.finish(r.server.running[0])
        return FakeServer.queue(r.server, timeout=timeout)

    r.server.queue = queue  # type: ignore[method-assign]
    assert r.go().kind == "succeeded"


def test_a_server_that_answers_the_queue_but_not_the_history_fails_the_job_without_a_rerun() -> None:
    """The job left the queue, and its result cannot be read for the loss window: the job
    ended there, so it fails saying so (with the HTTP status), and is not run again."""
    r = Run(lost_after=15.0)
    r.server.on_post = lambda pid: r.server.finish(pid)
    r.server.down["history"] = ServerError(f"{NAME}: HTTP 500", server=NAME, status=500)
    began = r.clock()
    out = r.go()
    assert 15.0 <= r.clock() - began <= 16.0
    assert out.kind == "failed" and isinstance(out.error, ServerError)
    assert str(out.error) == f"{NAME}: job {r.attempt.prompt_id} ended there but its result cannot be read (HTTP 500); not run again"
    assert (out.error.server, out.error.status) == (NAME, 500)


def test_a_history_that_fails_for_a_while_then_answers_gives_the_result() -> None:
    r = Run(lost_after=15.0)
    r.server.on_post = lambda pid: r.server.finish(pid, {"9": {"images": [image("a.png")]}})
    r.server.fail["history"] = [ServerError(f"{NAME}: HTTP 500", server=NAME, status=500)] * 10
    out = r.go()
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]


def test_an_unreadable_history_after_success_keeps_the_events_result() -> None:
    r = Run(lost_after=6.0, interval=NEVER)

    def on_post(pid: str) -> None:
        r.server.send(pid, "executed", {"node": "9", "output": {"images": [image("a.png")]}})
        r.server.send(pid, "execution_success", {})
        r.server.finish(pid)  # the closing "executing: null" is lost

    r.server.on_post = on_post
    r.server.down["history"] = read_timeout()
    out = r.go()
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]


def test_a_refused_history_read_waits_two_seconds_not_the_loss_window() -> None:
    r = Run(lost_after=60.0)
    r.server.on_post = lambda pid: r.server.finish(pid)
    r.server.down["history"] = refused()
    began = r.clock()
    out = r.go()
    assert out.kind == "failed" and REFUSED_LOST_AFTER <= r.clock() - began <= REFUSED_LOST_AFTER + 1.0


@pytest.mark.parametrize("where", ["queue", "history"])
def test_close_gives_up_on_a_silent_server_at_once(where: str) -> None:
    """After close() cut the connections, a server that does not answer is not waited for:
    the attempt ends at once (no runner outlives close)."""
    r = Run(lost_after=NEVER)
    r.server.on_post = (lambda pid: r.server.finish(pid)) if where == "history" else r.server.start
    r.server.down[where] = read_timeout()
    r.ctx.cut.set()
    out = r.go()
    assert out.kind == ("failed" if where == "history" else "move")


# ---------------------------------------------------------------------------------------------
# Cancel.


def test_cancel_of_a_queued_job_deletes_it_with_the_pools_other_cancelled_jobs_and_never_interrupts() -> None:
    r = Run(interval=NEVER)
    r.cancelled_here = ["sibling"]
    r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    out = r.go()
    assert out.kind == "cancelled" and out.reason == "cancelled" and out.confirmed
    assert ("delete", [r.attempt.prompt_id, "sibling"]) in r.server.calls
    assert not [c for c in r.server.calls if c[0] == "interrupt"]


def cancelled_once_it_runs() -> Run:
    """A job the server starts at once (telling ``execution_start``) and its user cancels as
    soon as it hears it started; reconciled only on events (an hour's interval)."""
    r = Run(interval=NEVER)

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.send(pid, "execution_start", {})

    r.server.on_post = on_post
    r.on_event = lambda e: r.cancel() if e.kind == "started" else None
    return r


def test_cancel_of_a_running_job_interrupts_it_and_watches_it_leave_the_queue() -> None:
    """The server stops the job but sends no event: the runner looks again within moments
    (not the reconcile interval, an hour here) and ends it cancelled."""
    r = cancelled_once_it_runs()
    r.server.on_interrupt = lambda pid: r.server.finish(pid, status="error", messages=[["execution_interrupted", {}]])
    out = r.go()
    assert out.kind == "cancelled" and out.reason == "cancelled" and out.confirmed
    assert ("interrupt", r.attempt.prompt_id) in r.server.calls


def test_cancel_of_a_running_job_told_by_the_servers_interrupt_event() -> None:
    """The server answers the interrupt with its ``execution_interrupted`` event (the job
    still in its queue for a moment): the job ends cancelled by our cancel, not "interrupted
    on the server" (someone else's), with ComfyUI's message."""
    r = cancelled_once_it_runs()
    r.server.on_interrupt = lambda pid: r.server.send(pid, "execution_interrupted", {"prompt_id": pid, "node_id": "2"})
    out = r.go()
    assert (out.kind, out.reason) == ("cancelled", "cancelled")
    assert out.raw == {"prompt_id": r.attempt.prompt_id, "node_id": "2"}


def test_cancel_of_a_running_job_on_a_slow_server_waits_until_it_stops() -> None:
    """The interrupt is taken but the job leaves the queue only later: the job ends cancelled
    once it is gone, not before (its copy would still run)."""
    r = Run()
    r.server.on_post = r.server.start
    r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    stopping = []
    r.server.on_interrupt = stopping.append

    def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        if stopping and len([c for c in r.server.calls if c[0] == "queue"]) > 4:
            r.server.interrupted(stopping[0])
        return FakeServer.queue(r.server, timeout=timeout)

    r.server.queue = queue  # type: ignore[method-assign]
    out = r.go()
    assert out.kind == "cancelled" and out.confirmed and out.reason == "cancelled"
    assert r.server.items  # it ended on the server before the job was reported


def test_a_cancel_the_server_never_answers_ends_the_job_cancelled_within_the_loss_window() -> None:
    """The delete never gets an answer while the server still answers reads of its queue (a
    proxy that times out on POST, a server stuck in the handler): the cancel is tried again
    until ``server_lost_after`` of failed cancels has passed, then the job ends cancelled, its
    copy left to clean-up (not confirmed), although the job still runs there. A defect found
    here: each answered read of the queue restarted the cancel's loss window, so the job
    ended only once its server finished it (hours, for a long render)."""
    r = Run(lost_after=6.0, interval=NEVER)
    r.server.on_post = r.server.start
    r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    r.server.down["delete"] = read_timeout()
    began = r.clock()
    out = r.go()
    assert out.kind == "cancelled" and not out.confirmed
    assert out.reason == "cancelled (server unreachable: its copy is removed once it answers)"
    assert 6.0 <= r.clock() - began <= 6.0 + 2 * 2.0
    assert r.server.running == [r.attempt.prompt_id]


def test_a_cancel_that_fails_once_is_tried_again() -> None:
    r = Run(cost=1.0, lost_after=15.0, interval=NEVER)
    r.server.on_post = r.server.queue_it
    r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    r.server.fail["delete"] = [read_timeout()]
    out = r.go()
    assert out.kind == "cancelled" and out.confirmed and out.reason == "cancelled"


@pytest.mark.parametrize("where", ["queue", "history"])
def test_a_job_cancelled_while_its_server_is_silent_ends_cancelled_unconfirmed(where: str) -> None:
    """Cancel requested while the reads fail: once the loss window is over the job ends
    cancelled (never moved to run elsewhere)."""
    r = Run(lost_after=6.0)
    r.server.on_post = r.server.start if where == "queue" else (lambda pid: r.server.finish(pid))
    r.server.down[where] = read_timeout()
    r.server.down["delete"] = read_timeout()
    r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    out = r.go()
    if where == "queue":  # the copy may still run there: clean-up removes it later
        assert out.kind == "cancelled" and not out.confirmed
    else:  # it left the queue: its end there is known
        assert (out.kind, out.reason, out.confirmed) == ("cancelled", "cancelled", True)


# ---------------------------------------------------------------------------------------------
# Before and at the POST.


def test_a_job_cancelled_before_its_attempt_starts_is_never_posted() -> None:
    r = Run()
    r.control.mark_cancel()
    out = r.go()
    assert out.kind == "cancelled" and out.reason == "cancelled before submission"
    assert r.server.posted == [] and r.noted == [] and r.events == []


def test_a_job_cancelled_while_its_attempt_is_recorded_is_never_posted() -> None:
    r = Run()
    orig = r._note

    def note(pid: str, server: str, phase: str) -> None:
        orig(pid, server, phase)
        r.control.mark_cancel()

    r.job._on_attempt = note
    out = r.go()
    assert out.kind == "cancelled" and out.reason == "cancelled before submission"
    assert r.server.posted == [] and not r.attempt.posted


def test_an_attempt_that_cannot_be_recorded_fails_the_job_unposted() -> None:
    r = Run()
    r.note_error = OSError("the gateway's store is full")
    out = r.go()
    assert out.kind == "failed" and isinstance(out.error, ComfyClusterError)
    assert str(out.error) == "attempt not recorded: the gateway's store is full"
    assert r.server.posted == []


@pytest.mark.parametrize("error, reason", [
    (refused(), "cannot connect: refused"),
    (ServerError("connection reset by peer", fault="connect"), "connection reset by peer"),  # not naming the server
])
def test_a_websocket_that_cannot_connect_moves_the_job_at_once(error: ServerError, reason: str) -> None:
    """The move's reason is the error's message without the server's name (the job's
    ``failures`` pair it with the server), and whole when it does not start with the name."""
    r = Run()
    r.server.fail["connect"] = [error]
    out = r.go()
    assert out.kind == "move" and out.confirmed and out.decision.mark_down
    assert out.reason == reason
    assert r.server.posted == []


@pytest.mark.parametrize("error, message, path", [
    (FileNotFoundError(2, "No such file or directory", "/shots/plate.exr"), "input file unreadable: FileNotFoundError: /shots/plate.exr",
     "/shots/plate.exr"),
    (OSError(5, "Input/output error"), "input file unreadable: OSError: None", ""),  # no file named: no path made up
])
def test_an_unreadable_input_file_fails_the_job_naming_the_file(error: OSError, message: str, path: str) -> None:
    r = Run()

    def uploads(client: Any) -> Dict[str, Any]:
        raise error

    r.uploads = uploads
    out = r.go()
    assert out.kind == "failed" and isinstance(out.error, LocalFileError)
    assert str(out.error) == message
    assert out.error.path == path
    assert r.server.posted == []


@pytest.mark.parametrize("status, kind", [(413, "failed"), (500, "move")])
def test_an_upload_too_large_fails_and_any_other_upload_fault_moves(status: int, kind: str) -> None:
    r = Run()

    def uploads(client: Any) -> Dict[str, Any]:
        raise ServerError(f"{NAME}: HTTP {status}", server=NAME, status=status)

    r.uploads = uploads
    out = r.go()
    assert out.kind == kind and r.server.posted == []
    if kind == "move":
        assert out.confirmed and out.reason == f"HTTP {status}"


def workflow_error(error_type: str = "prompt_outputs_failed_validation", message: str = "Prompt outputs failed validation",
                   *nodes: Tuple[str, str]) -> WorkflowError:
    return WorkflowError(message, error_type=error_type, server=NAME,
                         node_errors=[NodeError("4", "CheckpointLoader", "ckpt_name", m, t) for t, m in nodes])


@pytest.mark.parametrize("error, here", [
    (workflow_error("missing_node_type", "Node 'Foo' not found"), True),
    (workflow_error("invalid_prompt", "Cannot execute because node Foo does not exist."), True),
    (workflow_error("invalid_prompt", "Cannot execute because a node is missing the class_type property."), False),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("value_not_in_list", "Value not in list: sd15.ckpt")), True),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("value_not_in_list", "x"), ("value_not_in_list", "y")), True),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("custom_validation_failed", "Invalid image file: a.png")), True),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("custom_validation_failed", "width must be even")), False),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("value_not_in_list", "x"), ("required_input_missing", "y")), False),
    (workflow_error("prompt_outputs_failed_validation", "failed", ("required_input_missing", "y"), ("value_not_in_list", "x")), False),
    (workflow_error("prompt_outputs_failed_validation", "failed"), False),
])
def test_a_refused_workflow_moves_only_when_another_server_may_take_it(error: WorkflowError, here: bool) -> None:
    """A 400 for a missing node type or model (a server that lacks it) moves the job, never
    to be offered to that server again; any other 400 would fail the same everywhere."""
    assert is_server_specific(error) is here
    r = Run()
    r.server.fail["post"] = [error]
    out = r.go()
    if here:
        assert out.kind == "move" and out.confirmed and out.decision.exclude and out.error is error
    else:
        assert out.kind == "failed" and out.error is error


@pytest.mark.parametrize("error, kind, down, never_again", [
    (ServerError(f"{NAME}: HTTP 400", server=NAME, status=400), "failed", False, False),
    (ServerError(f"{NAME}: HTTP 413", server=NAME, status=413), "failed", False, False),
    (refused(), "move", True, False),
    (ServerError(f"{NAME}: HTTP 429", server=NAME, status=429), "move", True, False),
    (ServerError(f"{NAME}: HTTP 401", server=NAME, status=401), "move", True, True),
])
def test_a_post_refused_before_the_server_took_the_job(error: ServerError, kind: str, down: bool, never_again: bool) -> None:
    """Nothing was queued: the job fails (the same everywhere) or moves, its end there known;
    a move marks the server down, and a proxy's 401 keeps the job from that server for good."""
    r = Run()
    r.server.fail["post"] = [error]
    out = r.go()
    assert out.kind == kind and out.confirmed and out.error is error
    if kind == "move":
        assert (out.decision.mark_down, out.decision.exclude, out.decision.maybe_there) == (down, never_again, False)
    assert not [c for c in r.server.calls if c[0] in ("queue", "history")]  # nothing to look for


@pytest.mark.parametrize("where", ["nowhere", "pending", "running", "history", "unknown"])
def test_a_post_without_answer_looks_for_the_job_by_its_id(where: str) -> None:
    """The POST timed out: the server may have taken the job. Found by its id in the queue or
    the history, it is followed (never posted twice); not found, or the look fails, it moves,
    its copy left for clean-up."""
    r = Run()
    error = read_timeout()
    pid = r.attempt.prompt_id
    r.server.fail["post"] = [error]
    if where in ("pending", "running"):
        getattr(r.server, where).append(pid)
        r.server.ends_at_look = (3, {"9": {"images": [image("a.png")]}})
    elif where == "history":
        r.server.finish(pid, {"9": {"images": [image("a.png")]}})
    elif where == "unknown":
        r.server.fail["queue"] = [read_timeout()]
    out = r.go()
    if where in ("nowhere", "unknown"):
        assert out.kind == "move" and not out.confirmed and out.decision.maybe_there and out.reason == "no answer (read timed out)"
        assert out.error is error
        assert r.kinds() == []
    else:
        assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]
        assert r.kinds()[:2] == ["submitted", "queued"] and r.job.prompt_id == pid
    assert len(r.server.calls) == len([c for c in r.server.calls if c[0] != "post"]) + 1  # posted once


def test_an_old_server_that_picks_its_own_prompt_id_is_followed_by_that_id() -> None:
    r = Run()
    first = r.attempt.prompt_id
    r.server.own_id = "srv-1"
    # Its events come once the job is queued there (the runner listens to the new id by then).
    r.server.on_post = r.server.queue_it
    run = runs_to_the_end(r.server, {"9": {"images": [image("a.png")]}})
    r.on_event = lambda e: run("srv-1") if e.kind == "queued" else None
    out = r.go()
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]
    assert r.attempt.prompt_id == "srv-1" and r.job.prompt_id == "srv-1"
    assert r.noted == [(first, NAME, "reserved"), (first, NAME, "ended"), ("srv-1", NAME, "reserved")]
    assert "started" in r.kinds() and all(e.prompt_id == "srv-1" for e in r.events)


# ---------------------------------------------------------------------------------------------
# Adopted jobs (posted by an earlier process): followed, never posted.


@pytest.mark.parametrize("where", ["pending", "running", "history", "nowhere"])
def test_an_adopted_job_is_followed_from_where_it_is(where: str) -> None:
    r = Run()
    pid = r.attempt.prompt_id
    r.server.fail["connect"] = [refused()]  # no websocket: followed by polling
    outputs = {"9": {"images": [image("a.png")]}}
    if where == "history":
        r.server.finish(pid, outputs)
    elif where != "nowhere":
        getattr(r.server, where).append(pid)
        looks: List[int] = []

        def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
            looks.append(1)
            if len(looks) == 2:
                r.server.finish(pid, outputs)
            return FakeServer.queue(r.server, timeout=timeout)

        r.server.queue = queue  # type: ignore[method-assign]
    out = r.go(follow_attempt)
    assert r.server.posted == [] and r.attempt.posted and r.job.prompt_id == pid
    # Counted as sent: a copy may be there, found and removed if the attempt is lost.
    assert r.attempt.phase is (AttemptPhase.RUNNING if where == "running" else AttemptPhase.POSTED)
    if where == "nowhere":
        assert out.kind == "move" and out.confirmed and out.reason == "not on its server when adopted (never arrived there)"
        assert r.kinds() == []
        return
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"] and out.reason == ""
    assert r.kinds() == {"pending": ["submitted"], "running": ["submitted", "started"], "history": []}[where]
    assert all(e.server == NAME for e in r.events)


def test_an_adopted_job_hears_its_events_and_its_cancel() -> None:
    """An adopted job running on its server: its events reach its user, and a cancel from the
    user's thread wakes its runner at once (the reconcile interval is an hour here)."""
    r = Run(interval=NEVER)
    pid = r.attempt.prompt_id
    r.server.running.append(pid)
    started = threading.Event()

    def on_event(e: Any) -> None:
        if e.kind == "started":
            r.server.send(pid, "executing", {"node": "5"})
            started.set()

    r.on_event = on_event
    out: List[Outcome] = []
    thread = threading.Thread(target=lambda: out.append(follow_attempt(r.attempt, r.ctx)), daemon=True)
    thread.start()
    assert started.wait(20)
    wait_until(lambda: "executing" in r.kinds(), timeout=20, what="the job's event heard")
    r.cancel()
    thread.join(20)
    assert out and out[0].kind == "cancelled" and out[0].reason == "cancelled"
    assert r.kinds() == ["submitted", "started", "executing"] and r.event("executing").node == "5"


def test_an_adopted_job_on_a_silent_server_keeps_its_reason() -> None:
    r = Run()
    r.server.down["queue"] = read_timeout()
    r.server.fail["connect"] = [refused()]
    out = r.go(follow_attempt)
    assert out.kind == "move" and not out.confirmed and out.reason.startswith("stopped answering: ")


def test_a_cancel_reaches_a_runner_waiting_for_events_at_once() -> None:
    """The job runs on its server and nothing is heard for a while (the reconcile interval is
    an hour here): ``cancel()`` from the user's thread wakes its runner, which interrupts the
    job on its server at once."""
    r = Run(interval=NEVER)
    started = threading.Event()
    r.server.on_post = r.server.start
    r.on_event = lambda e: started.set() if e.kind == "queued" else None
    out: List[Outcome] = []
    thread = threading.Thread(target=lambda: out.append(run_attempt(r.attempt, r.ctx)), daemon=True)
    thread.start()
    assert started.wait(20)
    r.cancel()
    thread.join(20)
    assert out and out[0].kind == "cancelled" and out[0].reason == "cancelled"
    assert ("interrupt", r.attempt.prompt_id) in r.server.calls


def test_a_job_still_queued_on_its_server_is_not_judged_by_a_failing_history() -> None:
    """While the job waits in the server's queue its result is not read: a history that
    fails meanwhile neither fails nor moves it; once it has run and the history answers, the
    result is had."""
    r = Run(lost_after=15.0)
    r.server.on_post = r.server.queue_it
    r.server.down["history"] = ServerError(f"{NAME}: HTTP 500", server=NAME, status=500)

    def queue(*, timeout: Any = None) -> Tuple[List[str], List[str]]:
        r.clock.advance(1.0)  # 40 looks: 40 s of the pool's clock in the queue
        if r.server.looks == 40:  # it ran; its result is readable after 3 more failed reads
            r.server.down.clear()
            r.server.fail["history"] = [ServerError(f"{NAME}: HTTP 500", server=NAME, status=500)] * 3
            r.server.finish(r.server.pending[0], {"9": {"images": [image("a.png")]}})
        return FakeServer.queue(r.server, timeout=timeout)

    r.server.queue = queue  # type: ignore[method-assign]
    out = r.go()
    assert out.kind == "succeeded" and list(out.outputs or {}) == ["9"]


def test_a_silent_server_is_read_again_soon_although_the_reconcile_interval_is_long() -> None:
    """The websocket dropped and the server stopped answering: its queue is read again every
    half second (not every reconcile interval, an hour here) until the loss window is over."""
    r = Run(lost_after=4.0, interval=NEVER)

    def on_post(pid: str) -> None:
        r.server.start(pid)
        r.server.down["queue"] = read_timeout()
        r.server.listeners[pid]({"type": "_disconnected"})

    r.server.on_post = on_post
    out = r.go()
    assert out.kind == "move" and not out.confirmed


def test_the_result_reads_loss_window_counts_continuous_failures_only() -> None:
    """Reading the result: it fails, answers "not there yet", fails twice more, then gives the
    result: the window restarts once the server answered, and the whole result is had (reads
    of 2 s: 4 s of continuous silence at most, 6 s in all, against a 5 s window)."""
    r = Run(lost_after=5.0)
    r.server.on_post = ends_with_two_outputs(r)
    script = [read_timeout(), None, read_timeout(), read_timeout(), "item"]
    real = r.server.items

    def history(prompt_id: str, *, timeout: Any = None) -> Optional[Dict[str, Any]]:
        step = script.pop(0) if script else "item"
        if isinstance(step, ServerError):
            r.server.fail["history"] = [step]
        r.server._call("history", prompt_id, timeout)
        return real.get(prompt_id) if step == "item" else None

    r.server.history = history  # type: ignore[method-assign]
    out = r.go()
    assert out.kind == "succeeded" and sorted(out.outputs or {}) == ["10", "9"]


@pytest.mark.parametrize("where", ["queue", "cancel"])
def test_one_unanswered_request_longer_than_the_loss_window_gives_the_server_up(where: str) -> None:
    """The loss window is time without an answer, counted from when the first unanswered
    request was sent: one read that waited its whole time-out (2 s) past a 1 s window ends
    the attempt at once, not after a second read (the window once began when the first
    read failed, so a silent server held the job for twice the read time-out and more)."""
    r = Run(lost_after=1.0)
    r.server.on_post = r.server.start
    if where == "queue":
        r.server.down["queue"] = read_timeout()
    else:
        r.server.down["delete"] = read_timeout()
        r.on_event = lambda e: r.cancel() if e.kind == "queued" else None
    out = r.go()
    assert out.kind == ("move" if where == "queue" else "cancelled") and not out.confirmed
    unanswered = [m for m, _ in r.server.calls if m in ("queue", "delete", "interrupt")]
    assert len(unanswered) == 1, unanswered


def test_a_cancel_on_a_server_that_refuses_ends_after_two_seconds_of_refusals() -> None:
    """Cancel requested, then the server refuses everything (its ComfyUI stopped): the refusal
    window (2 s) runs from the first refused request, the cancel's, so the job ends cancelled
    (its copy left to clean-up) at the first refused read of the queue 2 s later, not after
    a further round of cancel and read."""
    r = Run(cost=1.0, lost_after=15.0, interval=NEVER)
    r.server.on_post = r.server.start

    def refuse_all(event: Any) -> None:
        if event.kind == "queued":
            r.server.down["delete"] = r.server.down["interrupt"] = r.server.down["queue"] = refused()
            r.cancel()

    r.on_event = refuse_all
    out = r.go()
    assert out.kind == "cancelled" and not out.confirmed
    failed = [m for m, _ in r.server.calls if m in ("delete", "interrupt", "queue")]
    assert failed == ["delete", "queue"], failed
