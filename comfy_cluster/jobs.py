"""Jobs: one workflow run on the cluster, as the caller sees it (modelled on a Future).

A :class:`Job` is made by :meth:`ServerPool.submit`. The pool's dispatcher gives it a server
when one has room; a runner thread then makes one *attempt* there
(:mod:`comfy_cluster.attempt`, :mod:`comfy_cluster.runner`). A job that must move goes back
to the queue; at most ``retries`` moves. State changes happen under the job's one condition.

A job's end works as a ``concurrent.futures.Future``'s does: the library thread that decides
it sets the final state, records the terminal event and sets the done event under the job's
lock, and only then queues the user callbacks (``on_event``, done-callbacks) on the pool's
callback thread. Nothing of the library waits for a callback, so a callback may call
``result()``, ``wait()``, ``download()``, ``cancel()`` or ``submit()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from .errors import ComfyClusterError, JobCancelled
from .reports import EVENT_KINDS, JOB_STATES, TERMINAL_KINDS, JobEvent, JobResult, OutputFile
from .server_config import ServerConfig
from .warm import Warmth, warmth_of

if TYPE_CHECKING:  # pragma: no cover
    from typing import Protocol

    from .callbacks import CallbackExecutor

    class Attempt(Protocol):
        """What a job reads of an attempt (:class:`comfy_cluster.attempt.Attempt`)."""

        server: str
        prompt_id: str

# The value types a job reports live in reports.py; they are imported from here as well.
__all__ = ["Job", "JobControl", "JobEvent", "JobResult", "OutputFile", "JOB_STATES", "EVENT_KINDS", "TERMINAL_KINDS"]

#: ``download(server name, files, dest_dir, tag)``: the pool's way of fetching a job's outputs.
Downloader = Callable[[str, Sequence["OutputFile"], str, str], List[str]]

log = logging.getLogger(__name__)

class Job:
    """One workflow run on the cluster. Created by :meth:`ServerPool.submit`; thread-safe.

    ``status`` is one of ``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``.
    ``prompt_id`` is the id of the current (or last) attempt that reached a server: each
    attempt uses a fresh id, so a copy left on a failed server can never be mistaken for it.
    ``attempts`` counts the attempts made, ``tried`` names their servers in order,
    ``failures`` holds ``(server, reason)`` for each attempt that had to move.
    """

    def __init__(
        self,
        workflow: Dict[str, Any],
        *,
        inputs: Optional[Dict[str, str]] = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        index: Optional[int] = None,
        owner: Optional[str] = None,
    ) -> None:
        self.workflow = workflow
        self.inputs: Dict[str, str] = dict(inputs or {})
        self.retries = retries
        self.index = index
        self.owner = owner
        self.events: List[JobEvent] = []
        self.created = time.monotonic()
        self.batch: Any = None
        self._on_event = on_event
        #: ``fn(prompt_id, server, phase)``, called inline: ``"reserved"`` before each POST
        #: (an exception stops the POST), ``"ended"`` once that copy's end is confirmed.
        self._on_attempt: Optional[Callable[[str, str, str], None]] = None
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._status = "queued"
        self._final = False
        self._attempt: "Optional[Attempt]" = None
        self._history: "List[Attempt]" = []
        self._failures: List[Tuple[str, str]] = []
        self._prompt_id: Optional[str] = None
        self._server: Optional[ServerConfig] = None
        self._result: Optional[JobResult] = None
        self._error: Optional[BaseException] = None
        self._done_callbacks: List[Callable[["Job"], None]] = []
        self._end_listeners: List[Callable[["Job"], None]] = []
        # Set under _cond in the same step that makes the job final (never by user code's
        # thread): result() never waits for a callback.
        self._done = threading.Event()
        self._last_preview: Optional[JobEvent] = None
        self._cancel_requested = threading.Event()
        self._inbox: "Optional[queue.Queue[Dict[str, Any]]]" = None
        # Set by the JobControl the pool makes with the job (None: a job outside a pool).
        self._executor: "Optional[CallbackExecutor]" = None
        self._on_cancel: Optional[Callable[[], None]] = None
        self._downloader: Optional[Downloader] = None
        self._last_exec_start: Optional[float] = None

    def __repr__(self) -> str:
        with self._cond:
            where = f" on {self._server.name}" if self._server is not None and not self._final else ""
            attempt = f" attempt {len(self._history) + (self._attempt is not None)}/{self.retries + 1}" if self._history or self._attempt else ""
            return f"<Job {(self._prompt_id or '-')[:8]} {self._status}{attempt}{where}>"

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

    @property
    def prompt_id(self) -> Optional[str]:
        return self._prompt_id

    @property
    def server(self) -> Optional[ServerConfig]:
        """The server of the current (or last) attempt."""
        return self._server

    @property
    def attempts(self) -> int:
        with self._cond:
            return len(self._history) + (self._attempt is not None)

    @property
    def tried(self) -> List[str]:
        """Servers tried, in order, each once."""
        with self._cond:
            names = [a.server for a in self._history] + ([self._attempt.server] if self._attempt else [])
        return list(dict.fromkeys(names))

    @property
    def failures(self) -> List[Tuple[str, str]]:
        with self._cond:
            return list(self._failures)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the job has ended; False on timeout. Once it returns True the job's
        state, result and ``events`` (terminal event included) are final; its ``on_event``
        calls and done-callbacks may still be running on the pool's callback thread."""
        return self._done.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> JobResult:
        """Wait for the job and return its :class:`JobResult`, or raise its error.

        Raises :class:`TimeoutError` when ``timeout`` passes first (the job goes on).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self._prompt_id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        """The job's error once it has ended (None when it succeeded)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self._prompt_id} not finished after {timeout} s")
        return self._error

    def cancel(self) -> bool:
        """Cancel the job where it is: ended at once while it waits locally; deleted from the
        server's pending queue, or interrupted if the server's queue shows it running (by its
        ``prompt_id``, so never another client's job).

        Non-blocking. Returns True when the job will end ``cancelled``: ``result()`` raises
        :class:`JobCancelled` once the copy on the server is gone (or, if the server cannot be
        reached, after the loss window; the copy is then removed when it answers again), even
        if the server finished the job before the cancel reached it (its outputs are then not
        used; the ``cancelled`` event's reason says so). Returns False when the job had
        already ended: its status stays what it was.
        """
        if not self._mark_cancel():
            return False
        self._notify_cancel()
        return True

    def _mark_cancel(self) -> bool:
        """Batch cancel, phase one: flag the job (so its siblings' runners see it too)."""
        with self._cond:
            if self._final:
                return False
            self._cancel_requested.set()
            return True

    def _notify_cancel(self) -> None:
        """Batch cancel, phase two: wake whoever holds the job."""
        inbox = self._inbox
        if inbox is not None:
            inbox.put({"type": "_cancel", "data": {}})
        if self._on_cancel is not None:
            self._on_cancel()

    def add_done_callback(self, fn: Callable[["Job"], None]) -> None:
        """Call ``fn(job)`` on the pool's callback thread once the job has ended (queued at
        once if it has), after every ``on_event`` call of the job. A callback that raises is
        logged and ignored. After ``pool.close()`` a callback added to an ended job runs on
        the calling thread."""
        inline: List[Tuple[Callable[..., Any], Any]] = []
        with self._cond:
            if not self._final:
                self._done_callbacks.append(fn)
                return
            self._queue_user(fn, self, inline)
        _run_inline(inline)

    def download(
        self, dest_dir: str, *, types: Optional[Sequence[str]] = None, files: Optional[Sequence[OutputFile]] = None
    ) -> List[str]:
        """The job's output files as local paths, in the order of ``result().files`` (waits for
        the job; raises its error).

        ``types`` keeps only files of those types (``("output",)`` leaves out the ``temp``
        files of PreviewImage nodes); all by default. ``files`` names the files instead, from
        the server that ran the job: for nodes that write files without reporting them
        (ComfyUI-HQ-Image-Save's SaveEXR), whose names the caller chose. Servers on shared
        storage (``dir_local`` set) give mapped local paths without copying; others are
        fetched with ``/view`` into ``dest_dir``. A name that would land outside ``dest_dir``
        raises :class:`UnsafePathError` before anything is written.
        """
        result = self.result()
        if self._downloader is None:
            raise ComfyClusterError(f"job {result.prompt_id} belongs to no pool: nothing to download with")
        chosen = result.files if files is None else list(files)
        files = [f for f in chosen if types is None or f.type in types]
        return self._downloader(result.server, files, dest_dir, result.prompt_id[:8])

    # -- used by the pool (the dispatcher, runners and the pool's bookkeeping) -----------------

    def _claim(self, attempt: "Attempt", server: ServerConfig) -> bool:
        """Dispatcher only: make ``attempt`` the current one. False (nothing changed) when the
        job has ended or a cancel was requested."""
        with self._cond:
            if self._final or self._cancel_requested.is_set() or self._attempt is not None:
                return False
            self._attempt = attempt
            self._server = server
            return True

    def _posted(self, attempt: "Attempt") -> None:
        """Runner only: the server took ``attempt``."""
        with self._cond:
            self._prompt_id = attempt.prompt_id

    def _holder(self) -> Optional[str]:
        """The server holding the job's current attempt (its POST taken there), else None:
        waiting in the pool's queue (moved off a server too), being sent, or ended."""
        with self._cond:
            attempt = self._attempt  # None once final (_finish clears it)
            if attempt is None or self._prompt_id != attempt.prompt_id:
                return None
            return attempt.server

    def _started(self, at: float) -> None:
        """Runner only: the job runs on its server now."""
        with self._cond:
            self._last_exec_start = at
            if not self._final:
                self._status = "running"

    def _attempt_ended(self, attempt: "Attempt", failure: Optional[Tuple[str, str]] = None) -> None:
        """Pool only: ``attempt`` is over (moved: ``failure`` says why); the job is queued."""
        with self._cond:
            if self._attempt is attempt:
                self._attempt = None
            if not any(a is attempt for a in self._history):  # _finish may have filed it already
                self._history.append(attempt)
            if failure is not None:
                self._failures.append(failure)
            if not self._final:
                self._status = "queued"

    def _note_attempt(self, attempt: "Attempt", phase: str) -> None:
        """Tell ``on_attempt`` about ``attempt`` (inline, on the library thread that knows).
        A failure to note an end is logged, never raised: the end stands."""
        fn = self._on_attempt
        if fn is None:
            return
        if phase == "reserved":
            fn(attempt.prompt_id, attempt.server, phase)
            return
        try:
            fn(attempt.prompt_id, attempt.server, phase)
        except Exception:  # noqa: BLE001 - the copy's end is confirmed whatever its record says
            log.exception("on_attempt failed for %s on %s", attempt.prompt_id, attempt.server)

    def _emit(self, kind: str, server: Optional[str], **fields: Any) -> None:
        """Record a non-terminal event and queue it for ``on_event``. Dropped once the job is
        final: the terminal event is always a job's last. ``job.events`` keeps only the last
        ``preview`` (every frame still reaches ``on_event``): a long job's previews would
        otherwise hold megabytes per job."""
        inline: List[Tuple[Callable[..., Any], Any]] = []
        with self._cond:
            if self._final:
                return
            event = JobEvent(kind=kind, server=server, prompt_id=self._prompt_id, index=self.index, **fields)
            if kind == "preview":
                old = self._last_preview
                # By identity, from the end (it is usually among the last few): list.remove
                # would compare every event field by field, frame bytes included.
                for i in range(len(self.events) - 1, -1, -1):
                    if self.events[i] is old:
                        del self.events[i]
                        break
                self._last_preview = event
            self.events.append(event)
            if self._on_event is not None:
                self._queue_user(self._on_event, event, inline, droppable=True)
        _run_inline(inline)

    def _queue_user(self, fn: Callable[..., Any], arg: Any, inline: List[Tuple[Callable[..., Any], Any]], *, droppable: bool = False) -> None:
        """Queue user code on the callback thread (lock held, so a job's calls keep their
        order); what the executor cannot take (none, or closed) goes to ``inline``, run by
        the caller once it has released the lock."""
        executor = self._executor
        if executor is None or not executor.submit(fn, arg, droppable=droppable):
            if not droppable or executor is None:
                inline.append((fn, arg))

    def _add_end_listener(self, fn: Callable[["Job"], None]) -> None:
        """Library code (a batch's bookkeeping) called inline when the job becomes final."""
        with self._cond:
            if not self._final:
                self._end_listeners.append(fn)
                return
        fn(self)

    def _finish(
        self,
        status: str,
        server: Optional[str] = None,
        *,
        result: Optional[JobResult] = None,
        error: Optional[BaseException] = None,
        reason: Optional[str] = None,
        raw: Optional[Dict[str, Any]] = None,
    ) -> bool:
        """Make the job final and record its one terminal event; False (nothing changed, no
        event) if it already was. Called by whichever library thread decides the end.

        Under the job's lock: the state, the terminal event and the done event (waiters wake
        now, whatever the callback thread is doing); then the terminal ``on_event`` call and
        the done-callbacks are queued, in that order. A job whose ``cancel()`` returned True
        ends ``cancelled`` even if its server finished it first (``cancel()``'s promise)."""
        inline: List[Tuple[Callable[..., Any], Any]] = []
        with self._cond:
            if self._final:
                return False
            if self._cancel_requested.is_set() and status != "cancelled":
                what = f"it had succeeded on {server} first" if status == "succeeded" else f"it had failed first: {error}"
                status, result, error, reason = "cancelled", None, None, f"cancelled ({what}; its outputs are not used)"
            if status == "cancelled" and not isinstance(error, JobCancelled):
                error = JobCancelled(f"job {self._prompt_id or '(not submitted)'} {reason or 'cancelled'}", prompt_id=self._prompt_id or "", server=server)
            if status == "failed" and reason is None:
                reason = str(error)
            self._final = True
            self._status = status
            self._result = result
            self._error = error
            if self._attempt is not None:  # ended while an attempt was current (close()): still made
                self._history.append(self._attempt)
            self._attempt = None
            event = JobEvent(kind=status, server=server, prompt_id=self._prompt_id, index=self.index, reason=reason if status != "succeeded" else None, raw=raw)
            self.events.append(event)
            self._done.set()
            listeners, self._end_listeners = self._end_listeners, []
            callbacks, self._done_callbacks = self._done_callbacks, []
            if self._on_event is not None:
                self._queue_user(self._on_event, event, inline)
            for fn in callbacks:
                self._queue_user(fn, self, inline)
        for listener in listeners:
            try:
                listener(self)
            except Exception:
                log.exception("end listener failed for job %s", self._prompt_id)
        _run_inline(inline)
        return True


