"""Jobs: the lifecycle of one workflow run on the cluster.

A :class:`Job` is made by :meth:`ServerPool.submit`. The pool's dispatcher gives it a server
when one has room; a runner thread then does one *attempt* there (:func:`run_attempt`): upload
inputs, ``POST /prompt`` with a fresh ``prompt_id``, follow the job's events on the server's
websocket, reconcile from ``/history`` and ``/queue`` when the socket drops or goes quiet, and
fetch the outputs. An attempt ends in an :class:`Outcome`: done, or "move elsewhere" (the
dispatcher then picks another server, at most ``retries`` times).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .client import as_dict, as_list, ComfyClient, iter_output_files
from .config import ServerConfig
from .errors import (
    ComfyClusterError,
    JobFailed,
    ServerError,
    WorkflowError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .events import ServerSocket

__all__ = ["Job", "JobEvent", "JobResult", "OutputFile", "JOB_STATES"]

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
# Seconds of refused connections after which a job's server is taken for dead.
REFUSED_LOST_AFTER = 2.0
EVENT_KINDS = (
    "submitted", "queued", "started", "executing", "progress", "cached", "output",
    "succeeded", "failed", "cancelled", "retrying", "preview",
)


@dataclass(frozen=True)
class OutputFile:
    """One file a job produced, as the server names it."""

    filename: str
    subfolder: str
    type: str
    node: str = ""


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job. ``kind`` is one of :data:`EVENT_KINDS`.

    Fields used by kind: ``queued`` -> position; ``executing`` -> node; ``progress`` -> node,
    value, max; ``cached`` -> nodes; ``output`` -> node, files; ``retrying`` -> from_server,
    to_server, reason; ``failed``/``cancelled`` -> reason; ``preview`` -> data (the whole
    binary websocket frame as the server sent it: 4-byte event type, then its payload).
    ``index`` is the job's position in its batch (None outside a batch). ``raw`` is the
    websocket message's ``data`` dict as the server sent it, for events that come from one
    (None for the others), so a relay can pass it on unchanged.
    """

    kind: str
    server: Optional[str]
    prompt_id: Optional[str] = None
    node: Optional[str] = None
    value: Optional[float] = None
    max: Optional[float] = None
    position: Optional[int] = None
    nodes: Tuple[str, ...] = ()
    files: Tuple[OutputFile, ...] = ()
    from_server: Optional[str] = None
    to_server: Optional[str] = None
    reason: Optional[str] = None
    index: Optional[int] = None
    time: float = field(default_factory=time.time)
    raw: Optional[Dict[str, Any]] = field(default=None, repr=False)
    data: Optional[bytes] = field(default=None, repr=False)


@dataclass(frozen=True)
class JobResult:
    """A finished job: its outputs (node id -> files), where it ran, and how long it took."""

    prompt_id: str
    server: str
    outputs: Dict[str, List[OutputFile]]
    attempts: int
    seconds: float

    @property
    def files(self) -> List[OutputFile]:
        """Every output file, node by node."""
        return [f for files in self.outputs.values() for f in files]


@dataclass
class Outcome:
    """How an attempt ended. ``retry`` means: move the job to another server."""

    kind: str  # "succeeded", "failed", "cancelled", "retry"
    reason: str = ""
    error: Optional[BaseException] = None
    result_outputs: Optional[Dict[str, List[OutputFile]]] = None
    exec_seconds: Optional[float] = None
    incapable: bool = False  # the server lacks a node type or model this workflow needs
    server_down: bool = False  # the server itself failed (mark it offline)
    raw: Optional[Dict[str, Any]] = None  # the server's websocket message data that ended it


