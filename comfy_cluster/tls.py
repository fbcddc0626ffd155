"""One trust decision for a server's HTTPS and secure websocket (WSS) connections.

requests verifies against certifi's CA bundle, while websocket-client (and a bare
``ssl.create_default_context()``) use the operating system's store. Those differ: on macOS a
python.org Python's OpenSSL store is empty until "Install Certificates" runs (the server
shows online, every job fails on TLS), and on Windows a studio CA in the system store would
be trusted by the websocket only. So one :class:`ssl.SSLContext` per setting serves both:

* ``verify_tls: true`` (default): certifi's bundle, as requests does;
* ``verify_tls: "system"``: the operating system's store (Windows certificate store, macOS
  python.org OpenSSL store, Linux distribution bundle), for a studio CA installed there;
* ``verify_tls: "/path/ca.pem"`` (a file or an OpenSSL hashed folder): that CA only;
* ``verify_tls: false``: no verification.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Dict, Tuple, Union

import certifi  # requests' own CA bundle (a dependency of requests)

from .errors import ConfigError

__all__ = ["ssl_context", "SYSTEM"]

#: The ``verify_tls`` value that selects the operating system's certificate store.
SYSTEM = "system"

_lock = threading.Lock()
_cache: Dict[Tuple[Union[bool, str], str], ssl.SSLContext] = {}


def ssl_context(verify: Union[bool, str], server: str = "") -> ssl.SSLContext:
    """The client context for ``verify`` (a ``verify_tls`` value), shared by HTTPS and WSS.

    Cached per setting (loading a bundle costs milliseconds; a context is thread-safe).
    A CA path that cannot be loaded raises :class:`ConfigError` naming ``server``.
    """
    key = (verify, certifi.where() if verify is True else "")
    with _lock:
        ctx = _cache.get(key)
        if ctx is None:
            ctx = _cache[key] = _make(verify, server)
        return ctx


def _make(verify: Union[bool, str], server: str) -> ssl.SSLContext:
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # before verify_mode: CERT_NONE with check_hostname raises
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if verify is True:
        return ssl.create_default_context(cafile=certifi.where())
    if verify == SYSTEM:
        return ssl.create_default_context()
    try:
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        where = f"{server}: " if server else ""
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc.__class__.__name__
        raise ConfigError(f"{where}verify_tls: cannot load CA certificates from {verify}: {reason}") from None
