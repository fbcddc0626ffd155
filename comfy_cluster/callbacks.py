"""CallbackExecutor: the one thread of a pool that runs user code.

Event callbacks (``on_event``) and done-callbacks are user code: slow, raising, or even calling
``sys.exit``. Run on a runner, the dispatcher or a websocket reader, one slow callback would
stall every job and one raising ``SystemExit`` would kill a library thread, leaving its job
unended. So the library only *queues* calls here; one thread runs them in the order queued,
and nothing they do (except taking long) reaches the library.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Optional, Tuple

__all__ = ["CallbackExecutor"]

log = logging.getLogger(__name__)

Call = Tuple[Callable[..., Any], Tuple[Any, ...]]


class CallbackExecutor:
    """Runs queued calls in order on one daemon thread, started on first use.

    ``submit`` never blocks and never runs the call on the caller's thread. After
    :meth:`close`, calls are run on the closing thread until ``drain_seconds`` pass, then
    dropped (logged): a callback that never returns cannot hold ``pool.close()``.
    """

    def __init__(self, name: str = "comfy-cluster-callbacks") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._calls: Deque[Call] = collections.deque()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._busy = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``. After close, the call is run at once on this thread."""
        with self._cond:
            if not self._closed:
                self._calls.append((fn, args))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._cond.notify()
                return
        _run_one(fn, args)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls and not self._closed:
                    self._cond.wait()
                if not self._calls:
                    return
                fn, args = self._calls.popleft()
                self._busy = True
            try:
                _run_one(fn, args)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self, drain_seconds: float = 2.0) -> None:
        """Run what is queued (for at most ``drain_seconds``), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout=drain_seconds)
        if thread.is_alive():
            with self._cond:
                dropped = len(self._calls)
                self._calls.clear()
            log.warning("a callback is still running after %.1f s; %d queued callback(s) dropped", drain_seconds, dropped)


def _run_one(fn: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except BaseException:  # SystemExit and KeyboardInterrupt too: user code must not end us
        log.exception("callback %s raised", getattr(fn, "__qualname__", fn))