class Job:
    """One workflow run on the cluster. Created by :meth:`ServerPool.submit`; thread-safe.

    ``status`` is one of ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``.
    ``prompt_id`` is the id of the current (or last) attempt: each attempt on a new server
    uses a fresh id, so a copy left on a failed server can never be mistaken for it.
    """

    def __init__(
        self,
        workflow: Dict[str, Any],
        *,
        inputs: Optional[Mapping[str, str]] = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        index: Optional[int] = None,
        owner: Optional[str] = None,
    ) -> None:
        self.workflow = workflow
        self.owner = owner
        self.inputs: Dict[str, str] = dict(inputs or {})
        self.retries = retries
        self.index = index
        self.prompt_id: Optional[str] = None
        self.server: Optional[ServerConfig] = None
        self.events: List[JobEvent] = []
        self.attempts = 0
        self.tried: List[str] = []
        self.incapable: set = set()
        self.failures: List[Tuple[str, str]] = []
        self.last_error: Optional[ComfyClusterError] = None
        self.created = time.monotonic()
        self.waiting_since: Optional[float] = None
        self.batch: Any = None
        # Node types used: jobs with the same key can run on the same servers.
        self.kind_key: Tuple[str, ...] = tuple(sorted({str(n.get("class_type")) for n in workflow.values() if isinstance(n, dict)}))
        self._on_event = on_event
        self._status = "queued"
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: Optional[JobResult] = None
        self._error: Optional[BaseException] = None
        self._cancel_requested = threading.Event()
        self._inbox: "Optional[queue.Queue[Dict[str, Any]]]" = None
        self._pool: Any = None
        self._last_exec_start: Optional[float] = None
        self._seq = 0  # submission order in its pool
        self._done_callbacks: List[Callable[["Job"], None]] = []

    def __repr__(self) -> str:
        server = self.server.name if self.server else None
        return f"<Job {self.prompt_id} {self._status} on {server}>"

    # -- public -------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the job has ended; False on timeout."""
        return self._done.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> JobResult:
        """Wait for the job and return its :class:`JobResult`, or raise its error.

        Raises :class:`TimeoutError` when ``timeout`` passes first (the job goes on).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.prompt_id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The job's error once it has ended (None when it succeeded)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.prompt_id} not finished after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Cancel the job where it is: dropped locally, deleted from the server's pending queue,
        or interrupted if running (with its ``prompt_id``, so never another client's job).

        Non-blocking; returns False when the job had already ended. ``result()`` then raises
        :class:`JobCancelled`.
        """
        if self._done.is_set():
            return False
        self._cancel_requested.set()
        inbox = self._inbox
        if inbox is not None:
            inbox.put({"type": "_cancel", "data": {}})
        if self._pool is not None:
            self._pool._job_cancel_requested(self)
        return True

    def add_done_callback(self, fn: Callable[["Job"], None]) -> None:
        """Call ``fn(job)`` (on a library thread) once the job has ended, or now if it has."""
        with self._lock:
            if not self._done.is_set():
                self._done_callbacks.append(fn)
                return
        _safe_call(fn, self)

    def download(self, dest_dir: str, *, types: Optional[Sequence[str]] = None) -> List[str]:
        """The job's output files as local paths, in the order of ``result().files`` (waits for
        the job; raises its error).

        ``types`` keeps only files of those types (``("output",)`` leaves out the ``temp``
        files of PreviewImage nodes); all by default. Servers on shared storage (``dir_local``
        set) give mapped local paths without copying; others are fetched with ``/view`` into
        ``dest_dir``. A server-given name that would land outside ``dest_dir`` raises
        :class:`UnsafePathError` before anything is written.
        """
        result = self.result()
        server = self._pool._server_by_name(result.server) if self._pool else self.server
        if server is None:
            raise ComfyClusterError(f"unknown server {result.server}")
        files = [f for f in result.files if types is None or f.type in types]
        return self._pool._download(server, files, dest_dir, tag=result.prompt_id[:8])

    # -- used by the pool ---------------------------------------------------------------------

    def _set_status(self, status: str) -> None:
        with self._lock:
            if not self._done.is_set():
                self._status = status

    def _emit(self, kind: str, server: Optional[str], **fields: Any) -> None:
        event = JobEvent(kind=kind, server=server, prompt_id=self.prompt_id, index=self.index, **fields)
        with self._lock:
            self.events.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the caller's callback must not break the library
                log.exception("on_event callback raised for job %s", self.prompt_id)

    def _finish(self, status: str, *, result: Optional[JobResult] = None, error: Optional[BaseException] = None) -> bool:
        with self._lock:
            if self._done.is_set():
                return False
            self._status = status
            self._result = result
            self._error = error
            callbacks, self._done_callbacks = self._done_callbacks, []
            self._done.set()
        for fn in callbacks:
            _safe_call(fn, self)
        return True


