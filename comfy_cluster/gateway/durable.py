"""``Keeper``: the gateway's bridge to its :class:`~comfy_cluster.state.Store`.

The store is blocking; the gateway's loop never waits on it directly. Writes go, in the
order they were asked, to one thread of their own (``later``); a request that must not be
answered before its row is committed awaits it (``run``). The attempt ledger is written
inline by the library thread that posts (before the POST), so a crash never leaves a copy
on a server that the store does not know.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import tempfile
import time
from typing import Any, Callable, Optional, TypeVar

from ..state import Fenced, Store

__all__ = ["Keeper", "open_store"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def open_store(state: Any) -> "tuple[Store, Optional[str]]":
    """``(store, folder to delete at stop)``: ``state`` is a Store, a URL, or None (a
    temporary SQLite file: the state lives as long as this gateway)."""
    if isinstance(state, Store):
        return state, None
    if state is None:
        folder = tempfile.mkdtemp(prefix="comfy-cluster-gateway-state-")
        return Store("sqlite:///" + os.path.join(folder, "gateway.sqlite3").replace("\\", "/")), folder
    return Store(str(state)), None


#: Seconds between tries of a write that failed for a passing reason (a deadlock, a
#: connection cut): 5 tries in about 6 s, then it is logged as failed.
RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6, 3.2)


def _retried(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args)``, tried again after a database error that may pass (not a refusal of the
    write itself, such as :class:`Fenced`)."""
    from sqlalchemy.exc import DBAPIError

    for delay in RETRY_DELAYS:
        try:
            return fn(*args, **kwargs)
        except DBAPIError as exc:
            if not (exc.connection_invalidated or "deadlock" in str(exc).lower() or "could not serialize" in str(exc).lower()
                    or "database is locked" in str(exc).lower()):
                raise
            log.warning("gateway state: %s failed (%s); trying again in %.1f s", getattr(fn, "__name__", fn), str(exc).splitlines()[0], delay)
            time.sleep(delay)
    return fn(*args, **kwargs)


class Keeper:
    """Ordered, non-blocking writes to ``store`` for code on ``loop``."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, replica: Optional[str] = None) -> None:
        self.store = store
        self.replica = replica
        self._loop = loop
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="comfy-cluster-gateway-state")
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="comfy-cluster-gateway-read")
        self._closed = False

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write, in order after every earlier one; returns once committed."""
        return await asyncio.wrap_future(self._writer.submit(fn, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read (not ordered with writes: read what a committed write left)."""
        return await asyncio.wrap_future(self._readers.submit(fn, *args, **kwargs))

    def later(self, fn: Callable[..., Any], *args: Any, then: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        """A write in order; ``then()`` runs on the loop once it is committed (not when it
        failed: the failure is logged; what it recorded stays unfinished in the store, and
        is taken up again after a restart)."""
        if self._closed:
            return
        future = self._writer.submit(_retried, fn, *args, **kwargs)
        if then is None:
            future.add_done_callback(self._log_failure)
            return

        def done(f: "concurrent.futures.Future[Any]") -> None:
            self._log_failure(f)
            if f.exception() is not None:
                return
            try:
                self._loop.call_soon_threadsafe(then)
            except RuntimeError:
                log.debug("gateway stopped before a state write was told")

        future.add_done_callback(done)

    @staticmethod
    def _log_failure(f: "concurrent.futures.Future[Any]") -> None:
        exc = f.exception()
        if isinstance(exc, Fenced):
            log.warning("gateway state: %s (another replica took it over)", exc)
        elif exc is not None:
            log.error("gateway state write failed: %s", exc, exc_info=exc)

    def close(self) -> None:
        """Finish the writes asked so far, then stop the threads."""
        self._closed = True
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
