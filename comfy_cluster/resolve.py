"""Name look-ups bounded by a request's connect timeout.

``requests``, urllib3 and websocket-client resolve a host name with ``socket.getaddrinfo``,
which no socket timeout covers: a resolver that does not answer holds a probe (or a job's
request) for as long as the system's resolver retries, 20 s and more. So before a request to
a host name, :func:`check_resolvable` looks the name up on a daemon thread and waits at most
the connect timeout; a look-up that takes longer fails the request as a connect time-out,
naming the host. A name resolved recently is not looked up again here (the request's own
look-up then normally comes from the system's cache). IP literals need no look-up.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Callable, Dict, Optional, Tuple

__all__ = ["check_resolvable", "ResolveTimeout"]

#: Seconds a successful look-up is trusted before the next request looks again.
RESOLVED_TTL = 30.0

_lock = threading.Lock()
_resolved: Dict[Tuple[str, int], float] = {}  # (host, port) -> monotonic time of expiry
_pending: Dict[Tuple[str, int], threading.Event] = {}  # look-ups under way (one per name)


class ResolveTimeout(OSError):
    """The name look-up of ``host`` took longer than the timeout."""


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def check_resolvable(host: Optional[str], port: int, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once ``host`` has been resolved (or cannot be: the request itself then reports
    that), or raise :class:`ResolveTimeout` after ``timeout`` seconds. One look-up per name at
    a time: callers asking for a name being looked up wait for that one."""
    if not host or _is_literal(host):
        return
    key = (host, port)
    now = clock()
    with _lock:
        if _resolved.get(key, 0.0) > now:
            return
        done = _pending.get(key)
        if done is None:
            done = threading.Event()
            _pending[key] = done
            threading.Thread(target=_look_up, args=(key, done, clock), name="comfy-cluster-dns", daemon=True).start()
    if not done.wait(timeout):
        raise ResolveTimeout(f"name look-up of {host} took longer than {timeout:g} s")


def _look_up(key: Tuple[str, int], done: threading.Event, clock: Callable[[], float]) -> None:
    ok = False
    try:
        socket.getaddrinfo(key[0], key[1], 0, socket.SOCK_STREAM)
        ok = True
    except (OSError, UnicodeError):  # unknown name: the request reports it in its own words
        pass
    finally:
        with _lock:
            _pending.pop(key, None)
            if ok:
                _resolved[key] = clock() + RESOLVED_TTL
            else:
                _resolved.pop(key, None)
        done.set()
