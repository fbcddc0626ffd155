"""CallbackExecutor: the one thread of a pool that runs user code.

Event callbacks (``on_event``) and done-callbacks are user code: slow, raising, or even calling
``sys.exit``. Run on a runner, the dispatcher or a websocket reader, one slow callback would
stall every job and one raising ``SystemExit`` would kill a library thread, leaving its job
unended. So the library only *queues* calls here, after it has recorded what they report (a
job is final and done before its terminal event is queued); one thread runs them in the order
queued, and nothing they do, taking long included, holds the library.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Optional, Tuple

__all__ = ["CallbackExecutor"]

log = logging.getLogger(__name__)

Call = Tuple[Callable[..., Any], Tuple[Any, ...], bool]  # (fn, args, droppable)


class CallbackExecutor:
    """Runs queued calls in order on one daemon thread, started on first use.

    ``submit`` never blocks and never runs the call on the caller's thread. Nothing of the
    library waits for a call here (a job is done before its callbacks are queued), so a call
    may block on anything the library does. :meth:`close` lets the thread run what is queued
    for at most ``drain_seconds``; if a call is still running then (user code that does not
    return), the *droppable* calls (progress events) still queued are dropped and the others
    (terminal events, done-callbacks) stay queued: the thread runs them once that call
    returns, then ends. ``close`` itself never waits longer.
    """

    def __init__(self, name: str = "comfy-cluster-callbacks") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._calls: Deque[Call] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any, droppable: bool = False) -> bool:
        """Queue ``fn(*args)``; True when queued (or, ``droppable`` after close, dropped).
        False after close once the thread has ended: the caller runs the call itself."""
        with self._cond:
            if self._closed:
                if droppable:
                    return True  # progress after close: may be dropped
                if self._thread is None:
                    return False
            self._calls.append((fn, args, droppable))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self._cond.wait()
                if not self._calls:
                    self._thread = None  # under the lock: a later submit knows we are gone
                    return
                fn, args, _ = self._calls.popleft()
            _run_one(fn, args)

    def close(self, drain_seconds: float = 2.0) -> None:
        """Run what is queued (waiting at most ``drain_seconds``), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout=drain_seconds)
        if thread.is_alive():
            with self._cond:
                kept = collections.deque(c for c in self._calls if not c[2])
                dropped = len(self._calls) - len(kept)
                self._calls = kept
            log.warning(
                "a callback is still running after %.1f s: %d progress call(s) dropped, %d terminal event/done "
                "call(s) left to run once it returns", drain_seconds, dropped, len(kept),
            )


def _run_one(fn: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except BaseException:  # SystemExit and KeyboardInterrupt too: user code must not end us
        log.exception("callback %s raised", getattr(fn, "__qualname__", fn))