def _safe_call(fn: Callable[[Job], None], job: Job) -> None:
    try:
        fn(job)
    except Exception:
        log.exception("job done-callback failed")


# ---------------------------------------------------------------------------------------------
# One attempt on one server.


@dataclass
class AttemptContext:
    """What an attempt needs from the pool (kept small so attempts are easy to reason about)."""

    client: ComfyClient
    socket: "ServerSocket"
    client_id: str
    position: Callable[[], int]
    reconcile_interval: float = 5.0
    server_lost_after: float = 15.0
    clock: Callable[[], float] = time.monotonic


def _is_server_specific(err: WorkflowError) -> bool:
    """A 400 that another server may not give: a missing node type or a missing model."""
    if err.error_type in ("missing_node_type",):
        return True
    if err.error_type == "invalid_prompt" and "does not exist" in str(err):
        return True
    # A model (or input file) the server lacks: value_not_in_list, or LoadImage's own check
    # ("Invalid image file: x.png"). Another server may have it.
    if err.node_errors and all(
        e.type == "value_not_in_list" or (e.type == "custom_validation_failed" and "Invalid image file" in e.message)
        for e in err.node_errors
    ):
        return True
    return False


def _outputs_from_history(item: Mapping[str, Any]) -> Dict[str, List[OutputFile]]:
    outputs: Dict[str, List[OutputFile]] = {}
    for node, f in iter_output_files(item.get("outputs")):
        outputs.setdefault(node, []).append(OutputFile(f["filename"], f["subfolder"], f["type"], node))
    return outputs


def _history_outcome(item: Mapping[str, Any], job: Job, server: str, started: Optional[float], now: float) -> Outcome:
    status = as_dict(item.get("status"))
    status_str = status.get("status_str")
    messages = as_list(status.get("messages"))
    if status_str == "error":
        for m in messages:
            if isinstance(m, list) and len(m) == 2 and m[0] == "execution_error" and isinstance(m[1], dict):
                return Outcome("failed", error=_job_failed(m[1], job, server))
            if isinstance(m, list) and len(m) == 2 and m[0] == "execution_interrupted":
                return Outcome("cancelled", reason="interrupted")
        return Outcome("failed", error=JobFailed(f"{server}: job {job.prompt_id} ended with an error", prompt_id=job.prompt_id or "", server=server))
    return Outcome(
        "succeeded",
        result_outputs=_outputs_from_history(item),
        exec_seconds=(now - started) if started is not None else None,
    )


def _job_failed(data: Mapping[str, Any], job: Job, server: str) -> JobFailed:
    node_id = data.get("node_id")
    node_type = data.get("node_type")
    exc_type = str(data.get("exception_type") or "")
    exc_msg = str(data.get("exception_message") or "").strip()
    tb = as_list(data.get("traceback"))
    msg = f"{server}: node {node_id} ({node_type}) failed: {exc_type}: {exc_msg}"
    return JobFailed(
        msg,
        prompt_id=job.prompt_id or "",
        server=server,
        node_id=str(node_id) if node_id is not None else None,
        node_type=str(node_type) if node_type is not None else None,
        exception_type=exc_type,
        exception_message=exc_msg,
        traceback=[str(t) for t in tb],
    )


def best_effort_cancel(client: ComfyClient, prompt_id: str, *, running: bool = False) -> None:
    """Delete ``prompt_id`` from the pending queue, and interrupt it if it runs. Errors are
    ignored (the server may be gone).

    ``/interrupt`` is sent only for a job seen running (``running``, or found running in
    ``/queue`` after the delete): servers older than the ``prompt_id`` form of ``/interrupt``
    stop whatever runs, which may be another artist's job.
    """
    try:
        client.delete_pending([prompt_id], timeout=(1.0, 2.0))
        if not running:
            now_running, _ = client.queue(timeout=(1.0, 2.0))
            running = prompt_id in now_running
        if running:
            client.interrupt(prompt_id, timeout=(1.0, 2.0))
    except ComfyClusterError as exc:
        log.debug("cancel of %s on %s: %s", prompt_id, client.server.name, exc)


