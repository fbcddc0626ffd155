"""One ServerPool for the runs of a Nuke session, so nodes that run at the same time are
scheduled knowing of each other (each run with a pool of its own would put its frames on the
same "least loaded" server as every other node's, each blind to the others' jobs in flight).

The runs that go on at once share a pool (one per strategy and set of options: a node's own
strategy is the pool's); the last one to end closes it, so an idle Nuke keeps no thread or
socket to the GPU servers. When the gateway runs inside this Nuke (ComfyUI Cluster > Start
gateway), runs with the default strategy use the gateway's pool: the cluster's other clients and
the nodes then share one schedule. Any thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any, Dict, Iterator, Optional, Tuple

from comfy_cluster import ServerPool

__all__ = ["shared_pool", "open_pools"]

_lock = threading.Lock()
_pools: Dict[Tuple[str, ...], Tuple[ServerPool, int]] = {}  # key -> (pool, runs using it)


def _key(strategy: Optional[str], options: Dict[str, Any]) -> Tuple[str, ...]:
    # The servers' configuration as the environment gives it now (a studio may change it).
    env = tuple(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("NUKE_COMFYUI_"))
    return (strategy or "", repr(sorted(options.items()))) + env


def _gateway_pool() -> Optional[ServerPool]:
    gateway = sys.modules.get(f"{__package__}.gateway")  # only when started this session
    found = gateway.pool() if gateway is not None else None
    return found if isinstance(found, ServerPool) else None


@contextlib.contextmanager
def shared_pool(strategy: Optional[str], options: Dict[str, Any]) -> Iterator[ServerPool]:
    """The session's pool for ``strategy`` (None: the default) while the block runs.
    Raises the library's ConfigError for a bad server configuration."""
    if strategy is None and not options:
        gateway_pool = _gateway_pool()
        if gateway_pool is not None:
            yield gateway_pool  # the gateway's: it closes it when it stops
            return
    key = _key(strategy, options)
    with _lock:
        pool, users = _pools.get(key, (None, 0))
        if pool is None:
            kwargs = dict(options)
            if strategy:
                kwargs["strategy"] = strategy
            pool = ServerPool.from_env(**kwargs)
        _pools[key] = (pool, users + 1)
    try:
        yield pool
    finally:
        with _lock:
            pool, users = _pools[key]
            if users > 1:
                _pools[key] = (pool, users - 1)
                pool = None
            else:
                del _pools[key]
        if pool is not None:  # the last run of it ended: no thread or socket stays open
            pool.close()


def open_pools() -> int:
    """How many shared pools are open now (for the Servers panel and tests)."""
    with _lock:
        return len(_pools)
