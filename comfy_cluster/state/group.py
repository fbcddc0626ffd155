"""``GroupCommit``: the store's writes, many to one transaction (group commit).

Every write of the gateway's state goes through one queue per store. A thread of its own
takes everything queued so far (up to ``max_batch``), runs each write in one transaction and
commits once; then each caller is told, through its own
:class:`concurrent.futures.Future`. A write asked while a commit runs waits for the next
commit, which also carries every write asked meanwhile: under load a commit (one ``fsync``
on a durable database, one round trip per statement plus one for ``COMMIT``) is shared by
all the requests that came in while the previous one ran, and nobody is answered before
the commit that holds their row. Writes run in the order they were asked.

A write that refuses (raises :class:`Refused`, having written nothing) fails alone; the
others in its batch are committed. Any other failure rolls the batch back and each of its
writes is run again in a transaction of its own, so one bad write never fails another.
A failure that may pass (a deadlock, a lost connection, a busy SQLite file) is tried again
after :data:`RETRY_DELAYS`.

A *lazy* write (:func:`submit_lazy`: one nobody waits for, such as a job's "running" state)
causes no commit of its own: it rides with the next write someone waits for, or is
committed ``lazy_delay`` seconds after it was asked (a crash may lose it; it restates what
the process knows and can find out again). A lazy write *about* something (a prompt) that
a later write of the same batch *ends* (deletes) is not run at all.

Writes are decorated methods (:func:`batched`): ``method(self, conn, *args)`` is called as
``obj.method(*args)`` (blocking: returns once committed) or queued without waiting with
``submit(obj.method, *args)``. An object may have several *lanes* (``obj.lane(name)``), each
a group commit of its own: a lane's writes never wait behind another lane's (on PostgreSQL
they run at the same time, on connections of their own), and are ordered within it only.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import threading
import time
from typing import Any, Callable, ContextManager, Deque, Dict, List, Optional, Tuple, TypeVar

from sqlalchemy.engine import Connection

__all__ = ["GroupCommit", "Refused", "batched", "defer", "submit", "submit_lazy", "transient", "RETRY_DELAYS", "MAIN"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_here = threading.local()  # .group: the GroupCommit whose transaction runs on this thread

#: The lane of a write unless it names another.
MAIN = "main"

#: Seconds between tries of a write that failed for a passing reason: 5 tries in about 6 s,
#: then the write fails (its caller is told).
RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2)


class Refused(RuntimeError):
    """Raised by a write that wrote nothing (a check found it must not): it fails alone,
    the rest of its batch is committed."""


def transient(exc: BaseException) -> bool:
    """Whether a database error may pass if the write is tried again."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    text = str(exc).lower()
    return bool(exc.connection_invalidated or "deadlock" in text or "could not serialize" in text or "database is locked" in text)


class _Entry:
    __slots__ = ("op", "args", "kwargs", "future", "lazy", "asked")

    def __init__(self, op: Callable[..., Any], args: Tuple[Any, ...], kwargs: Any, lazy: bool = False) -> None:
        self.op, self.args, self.kwargs, self.lazy = op, args, kwargs, lazy
        self.asked = time.monotonic()
        self.future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()

    def run(self, conn: Connection) -> Any:
        return self.op(self.args[0], conn, *self.args[1:], **self.kwargs)


