"""Following a posted attempt to its end (:class:`Follower`): its events from the server's
websocket, reconciled from ``/queue`` and ``/history`` when the socket drops or goes quiet,
a cancel carried to the server, and the result read; every ending an :class:`Outcome`.
:mod:`comfy_cluster.runner` posts the attempt and hands it over to a Follower.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from .answers import job_failed
from .attempt import Attempt, AttemptPhase, PostGate, cancel_on_server
from .client import ComfyClient, as_dict, as_list, iter_output_files
from .errors import ComfyClusterError, JobFailed, ServerError
from .jobs import OutputFile
from .policy import Action, Decision, Phase, decide, follow_timeout

if TYPE_CHECKING:  # pragma: no cover
    from .events import ServerSocket

__all__ = ["Outcome", "RunnerContext", "Follower", "moved", "strip_name", "HISTORY_GRACE", "SUSPECT_INTERVAL"]

log = logging.getLogger(__name__)

#: How long a finished job may be missing from /history before it is taken for lost.
HISTORY_GRACE = 10.0
#: Seconds between /queue + /history reads while the websocket may be deaf (see Follower).
SUSPECT_INTERVAL = 1.0


@dataclass
class Outcome:
    """How an attempt ended. ``kind``: ``succeeded``, ``failed``, ``cancelled`` or ``move``
    (back to the queue for another server). ``confirmed``: its end on the server is known
    (else the ledger keeps it UNCONFIRMED for clean-up). ``decision``: the policy row behind
    a move (mark the server down, exclude it for this job)."""

    kind: str
    reason: str = ""
    error: Optional[BaseException] = None
    outputs: Optional[Dict[str, List[OutputFile]]] = None
    exec_seconds: Optional[float] = None
    decision: Decision = field(default_factory=lambda: Decision(Action.MOVE))
    confirmed: bool = True
    raw: Optional[Dict[str, Any]] = None


@dataclass
class RunnerContext:
    """What an attempt needs from the pool."""

    client: ComfyClient
    socket: "ServerSocket"
    client_id: str
    position: Callable[[], int]
    uploads: Callable[[ComfyClient], Dict[str, Any]]
    #: prompt_ids of this pool's cancelled attempts on the server: deleted together before an
    #: interrupt, so a cancelled batch's next job never starts in between.
    cancelled_here: Callable[[], List[str]] = list
    post_gate: PostGate = field(default_factory=PostGate)
    reconcile_interval: float = 5.0
    server_lost_after: float = 15.0
    clock: Callable[[], float] = time.monotonic
    #: Set when close() cuts every connection (after its grace for cancels): a server that does
    #: not answer is then given up on at once (the copy stays in the ledger and is logged),
    #: and no pause outlasts it, so no runner outlives close().
    cut: threading.Event = field(default_factory=threading.Event)


def strip_name(text: str, name: str) -> str:
    """``text`` without its leading ``"<server name>: "``."""
    return text[len(name) + 2:] if text.startswith(name + ": ") else text


def moved(err: BaseException, decision: Decision, name: str, *, confirmed: bool, prefix: str = "") -> Outcome:
    """The attempt goes back to the queue for another server, ``err`` its reason."""
    return Outcome("move", reason=prefix + strip_name(str(err), name), error=err, decision=decision, confirmed=confirmed)


class Follower:
    """Follows a posted attempt to its end: websocket events, reconciled from /queue and
    /history when the socket drops or goes quiet; cancel on request."""

    def __init__(self, attempt: Attempt, ctx: RunnerContext, inbox: "queue.Queue[Dict[str, Any]]") -> None:
        self.attempt = attempt
        self.job = attempt.control
        self.ctx = ctx
        self.name = attempt.server
        self.inbox = inbox
        self.started: Optional[float] = None
        self.posted_at = ctx.clock()
        self.cancel_done = False  # delete/interrupt went through
        self.success_raw: Optional[Dict[str, Any]] = None
        self.success_seen = False
        # Outputs as the websocket announced them: the result when the server signalled
        # success and then lost its history (a restart) before we read it.
        self.ws_outputs: Dict[str, List[OutputFile]] = {}
        self.unreachable_since: Optional[float] = None
        # Since when /history fails while /queue answers (see _unreadable).
        self.unreadable_since: Optional[float] = None
        self.cancel_retry_at = 0.0
        # Since when every cancel request failed: its own loss window, which an answered read
        # of the queue does not restart (a server may answer reads and never the cancel).
        self.cancel_failing_since: Optional[float] = None
        # After a reconnect, ComfyUI may drop the new socket's registration when it notices the
        # old socket's close (same clientId): until an event proves otherwise, look often.
        self.deaf_maybe = False
        # Whether the socket carried every event of the job: its execution_start was heard and
        # the socket never dropped since (then its executed frames are all of its outputs).
        self.heard_start = False
        self.gap = False

    @property
    def pid(self) -> str:
        return self.attempt.prompt_id

    def run(self) -> Outcome:
        while True:
            timeout = self.ctx.reconcile_interval
            if self.success_seen:
                timeout = 1.0  # the closing "executing: null" is due right after
            if self.unreachable_since is not None or self.unreadable_since is not None:
                timeout = min(timeout, 0.5)
            if self.job.cancel_requested:
                timeout = min(timeout, 0.25)  # watch the job leave the queue
            if self.deaf_maybe:
                timeout = min(timeout, SUSPECT_INTERVAL)
            reconcile = False
            msg: Optional[Dict[str, Any]] = None
            if self.job.cancel_requested and not self.cancel_done and time.monotonic() >= self.cancel_retry_at:
                reconcile = True
                asked = self.ctx.clock()
                try:
                    cancel_on_server(self.ctx.client, self.pid, also_delete=self.ctx.cancelled_here())
                    self.cancel_done = True
                except ServerError as exc:
                    if self.cancel_failing_since is None:
                        self.cancel_failing_since = asked  # unanswered since it was sent
                    out = self._lost(exc, Phase.CANCEL, asked, since=self.cancel_failing_since)
                    if out is not None:
                        return out
                    self.cancel_retry_at = time.monotonic() + 0.25
                    continue
            else:
                try:
                    msg = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    msg = None
                kind = msg.get("type") if msg else None
                reconcile = msg is None or kind in ("_disconnected", "_reconnected")
                if kind == "_disconnected":  # frames may be lost from here (a later socket's come after it)
                    self.gap = True
                if kind == "_reconnected":
                    self.deaf_maybe = True
                elif isinstance(kind, str) and not kind.startswith("_"):
                    self.deaf_maybe = False  # the server still routes our events to us
            if reconcile:
                out = self.reconcile()
                if out is not None:
                    return out
                continue
            assert msg is not None
            out = self._on_message(msg)
            if out is not None:
                return out

    def _lost(self, exc: ComfyClusterError, phase: Phase, asked: float, since: Optional[float] = None) -> Optional[Outcome]:
        """Contact lost: None while within the loss window, else how the attempt ends. The
        window runs from ``since`` (default: from ``asked``, when the first request of this
        silence was sent: a read that waited its whole time-out was that long without an
        answer, so one time-out longer than the window ends it)."""
        now = self.ctx.clock()
        if self.unreachable_since is None:
            self.unreachable_since = asked
        start = self.unreachable_since if since is None else since
        d = decide(phase, exc)
        window = d.window if d.window is not None else self.ctx.server_lost_after
        if now - start < window and not self.ctx.cut.is_set():
            return None
        if self.job.cancel_requested:
            # Reported cancelled; the copy stays in the ledger until the server answers.
            return Outcome("cancelled", reason="cancelled (server unreachable: its copy is removed once it answers)", confirmed=False)
        down = Decision(Action.MOVE, mark_down=True, maybe_there=True)
        return moved(exc, down, self.name, confirmed=False, prefix="stopped answering: ")

    def reconcile(self) -> Optional[Outcome]:
        client = self.ctx.client
        asked = self.ctx.clock()
        try:
            # The queue first, then the history: ComfyUI moves a finished job from one to the
            # other at once, so a job in neither *after* the queue was read is lost.
            running, pending = client.queue(timeout=follow_timeout(client.timeout[1]))
        except ComfyClusterError as exc:
            return self._lost(exc, Phase.FOLLOW, asked)
        self.unreachable_since = None  # it answered: whatever fails next, it is not lost
        item = None
        if self.pid not in running and self.pid not in pending:
            try:
                item = client.history(self.pid, timeout=follow_timeout(client.timeout[1]))
            except ComfyClusterError as exc:
                return self._unreadable(exc)
        self.unreadable_since = None
        if item is not None:
            return self._from_history(item)
        if self.pid in running or self.pid in pending:
            if self.pid in running and self.started is None:
                self._mark_started()
            return None
        if self.job.cancel_requested and self.cancel_done:
            return Outcome("cancelled", reason="cancelled")
        if self.success_seen:
            return self._from_events()  # it finished; its history went with a restart
        # In neither queue nor history: the server restarted and lost it.
        return Outcome("move", reason="server restarted and lost the job", decision=Decision(Action.MOVE), confirmed=True)

    def _unreadable(self, exc: ComfyClusterError) -> Optional[Outcome]:
        """The server answered ``/queue`` (so it is reachable) and our job has left its queue,
        but ``/history`` fails: the job ended there. Retried for the loss window; then the
        job ends with what is known, never runs again (a reachable server is not lost)."""
        now = self.ctx.clock()
        if self.unreadable_since is None:
            self.unreadable_since = now
        d = decide(Phase.HISTORY, exc)
        window = d.window if d.window is not None else self.ctx.server_lost_after
        if now - self.unreadable_since < window and not self.ctx.cut.is_set():
            return None
        if self.job.cancel_requested:
            return Outcome("cancelled", reason="cancelled")
        if self.success_seen:
            return self._from_events()
        reason = strip_name(str(exc), self.name)
        err = ServerError(f"{self.name}: job {self.pid} ended there but its result cannot be read ({reason}); "
                          "not run again", server=self.name, status=getattr(exc, "status", None))
        return Outcome("failed", error=err)

    def _mark_started(self) -> None:
        self.started = self.ctx.clock()
        self.attempt.phase = AttemptPhase.RUNNING
        self.job.started(self.started)

    def _on_message(self, msg: Dict[str, Any]) -> Optional[Outcome]:
        kind = msg.get("type")
        name = self.name
        job = self.job
        if kind == "_cancel":
            return None  # handled at the top of the loop
        if kind == "_binary":
            frame = msg.get("data")
            if isinstance(frame, bytes):
                job.emit("preview", name, data=frame)
            return None
        data = msg.get("data")
        data = data if isinstance(data, dict) else {}
        if kind == "execution_start":
            self.heard_start = True
            self._mark_started()
            job.emit("started", name, raw=data)
        elif kind == "execution_cached":
            nodes = as_list(data.get("nodes"))
            job.emit("cached", name, nodes=tuple(str(n) for n in nodes), raw=data)
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                if self.success_seen and self.heard_start and not self.gap:
                    return self._from_socket()
                return self._finish_from_history()
            job.emit("executing", name, node=str(node), raw=data)
        elif kind == "progress":
            v, m = data.get("value"), data.get("max")
            if isinstance(v, (int, float)) and isinstance(m, (int, float)):
                job.emit("progress", name, node=str(data.get("node")), value=float(v), max=float(m), raw=data)
        elif kind == "executed":
            node = str(data.get("node"))
            files = tuple(
                OutputFile(f["filename"], f["subfolder"], f["type"], node) for _, f in iter_output_files({node: data.get("output")})
            )
            self.ws_outputs.setdefault(node, []).extend(files)
            job.emit("output", name, node=node, files=files, raw=data)
        elif kind == "execution_success":
            self.success_seen = True
            self.success_raw = data
        elif kind == "execution_error":
            return Outcome("failed", error=job_failed(data, self.pid, name), raw=data)
        elif kind == "execution_interrupted":
            reason = "cancelled" if job.cancel_requested else "interrupted on the server"
            return Outcome("cancelled", reason=reason, raw=data)
        return None

    def _finish_from_history(self) -> Outcome:
        """The job ended (``executing`` with node null): read its result. A failed read is
        retried for the loss window like any other loss of contact (one 500 or one timeout
        must not re-run a finished job)."""
        grace_end = self.ctx.clock() + HISTORY_GRACE
        delay = 0.05
        while True:
            asked = self.ctx.clock()
            try:
                item = self.ctx.client.history(self.pid, timeout=follow_timeout(self.ctx.client.timeout[1]))
            except ComfyClusterError as exc:
                if self._lost(exc, Phase.HISTORY, asked) is not None:
                    return self._from_events()  # it ended there: nothing to remove
                self.ctx.cut.wait(0.25)
                continue
            self.unreachable_since = None
            if item is not None:
                out = self._from_history(item)
                out.raw = self.success_raw
                return out
            if self.ctx.clock() >= grace_end or self.ctx.cut.is_set():
                return self._from_events()
            self.ctx.cut.wait(delay)  # history is written just before the done signal; rarely needed
            delay = min(delay * 2, 1.0)

    def _from_socket(self) -> Outcome:
        """The socket carried the whole job (``execution_start`` to ``execution_success`` and
        ``executing`` null): its ``executed`` frames list every output, cached ones too, so no
        ``GET /history`` (a round trip less per job)."""
        return Outcome("succeeded", outputs=self._in_order(self.ws_outputs), exec_seconds=self._ran_for(), raw=self.success_raw)

    def _from_events(self) -> Outcome:
        """The job signalled success, but its history item cannot be had (the server lost it
        in a restart, or stays out of reach): the result from the websocket's ``executed``
        events, whose files are on the server's disk. Running it again would run it twice."""
        log.warning("%s: history of %s unavailable after its success; result taken from its events", self.name, self.pid)
        return Outcome("succeeded", outputs=self._in_order(self.ws_outputs), exec_seconds=self._ran_for(), raw=self.success_raw)

    def _from_history(self, item: Mapping[str, Any]) -> Outcome:
        status = as_dict(item.get("status"))
        messages = as_list(status.get("messages"))
        if status.get("status_str") == "error":
            for m in messages:
                if isinstance(m, list) and len(m) == 2 and m[0] == "execution_error" and isinstance(m[1], dict):
                    return Outcome("failed", error=job_failed(m[1], self.pid, self.name))
                if isinstance(m, list) and len(m) == 2 and m[0] == "execution_interrupted":
                    return Outcome("cancelled", reason="cancelled" if self.job.cancel_requested else "interrupted on the server")
            return Outcome("failed", error=JobFailed(f"{self.name}: job {self.pid} ended with an error", prompt_id=self.pid, server=self.name))
        outputs: Dict[str, List[OutputFile]] = {}
        for node, f in iter_output_files(item.get("outputs")):
            outputs.setdefault(node, []).append(OutputFile(f["filename"], f["subfolder"], f["type"], node))
        return Outcome("succeeded", outputs=self._in_order(outputs), exec_seconds=self._ran_for())

    def _in_order(self, outputs: Dict[str, List[OutputFile]]) -> Dict[str, List[OutputFile]]:
        """Output nodes in the workflow's order, any other (expanded at run time) after: the
        same whichever way the result was had (ComfyUI lists a history item's in no set order)."""
        order = {node: i for i, node in enumerate(self.job.job.workflow)}
        return dict(sorted(outputs.items(), key=lambda kv: order.get(kv[0], len(order))))

    def _ran_for(self) -> float:
        """Seconds since the job started on the server (since its POST when no start was seen)."""
        started = self.started if self.started is not None else self.posted_at
        return self.ctx.clock() - started