def run_attempt(job: Job, server: ServerConfig, ctx: AttemptContext, uploads: Callable[[ComfyClient], Dict[str, Any]]) -> Outcome:
    """Run ``job`` once on ``server``; never raises (every ending is an Outcome)."""
    name = server.name
    prompt_id = str(uuid.uuid4())
    inbox: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    sock = ctx.socket
    sock.register(prompt_id, inbox.put)
    job._inbox = inbox
    try:
        if job.cancel_requested:
            return Outcome("cancelled", reason="cancelled before submission")
        try:
            sock.ensure_connected()
        except ServerError as exc:
            return Outcome("retry", reason=_strip(str(exc), name), server_down=True)
        try:
            workflow = uploads(ctx.client)
        except ServerError as exc:
            return Outcome("retry", reason=_strip(str(exc), name), server_down=True)
        except ComfyClusterError as exc:
            return Outcome("failed", error=exc)
        body = {"prompt": workflow, "client_id": ctx.client_id, "prompt_id": prompt_id}
        if job.cancel_requested:
            return Outcome("cancelled", reason="cancelled before submission")
        position = ctx.position()
        try:
            answer = ctx.client.post_prompt(body)
        except WorkflowError as exc:
            if _is_server_specific(exc):
                return Outcome("retry", reason=_strip(str(exc), name), incapable=True, error=exc)
            return Outcome("failed", error=exc)
        except ServerError as exc:
            if "timed out" in str(exc):
                # The server may have taken the job before hanging: make sure no second live
                # copy remains there once we run it elsewhere.
                best_effort_cancel(ctx.client, prompt_id)
            return Outcome("retry", reason=_strip(str(exc), name), server_down=True)
        if answer.get("prompt_id") != prompt_id:
            # An old server that ignores client-chosen ids: follow the id it gave.
            sock.unregister(prompt_id)
            prompt_id = str(answer["prompt_id"])
            sock.register(prompt_id, inbox.put)
        job.prompt_id = prompt_id
        job._emit("submitted", name)
        job._emit("queued", name, position=position)
        return _follow(job, name, prompt_id, inbox, ctx)
    finally:
        sock.unregister(prompt_id)
        job._inbox = None


def _strip(text: str, name: str) -> str:
    return text[len(name) + 2:] if text.startswith(name + ": ") else text


