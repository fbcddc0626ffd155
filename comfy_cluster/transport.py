"""The connection plumbing under :class:`~comfy_cluster.client.ComfyClient`: a requests
adapter that tracks its connections (so close() can cut a request that hangs), and light
urllib3 pools for status probes.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
import weakref
from typing import Any, Iterable, List, Optional

import requests
import urllib3

__all__ = ["LightQueue", "LightHTTPPool", "LightHTTPSPool", "TrackingAdapter", "TooSlow", "body_chunks", "tracked"]


class LightQueue:
    """The idle connections of a probe pool: LIFO, never waiting. urllib3's default
    (``queue.LifoQueue``) holds three Conditions, about 4.5 KB per server, that a pool which
    never blocks (urllib3's default, ``block=False``) never waits on."""

    def __init__(self, maxsize: int) -> None:
        self._items: List[Any] = []
        self._maxsize = maxsize
        self._lock = threading.Lock()

    def put(self, item: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        with self._lock:
            if 0 < self._maxsize <= len(self._items):
                raise queue.Full
            self._items.append(item)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        with self._lock:
            if not self._items:
                raise queue.Empty  # urllib3 then opens a new connection (block=False)
            return self._items.pop()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items


class LightHTTPPool(urllib3.HTTPConnectionPool):
    QueueCls = LightQueue  # type: ignore[assignment]


class LightHTTPSPool(urllib3.HTTPSConnectionPool):
    QueueCls = LightQueue  # type: ignore[assignment]


class TrackingAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections use the given SSL context (see tls.py) and that
    remembers the connections it opens (weakly), so that the client can shut them down while a
    request waits on one."""

    def __init__(self, conns: "weakref.WeakSet[Any]", context: Optional[ssl.SSLContext], **kwargs: Any) -> None:
        self._conns = conns
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self._context is not None:
            kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)
        conns = self._conns
        new_pool = self.poolmanager._new_pool
        self.poolmanager._new_pool = lambda *a, **kw: tracked(new_pool(*a, **kw), conns)


def tracked(pool: urllib3.HTTPConnectionPool, conns: "weakref.WeakSet[Any]") -> urllib3.HTTPConnectionPool:
    """``pool``, each connection it opens remembered (weakly) in ``conns``, so that the
    client can shut them down while a request waits on one."""
    new_conn = pool._new_conn

    def tracked_conn() -> Any:
        conn = new_conn()
        conns.add(conn)
        return conn

    pool._new_conn = tracked_conn  # type: ignore[method-assign]
    return pool


class TooSlow(Exception):
    """The whole body did not arrive in time."""


def body_chunks(raw: Any, deadline: Optional[float], chunk: int) -> Iterable[bytes]:
    """The (decoded) body of a urllib3 response, chunk by chunk; TooSlow past ``deadline``."""
    read1 = getattr(raw, "read1", None)
    if deadline is None or read1 is None:  # urllib3 1.x: per-read timeout only
        yield from raw.stream(chunk, decode_content=True)
        return
    while True:
        if time.monotonic() > deadline:
            raise TooSlow()
        # decode_content: a proxy may gzip the answer (requests asks for it).
        data = read1(chunk, decode_content=True)
        if not data:
            return
        yield data
