"""``Keeper``: the gateway's bridge to its :class:`~comfy_cluster.state.Store`.

The store is blocking; the gateway's loop never waits on it directly. Writes join the
store's group commit in the order they were asked (``later``: the loop goes on; writes
asked at about the same time share one transaction); a request that must not be answered
before its row is committed awaits it (``run``). The attempt ledger is written
inline by the library thread that posts (before the POST), so a crash never leaves a copy
on a server that the store does not know.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import tempfile
from typing import Any, Callable, Optional, TypeVar

from ..state import Fenced, Store
from ..state.group import is_batched, submit

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


class Keeper:
    """Ordered, non-blocking writes to ``store`` for code on ``loop``."""

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop, *, replica: Optional[str] = None) -> None:
        self.store = store
        self.replica = replica
        self._loop = loop
        # Writes that are not batched (an upload's bytes: a long transaction of its own).
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="comfy-cluster-gateway-state")
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="comfy-cluster-gateway-read")
        self._closed = False

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "concurrent.futures.Future[T]":
        """A batched write (see :mod:`comfy_cluster.state.group`) joins the next group commit,
        in the order asked (a lazy one, with the next that is not); any other blocking
        write runs on the writer thread."""
        if is_batched(fn):
            return submit(fn, *args, **kwargs)
        return self._writer.submit(fn, *args, **kwargs)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write, in order after every earlier one; returns once committed."""
        return await asyncio.wrap_future(self._submit(fn, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read (not ordered with writes: read what a committed write left)."""
        return await asyncio.wrap_future(self._readers.submit(fn, *args, **kwargs))

    def later(self, fn: Callable[..., Any], *args: Any, then: Optional[Callable[[], None]] = None,
              failed: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        """A write in order; ``then()`` runs on the loop once it is committed, ``failed()``
        instead when it failed (the failure is logged; what it recorded stays unfinished in the
        store, and is taken up again after a restart)."""
        if self._closed:
            return
        future = self._submit(fn, *args, **kwargs)
        if then is None and failed is None:
            future.add_done_callback(self.log_failure)
            return

        def done(f: "concurrent.futures.Future[Any]") -> None:
            self.log_failure(f)
            after = then if f.exception() is None else failed
            if after is None:
                return
            try:
                self._loop.call_soon_threadsafe(after)
            except RuntimeError:
                log.debug("gateway stopped before a state write was told")

        future.add_done_callback(done)

    @staticmethod
    def log_failure(f: "concurrent.futures.Future[Any]") -> None:
        """A done callback for a write nobody waits for: its failure logged."""
        exc = f.exception()
        if isinstance(exc, Fenced):
            log.warning("gateway state: %s (another replica took it over)", exc)
        elif exc is not None:
            log.error("gateway state write failed: %s", exc, exc_info=exc)

    def close(self) -> None:
        """Finish the writes asked so far, then stop the threads."""
        self._closed = True
        self._writer.shutdown(wait=True)
        self.store.flush()
        self._readers.shutdown(wait=True)
