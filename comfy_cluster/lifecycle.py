"""Runners: one thread per running attempt (reused for the next one), and what happens at its end (release it or keep it in
the ledger, finish the job or queue it again).

:class:`Runners` is handed what it reads and acts on: the clients and sockets per server, the
status monitor (a server's queue position, marking it down), the ledger, the gate POSTs
share, the job queue (``add`` and ``attempt_ended``: the scheduler), ``cleanup(server)`` for
copies left unconfirmed, the clock, and ``cut`` (set by close once connections are cut). It hands each attempt a
:class:`~comfy_cluster.runner.RunnerContext`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Mapping, Optional, Sequence, Set, Tuple

from .attempt import Attempt, Ledger, PostGate
from .client import ComfyClient
from .errors import ComfyClusterError, JobFailed, ServerError, WorkflowError
from .jobs import JobControl, JobResult
from .loaders import PATH_INPUTS, input_directory, input_for, server_path
from .runner import Outcome, RunnerContext, follow_attempt, run_attempt
from .status import StatusMonitor
from .workflow import set_inputs

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from .events import ServerSockets

    class JobQueue(Protocol):
        """Where a moved job goes back (the scheduler)."""

        def add(self, controls: Sequence[JobControl], *, front: bool = False) -> None: ...

        def attempt_ended(self, control: JobControl) -> None: ...

__all__ = ["Runners"]

log = logging.getLogger("comfy_cluster.pool")

#: Seconds a runner thread whose attempt ended waits for the next attempt before it ends: a
#: busy pool hands attempts to waiting threads instead of starting a thread per attempt.
IDLE_SECONDS = 2.0
#: Runner threads kept waiting at most.
MAX_IDLE = 16


class Runners:
    """Runs each attempt on a runner thread of its own (a thread whose attempt ended waits
    ``IDLE_SECONDS`` for the next one before it ends) and settles each attempt's end."""

    def __init__(
        self,
        *,
        clients: Mapping[str, ComfyClient],
        sockets: "ServerSockets",
        client_id: str,
        monitor: StatusMonitor,
        ledger: Ledger,
        post_gate: PostGate,
        queue: "JobQueue",
        cleanup: Callable[[str], None],
        clock: Callable[[], float],
        reconcile_interval: float,
        server_lost_after: float,
        cut: Optional[threading.Event] = None,
    ) -> None:
        self._clients = clients
        self._sockets = sockets
        self._client_id = client_id
        self._monitor = monitor
        self._ledger = ledger
        self._post_gate = post_gate
        self._queue = queue
        self._cleanup = cleanup
        self._clock = clock
        self._reconcile_interval = reconcile_interval
        self._server_lost_after = server_lost_after
        self._cut = cut or threading.Event()  # set by close() when it cuts connections: runners give up at once
        self._lock = threading.Lock()
        self._threads: Set[threading.Thread] = set()
        # Attempts handed to waiting runner threads, and how many wait (under the lock).
        self._ready = threading.Condition(self._lock)
        self._handoff: Deque[Tuple[Attempt, bool]] = collections.deque()
        self._idle = 0
        self._closing = False

    def launch(self, attempt: Attempt, *, follow_only: bool = False) -> None:
        """Run ``attempt`` on a runner thread (the scheduler, once the attempt is reserved): a
        waiting one if any (no thread start on the job's path), else a new one.
        ``follow_only``: the copy is on its server already (adopted): follow it, never post."""
        with self._lock:
            if self._idle > len(self._handoff):
                self._handoff.append((attempt, follow_only))
                self._ready.notify()
                return
            thread = threading.Thread(target=self._serve, args=(attempt, follow_only), name=f"comfy-cluster-job-{attempt.server}", daemon=True)
            self._threads.add(thread)
        thread.start()

    def close(self) -> None:
        """No thread waits for another attempt any more (pool.close): each ends once its
        attempt has (an attempt already handed over still runs)."""
        with self._lock:
            self._closing = True
            self._ready.notify_all()

    def _serve(self, attempt: Attempt, follow_only: bool) -> None:
        """A runner thread: ``attempt``, then the attempts handed to it while it waits."""
        me = threading.current_thread()
        try:
            while True:
                me.name = f"comfy-cluster-job-{attempt.server}"
                self._run(attempt, follow_only)
                with self._lock:
                    if self._closing or self._idle >= MAX_IDLE:
                        return
                    self._idle += 1
                    me.name = "comfy-cluster-job-idle"
                    self._ready.wait_for(lambda: bool(self._handoff) or self._closing, timeout=IDLE_SECONDS)
                    self._idle -= 1
                    if not self._handoff:
                        return
                    attempt, follow_only = self._handoff.popleft()
        finally:
            with self._lock:
                self._threads.discard(me)

    def join(self, deadline: float) -> None:
        """Wait (until ``deadline``, ``time.monotonic``) for every runner but the caller's."""
        while True:
            with self._lock:
                runners = [t for t in self._threads if t is not threading.current_thread() and t.is_alive()]
            if not runners or time.monotonic() >= deadline:
                return
            runners[0].join(timeout=max(0.0, deadline - time.monotonic()))

    def context(self, attempt: Attempt) -> RunnerContext:
        """What ``attempt``'s runner needs, live values as callables."""
        name = attempt.server
        job = attempt.job
        monitor, ledger = self._monitor, self._ledger
        # An adopted copy posted under another clientId: read its events from a socket under
        # that id (borrowed; given back when the runner ends).
        socket = self._sockets.borrow(name, attempt.client_id) if attempt.client_id else self._sockets[name]
        return RunnerContext(
            client=self._clients[name], socket=socket, client_id=self._client_id,
            # The job itself is already counted in the load: the ones ahead of it.
            position=lambda: max(0, monitor.snapshot(name).load - 1),
            uploads=lambda client: self._uploaded_workflow(job.workflow, job.inputs, client),
            post_gate=self._post_gate,
            cancelled_here=lambda: [a.prompt_id for a in ledger.live(name) if a.posted and a.job.cancel_requested],
            reconcile_interval=self._reconcile_interval, server_lost_after=self._server_lost_after, clock=self._clock,
            cut=self._cut,
        )

    def _run(self, attempt: Attempt, follow_only: bool = False) -> None:
        name = attempt.server
        try:
            run = follow_attempt if follow_only else run_attempt
            outcome = run(attempt, self.context(attempt))
        except Exception as exc:  # never lose a job to a bug: fail it with the reason
            log.exception("job attempt on %s crashed", name)
            outcome = Outcome("failed", error=ServerError(f"{name}: internal error: {exc!r}", server=name), confirmed=False)
        finally:
            if attempt.client_id:
                self._sockets.give_back(name, attempt.client_id)
        self.attempt_done(attempt, outcome)

    def _uploaded_workflow(self, workflow: Dict[str, Any], inputs: Mapping[str, str], client: ComfyClient) -> Dict[str, Any]:
        """The workflow with each input uploaded into a subfolder named by the hash of the bytes
        sent: two different files never share a name on a server (two artists' plates of the
        same name, two jobs of one batch, or a plate replaced by one of the same size and time
        stamp), and the same bytes are reused. Each upload reads the file once and sends exactly
        the bytes it hashed: no cache keyed on (path, size, mtime) can go stale. Path loaders
        (LoadEXR) get the uploaded file's path on the server (:mod:`.loaders`)."""
        if not inputs:
            return workflow
        folder: Optional[str] = None
        values: Dict[str, Dict[str, Any]] = {}
        for node, path in inputs.items():
            with open(path, "rb") as fh:
                content = fh.read()
            digest = hashlib.sha256(content).hexdigest()[:32]
            name = client.upload_image(path, subfolder=f"cc-{digest}", content=content)
            key = input_for(workflow[node]) or "image"
            if key in PATH_INPUTS.values():  # a path on the server (LoadEXR), not an uploaded name
                if folder is None:
                    folder = input_directory(client.system_stats())
                values[node] = {key: server_path(folder, name)}
            else:
                values[node] = {key: name}
        return set_inputs(workflow, values)

    def attempt_done(self, attempt: Attempt, outcome: Outcome) -> None:
        """Record how ``attempt`` ended and move the job on: final, or back to the queue."""
        control, name = attempt.control, attempt.server
        job = control.job
        ok = True if outcome.kind == "succeeded" else False if outcome.kind == "failed" else None
        if outcome.confirmed:
            self._ledger.release(attempt, seconds=outcome.exec_seconds, ok=ok)
        else:
            self._ledger.lose(attempt, self._clock())
        moving = outcome.kind == "move"
        control.attempt_ended(attempt, (name, outcome.reason) if moving else None)
        self._queue.attempt_ended(control)
        if moving and outcome.decision.mark_down:
            self._monitor.mark_failed(name, outcome.reason)
        if not outcome.confirmed:
            self._cleanup(name)
        if outcome.kind == "succeeded":
            result = JobResult(prompt_id=attempt.prompt_id, server=name, outputs=outcome.outputs or {},
                               attempts=job.attempts, seconds=time.monotonic() - job.created)
            control.succeed(name, result, raw=outcome.raw)
        elif outcome.kind == "failed":
            err = outcome.error or JobFailed(f"{name}: job failed", server=name)
            if isinstance(err, (JobFailed, ServerError)) and job.failures:
                err.attempts = job.failures + [(name, str(err))]
            control.fail(name, err, raw=outcome.raw)
        elif outcome.kind == "cancelled":
            control.cancelled(name, outcome.reason or "cancelled", raw=outcome.raw)
        else:
            self._move(control, name, outcome)

    def _move(self, control: JobControl, name: str, outcome: Outcome) -> None:
        job = control.job
        log.warning("job %s left %s: %s", job.prompt_id, name, outcome.reason)
        if outcome.decision.exclude:
            control.incapable.add(name)
            control.last_error = outcome.error if isinstance(outcome.error, ComfyClusterError) else None
        if job.cancel_requested:
            control.cancelled(name, "cancelled")
        elif job.attempts > job.retries:
            if outcome.decision.exclude and isinstance(outcome.error, WorkflowError):
                err: ComfyClusterError = outcome.error
            else:
                failures = job.failures
                tried = "; ".join(f"{s}: {r}" for s, r in failures)
                err = ServerError(f"job failed after {job.attempts} attempt(s): {tried}", server=name, attempts=failures)
            control.fail(name, err)
        else:
            try:
                self._queue.add([control], front=True)
            except ComfyClusterError:
                control.cancelled(name, "pool closed")