class GroupCommit:
    """Writes queued by any thread, committed together by one thread (see the module
    docstring). ``begin()`` opens one write transaction (committed when its block ends)."""

    def __init__(self, begin: Callable[[], ContextManager[Connection]], *, max_batch: int = 128, lazy_delay: float = 0.5,
                 retry_delays: Tuple[float, ...] = RETRY_DELAYS, name: str = "comfy-cluster-state-commit") -> None:
        self._begin = begin
        self._lazy_delay = lazy_delay
        self._eager = 0  # queued writes that are not lazy
        self._max_batch = max_batch
        self._retry_delays = retry_delays
        self._name = name
        self._cond = threading.Condition()
        self._queue: Deque[_Entry] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._busy = False  # a commit runs (on the thread, or inline in run())
        self._closed = False
        # Items ops handed over for one statement at the end of their transaction (defer()).
        self._deferred: Dict[str, List[Any]] = {}
        self._flushers: Dict[str, Callable[[Connection, List[Any]], None]] = {}
        #: Transactions committed and writes they carried (for tests and /metrics).
        self.commits = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"<GroupCommit {len(self._queue)} queued, {self.writes} writes in {self.commits} commits>"

    def on_flush(self, key: str, flush: Callable[[Connection, List[Any]], None]) -> None:
        """``flush(conn, items)`` runs before each commit that has items deferred under
        ``key`` (in the order they were deferred)."""
        self._flushers[key] = flush

    @property
    def load(self) -> int:
        """Writes queued or being committed (to pick the least busy of several lanes)."""
        return len(self._queue) + self._busy

    def defer(self, key: str, item: Any) -> None:
        """From inside a write: hand ``item`` to the flusher of ``key``, which sends all of
        this transaction's items in one statement just before the commit."""
        self._deferred.setdefault(key, []).append(item)

    def _flush(self, conn: Connection) -> None:
        deferred, self._deferred = self._deferred, {}
        for key, items in deferred.items():
            self._flushers[key](conn, items)

    def submit(self, op: Callable[..., T], obj: Any, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        """Queue ``op(obj, conn, *args, **kwargs)``; its future is done once committed."""
        return self._enqueue(_Entry(op, (obj, *args), kwargs))

    def submit_lazy(self, op: Callable[..., T], obj: Any, *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        """As :meth:`submit`, committed with the next write that is not lazy (or after
        ``lazy_delay`` seconds)."""
        return self._enqueue(_Entry(op, (obj, *args), kwargs, lazy=True))

    def _enqueue(self, entry: _Entry) -> "concurrent.futures.Future[Any]":
        with self._cond:
            if self._closed:
                raise RuntimeError("the state store is closed")
            self._queue.append(entry)
            self._eager += not entry.lazy
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            # A lazy write behind others needs no wake-up: the thread already waits until the
            # first of them is due (an earlier deadline), or commits soon anyway. Waking it
            # for each would cost a thread switch per write on every job's path.
            if not entry.lazy or len(self._queue) == 1:
                self._cond.notify_all()
        return entry.future

    def run(self, op: Callable[..., T], obj: Any, *args: Any, **kwargs: Any) -> T:
        """``op(obj, conn, ...)`` committed (blocking); its exception raised here. With
        no commit running and nothing but lazy writes queued, the calling thread commits it
        (with those) itself: no hand-over to the commit thread and back."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a batched write cannot wait for another from inside a commit")
        entry = _Entry(op, (obj, *args), kwargs)
        with self._cond:
            inline = not self._busy and not self._eager and len(self._queue) < self._max_batch and not self._closed
            if inline:
                self._busy = True
                batch = list(self._queue) + [entry]
                self._queue.clear()
        if not inline:
            return self._enqueue(entry).result()
        try:
            self._commit([e for e in batch if e.future.set_running_or_notify_cancel()])
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return entry.future.result()

    def flush(self) -> None:
        """Return once every write queued before this call is done."""
        if self._thread is not None and not self._closed:
            self.run(_nothing, None)

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the commit thread --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._queue and not self._busy:
                        wait = 0.0 if self._eager else self._queue[0].asked + self._lazy_delay - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                while self._busy:  # closing: the inline commit ends first
                    self._cond.wait()
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                self._eager -= sum(not e.lazy for e in batch)
                self._busy = True
            try:
                self._commit([e for e in batch if e.future.set_running_or_notify_cancel()])
            finally:
                with self._cond:
                    self._busy = False

    @staticmethod
    def _superseded(batch: List[_Entry]) -> List[_Entry]:
        """``batch`` without the lazy writes about what a later write in it ends (they are
        told done: what they would write is deleted in the same commit)."""
        ended: set = set()
        keep: List[_Entry] = []
        for entry in reversed(batch):
            about = getattr(entry.op, "batched_about", None)
            key = about(*entry.args, **entry.kwargs) if about is not None else None
            if entry.lazy and key is not None and key in ended:
                entry.future.set_result(None)
                continue
            if key is not None and getattr(entry.op, "batched_ends", False):
                ended.add(key)
            keep.append(entry)
        keep.reverse()
        return keep

    def _commit(self, batch: List[_Entry]) -> None:
        batch = self._superseded(batch)
        if not batch:
            return
        done: List[Tuple[_Entry, bool, Any]] = []
        self._deferred = {}
        _here.group = self
        try:
            with self._begin() as conn:
                for entry in batch:
                    try:
                        done.append((entry, True, entry.run(conn)))
                    except Refused as exc:
                        done.append((entry, False, exc))
                self._flush(conn)
        except Exception as exc:  # noqa: BLE001 - each write again on its own, so one bad write fails alone
            if len(batch) > 1 or transient(exc):
                log.debug("gateway state: a batch of %d write(s) failed (%s); each on its own", len(batch), exc)
                for entry in batch:
                    self._alone(entry)
            else:
                batch[0].future.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(batch)
        for entry, ok, value in done:
            if ok:
                entry.future.set_result(value)
            else:
                entry.future.set_exception(value)

    def _alone(self, entry: _Entry) -> None:
        """One write in a transaction of its own, tried again while its failure may pass."""
        for delay in (*self._retry_delays, None):
            self._deferred = {}
            _here.group = self
            try:
                with self._begin() as conn:
                    value = entry.run(conn)
                    self._flush(conn)
            except Exception as exc:  # noqa: BLE001 - told to the write's caller
                if delay is None or not transient(exc):
                    entry.future.set_exception(exc)
                    return
                log.warning("gateway state: %s failed (%s); trying again in %.1f s", getattr(entry.op, "__name__", entry.op),
                            str(exc).splitlines()[0], delay)
                time.sleep(delay)
                continue
            self.commits += 1
            self.writes += 1
            entry.future.set_result(value)
            return


def defer(key: str, item: Any) -> None:
    """From inside a write: :meth:`GroupCommit.defer` on the group committing it."""
    group = getattr(_here, "group", None)
    if group is None:
        raise RuntimeError("defer() is for a batched write, inside its commit")
    group.defer(key, item)


def batched(op: Optional[Callable[..., T]] = None, *, lane: str = MAIN, lazy: bool = False, wait: bool = True,
            about: Optional[Callable[..., Optional[str]]] = None, ends: bool = False) -> Any:
    """Decorator (``@batched`` or ``@batched(lane=..., lazy=..., wait=..., about=..., ends=...)``)
    for a write ``op(self, conn, *args)`` of an object whose ``lane(name)`` is a
    :class:`GroupCommit`: ``obj.op(*args)`` queues it in that lane and returns once committed
    (``wait=False``: returns at once, a failure logged); :func:`submit` queues it without
    waiting (``lazy``: as a lazy write, see the module docstring). ``about(self, *args,
    **kwargs)`` names what the write is about; ``ends``: it deletes that."""

    def wrap(op: Callable[..., T]) -> Callable[..., T]:
        op.batched_about = about  # type: ignore[attr-defined]
        op.batched_ends = ends  # type: ignore[attr-defined]

        @functools.wraps(op)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not wait:
                future = (self.lane(lane).submit_lazy if lazy else self.lane(lane).submit)(op, self, *args, **kwargs)
                future.add_done_callback(_log_failure)
                return None
            return self.lane(lane).run(op, self, *args, **kwargs)

        method.batched_op = op  # type: ignore[attr-defined]
        method.batched_lane = lane  # type: ignore[attr-defined]
        method.batched_lazy = lazy  # type: ignore[attr-defined]
        return method

    return wrap(op) if op is not None else wrap


def _log_failure(future: "concurrent.futures.Future[Any]") -> None:
    exc = future.exception()
    if exc is not None:
        log.error("gateway state write failed: %s", exc, exc_info=exc)


def is_batched(fn: Any) -> bool:
    """Whether ``fn`` is a bound :func:`batched` write."""
    return hasattr(fn, "batched_op") and hasattr(fn, "__self__")


def submit(method: Callable[..., T], *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
    """Queue a bound :func:`batched` write in its lane without waiting (lazily if it was
    declared lazy); its future is done once committed."""
    lane, op, obj = _parts(method)
    if method.batched_lazy:  # type: ignore[attr-defined]
        return lane.submit_lazy(op, obj, *args, **kwargs)
    return lane.submit(op, obj, *args, **kwargs)


def submit_lazy(method: Callable[..., T], *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
    """As :func:`submit`, a lazy write (see the module docstring)."""
    lane, op, obj = _parts(method)
    return lane.submit_lazy(op, obj, *args, **kwargs)


def _parts(method: Callable[..., Any]) -> Tuple[GroupCommit, Callable[..., Any], Any]:
    """``(lane, op, object)`` of a bound :func:`batched` write."""
    if not is_batched(method):
        raise TypeError(f"{getattr(method, '__qualname__', method)} is not a batched write")
    obj = method.__self__  # type: ignore[attr-defined]
    return obj.lane(method.batched_lane), method.batched_op, obj  # type: ignore[attr-defined]


def _nothing(_obj: Any, _conn: Connection) -> None:
    """A write that writes nothing (:meth:`GroupCommit.flush`)."""