def _follow(job: Job, name: str, prompt_id: str, inbox: "queue.Queue[Dict[str, Any]]", ctx: AttemptContext) -> Outcome:
    """Follow a posted job to its end on ``name``."""
    client = ctx.client
    started: Optional[float] = None
    posted_at = ctx.clock()
    cancel_sent = False
    interrupted = False
    success_seen_at: Optional[float] = None
    success_raw: Optional[Dict[str, Any]] = None
    unreachable_since: Optional[float] = None
    need_reconcile = False
    interval = ctx.reconcile_interval
    while True:
        timeout = interval
        if success_seen_at is not None:
            timeout = 1.0  # the closing "executing: null" is due right after
        if unreachable_since is not None:
            timeout = min(timeout, 0.5)
        if cancel_sent:
            timeout = min(timeout, 0.25)  # watch the job leave the queue
        try:
            msg: Optional[Dict[str, Any]] = inbox.get(timeout=timeout) if not need_reconcile else None
        except queue.Empty:
            msg = None
        kind = msg.get("type") if msg else None
        data = (msg.get("data") if msg else None) or {}

        if job.cancel_requested and not cancel_sent:
            cancel_sent = True
            interrupted = started is not None
            best_effort_cancel(client, prompt_id, running=interrupted)
            need_reconcile = True
            continue

        if msg is None or kind in ("_disconnected", "_reconnected"):
            need_reconcile = False
            try:
                # The queue first, then the history: ComfyUI moves a finished job from one to
                # the other at once, so a job in neither *after* the queue was read is lost.
                # (History first would race a job finishing between the two reads.)
                running, pending = client.queue(timeout=(1.0, 5.0))
                item = None
                if prompt_id not in running and prompt_id not in pending:
                    item = client.history(prompt_id, timeout=(1.0, 5.0))
            except ComfyClusterError as exc:
                now = ctx.clock()
                if unreachable_since is None:
                    unreachable_since = now
                if cancel_sent:
                    return Outcome("cancelled", reason="cancelled (server unreachable)")
                # A refused connection means ComfyUI is not running there (its queue lived in
                # memory): move soon. A time-out may be a passing network fault: wait longer.
                lost_after = ctx.server_lost_after
                if isinstance(exc, ServerError) and exc.fault == "refused":
                    lost_after = min(lost_after, REFUSED_LOST_AFTER)
                if now - unreachable_since >= lost_after:
                    return Outcome("retry", reason=f"stopped answering: {_strip(str(exc), name)}", server_down=True)
                continue
            unreachable_since = None
            if item is not None:
                return _history_outcome(item, job, name, started or posted_at, ctx.clock())
            if prompt_id in running or prompt_id in pending:
                if prompt_id in running and started is None:
                    started = ctx.clock()
                    job._set_status("running")
                if cancel_sent and prompt_id in running and not interrupted:
                    # It started between our delete and our look at the queue: stop it now.
                    interrupted = True
                    best_effort_cancel(client, prompt_id, running=True)
                continue
            if cancel_sent:
                return Outcome("cancelled", reason="cancelled")
            if success_seen_at is not None:
                continue  # history not written yet; look again shortly
            # In neither queue nor history: the server restarted and lost it.
            return Outcome("retry", reason="server restarted and lost the job", server_down=False)

        if kind == "_cancel":
            continue  # handled at the top of the loop on the next pass
        if kind == "_binary":
            frame = msg.get("data") if msg else None
            if isinstance(frame, bytes):
                job._emit("preview", name, data=frame)
            continue
        if kind == "execution_start":
            started = ctx.clock()
            job._last_exec_start = started
            job._set_status("running")
            job._emit("started", name, raw=data)
        elif kind == "execution_cached":
            nodes = as_list(data.get("nodes"))
            job._emit("cached", name, nodes=tuple(str(n) for n in nodes), raw=data)
        elif kind == "executing":
            node = data.get("node")
            if node is None:
                outcome = _finish_from_history(job, name, prompt_id, ctx, started or posted_at)
                outcome.raw = success_raw
                return outcome
            job._emit("executing", name, node=str(node), raw=data)
        elif kind == "progress":
            v, m = data.get("value"), data.get("max")
            if isinstance(v, (int, float)) and isinstance(m, (int, float)):
                job._emit("progress", name, node=str(data.get("node")), value=float(v), max=float(m), raw=data)
        elif kind == "executed":
            node = str(data.get("node"))
            files = tuple(
                OutputFile(f["filename"], f["subfolder"], f["type"], node)
                for _, f in iter_output_files({node: data.get("output")})
            )
            job._emit("output", name, node=node, files=files, raw=data)
        elif kind == "execution_success":
            success_seen_at = ctx.clock()
            success_raw = data
        elif kind == "execution_error":
            return Outcome("failed", error=_job_failed(data, job, name), raw=data)
        elif kind == "execution_interrupted":
            return Outcome("cancelled", reason="cancelled" if cancel_sent or job.cancel_requested else "interrupted on the server", raw=data)


def _finish_from_history(job: Job, name: str, prompt_id: str, ctx: AttemptContext, started: float) -> Outcome:
    deadline = ctx.clock() + 10.0
    delay = 0.05
    while True:
        try:
            item = ctx.client.history(prompt_id, timeout=(1.0, 10.0))
        except ComfyClusterError as exc:
            return Outcome("retry", reason=f"history unreadable: {_strip(str(exc), name)}", server_down=True)
        if item is not None:
            return _history_outcome(item, job, name, started, ctx.clock())
        if ctx.clock() >= deadline:
            return Outcome("retry", reason="finished job missing from history")
        time.sleep(delay)  # history is written just before the done signal; rarely needed
        delay = min(delay * 2, 1.0)