class JobControl:
    """The library's side of one :class:`Job`, as ``Future.set_result`` is an executor's.

    The pool makes it with the job; the scheduler queues it, each attempt and the batch hold
    it, and every change of the job's state goes through it. The caller holds only the
    :class:`Job`. Each method says which part may call it. The scheduler's own per-job state
    (servers found unable to run it, its outage clock, its memo of capability answers) lives
    here too, not on the caller's object.
    """

    def __init__(
        self,
        job: Job,
        *,
        seq: int = 0,
        executor: "Optional[CallbackExecutor]" = None,
        on_cancel: Optional[Callable[[], None]] = None,
        download: Optional[Downloader] = None,
        warmth: Optional[Warmth] = None,
    ) -> None:
        self.job = job
        self.seq = seq  # submission order in its pool (fair share breaks ties by it)
        job._executor = executor
        job._on_cancel = on_cancel
        job._downloader = download
        self.incapable: Set[str] = set()  # servers lacking a node type or model it needs
        self.last_error: Optional[ComfyClusterError] = None
        # The scheduler's: since when no server could take it, its capability answers
        # (capabilities version, answers) and its dispatch key memo.
        self.no_server_since: Optional[float] = None
        self.caps: Tuple[int, Dict[str, Optional[str]]] = (-1, {})
        self.key_memo: Optional[Tuple[Any, Any]] = None
        self._warmth = warmth

    def __repr__(self) -> str:
        return f"<JobControl {self.job!r}>"

    # -- read by the scheduler and the runners -------------------------------------------------

    @property
    def owner(self) -> Optional[str]:
        return self.job.owner

    @property
    def batch(self) -> Any:
        return self.job.batch

    @property
    def cancel_requested(self) -> bool:
        return self.job.cancel_requested

    @property
    def warmth(self) -> Warmth:
        """What the job leaves loaded and cached on its server (worked out once)."""
        if self._warmth is None:
            self._warmth = warmth_of(self.job.workflow)
        return self._warmth

    @property
    def final(self) -> bool:
        """Whether the job's end is decided (and its waiters woken: the same step)."""
        return self.job._final

    @property
    def last_exec_start(self) -> Optional[float]:
        """When an attempt of it was last seen starting to execute (the runner's clock)."""
        return self.job._last_exec_start

    @property
    def holder(self) -> Optional[str]:
        """The server that holds the job now (queued or running there), else None."""
        return self.job._holder()

    # -- state changes -------------------------------------------------------------------------

    def claim(self, attempt: "Attempt", server: ServerConfig) -> bool:
        """Scheduler only: see :meth:`Job._claim`."""
        return self.job._claim(attempt, server)

    def posted(self, attempt: "Attempt") -> None:
        """Runner only: the server took ``attempt``."""
        self.job._posted(attempt)

    def started(self, at: float) -> None:
        """Runner only: the job runs on its server now."""
        self.job._started(at)

    def note_attempt(self, attempt: "Attempt", phase: str) -> None:
        """Runners and the ledger: see :meth:`Job._note_attempt`."""
        self.job._note_attempt(attempt, phase)

    def attach_inbox(self, inbox: "Optional[queue.Queue[Dict[str, Any]]]") -> None:
        """Runner only: where a cancel request is posted while the runner follows the job."""
        self.job._inbox = inbox

    def attempt_ended(self, attempt: "Attempt", failure: Optional[Tuple[str, str]] = None) -> None:
        """Runners only: see :meth:`Job._attempt_ended`."""
        self.job._attempt_ended(attempt, failure)

    def emit(self, kind: str, server: Optional[str], **fields: Any) -> None:
        """Record an event and queue it for the caller's ``on_event``."""
        self.job._emit(kind, server, **fields)

    # One terminal event per job: each of these is a no-op (no event) for a job already final,
    # so a late runner or close() cannot report a job twice (see Job._finish).

    def succeed(self, server: str, result: JobResult, raw: Optional[Dict[str, Any]] = None) -> bool:
        """The runner that saw the job succeed: its end and last event."""
        return self.job._finish("succeeded", server, result=result, raw=raw)

    def fail(self, server: Optional[str], error: BaseException, raw: Optional[Dict[str, Any]] = None) -> bool:
        """The part that decided the job cannot succeed: its end and last event."""
        return self.job._finish("failed", server, error=error, raw=raw)

    def cancelled(self, server: Optional[str], reason: str, raw: Optional[Dict[str, Any]] = None) -> bool:
        """The part that saw the job's cancel through (or the pool closing)."""
        return self.job._finish("cancelled", server, reason=reason, raw=raw)

    def add_end_listener(self, fn: Callable[[Job], None]) -> None:
        """Library code (a batch's bookkeeping): see :meth:`Job._add_end_listener`."""
        self.job._add_end_listener(fn)

    def mark_cancel(self) -> bool:
        """Batch cancel, phase one: see :meth:`Job._mark_cancel`."""
        return self.job._mark_cancel()

    def notify_cancel(self) -> None:
        """Batch cancel, phase two: see :meth:`Job._notify_cancel`."""
        self.job._notify_cancel()


def _run_inline(calls: List[Tuple[Callable[..., Any], Any]]) -> None:
    """User calls the callback thread could not take, on the calling thread (no lock held)."""
    for fn, arg in calls:
        try:
            fn(arg)
        except Exception:  # the caller's callback must not break the library
            log.exception("callback %s raised", getattr(fn, "__qualname__", fn))
