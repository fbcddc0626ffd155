"""``LoopMail``: calls from library threads run on the gateway's loop, in order, with one
wake-up of the loop per burst.

``loop.call_soon_threadsafe`` wakes the loop (a write to its self-pipe, a read and a turn of
the loop) for every call. A job's events come in bursts (a server sends a short job's events
in one go; the pool hands them on one after another), so calls queued while a wake-up is
already pending ride with it: the loop runs them all in one turn, in the order they were
queued. Nothing is dropped or reordered; a call that raises is logged and the next one runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, Callable, Deque, Tuple

__all__ = ["LoopMail"]

log = logging.getLogger(__name__)


class LoopMail:
    """Runs ``post(fn, *args)`` calls on ``loop`` in the order posted (any thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._calls: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]] = collections.deque()
        self._pending = False  # a drain is scheduled on the loop and has not emptied the queue
        #: Wake-ups of the loop asked (for tests: fewer than the calls posted in a burst).
        self.wakeups = 0

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop after every call posted before it; dropped (logged at
        debug level) once the loop is closed."""
        with self._lock:
            self._calls.append((fn, args))
            if self._pending:
                return
            self._pending = True
            self.wakeups += 1
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the gateway stopped
            with self._lock:
                self._calls.clear()
                self._pending = False
            log.debug("gateway stopped: %s dropped", getattr(fn, "__name__", fn))

    def _drain(self) -> None:
        """On the loop: run the calls queued so far; calls queued meanwhile get a turn of their
        own (after whatever else the loop has ready), so a steady stream never starves it."""
        with self._lock:
            n = len(self._calls)
        for _ in range(n):
            with self._lock:
                fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one failing call must not drop the others
                log.exception("gateway: %s failed", getattr(fn, "__qualname__", fn))
        with self._lock:
            if not self._calls:
                self._pending = False
                return
        self._loop.call_soon(self._drain)  # on the loop already: no wake-up needed
