"""One trust decision for a server's HTTPS and secure websocket (WSS) connections.

requests verifies against certifi's CA bundle, while websocket-client (and a bare
``ssl.create_default_context()``) use the operating system's store. Those differ: on macOS a
python.org Python's OpenSSL store is empty until "Install Certificates" runs (the server
shows online, every job fails on TLS), and on Windows a studio CA in the system store would
be trusted by the websocket only. So one :class:`ssl.SSLContext` per setting serves both:

* ``verify_tls: true`` (default): as requests does, the bundle named by ``REQUESTS_CA_BUNDLE``
  (or ``CURL_CA_BUNDLE``), else certifi's; plus ``SSL_CERT_FILE``/``SSL_CERT_DIR`` when set
  (OpenSSL's variables for a private CA, which a studio may set for every tool);
* ``verify_tls: "system"``: the operating system's store as Python's ``ssl`` sees it (the
  Windows certificate store; the Linux distribution bundle; on macOS the OpenSSL store of the
  Python, filled by python.org's "Install Certificates", not the Keychain), for a studio CA
  installed there; ``SSL_CERT_FILE``/``SSL_CERT_DIR`` apply too;
* ``verify_tls: "/path/ca.pem"`` (a file or an OpenSSL hashed folder): that CA only;
* ``verify_tls: false``: no verification.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Callable, Dict, List, Tuple, TypeVar, Union

import certifi  # requests' own CA bundle (a dependency of requests)

from .consoles import unquote
from .errors import ConfigError

__all__ = ["ssl_context", "SYSTEM"]

T = TypeVar("T")

#: The ``verify_tls`` value that selects the operating system's certificate store.
SYSTEM = "system"

_lock = threading.Lock()
_cache: Dict[Tuple[Union[bool, str], str], ssl.SSLContext] = {}


def ssl_context(verify: Union[bool, str], server: str = "") -> ssl.SSLContext:
    """The client context for ``verify`` (a ``verify_tls`` value), shared by HTTPS and WSS.

    Cached per setting (loading a bundle costs milliseconds; a context is thread-safe).
    A CA path that cannot be loaded raises :class:`ConfigError` naming ``server``.
    """
    key = (verify, "|".join(_bundles()) if verify is True else os.environ.get("SSL_CERT_FILE", ""))
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
        bundle, *extra = _bundles()
        ctx = _load(lambda: ssl.create_default_context(cafile=bundle), bundle, server)
        for path in extra:  # OpenSSL's variables add a private CA to requests' bundle
            _load(lambda: ctx.load_verify_locations(**{"capath" if os.path.isdir(path) else "cafile": path}), path, server)
        return ctx
    if verify == SYSTEM:
        return ssl.create_default_context()
    path = verify
    if os.path.isdir(path):
        return _load(lambda: ssl.create_default_context(capath=path), path, server)
    return _load(lambda: ssl.create_default_context(cafile=path), path, server)


def _bundles() -> List[str]:
    """The CA files of ``verify_tls: true``: requests' choice first, then OpenSSL's variables."""
    # unquote: cmd.exe keeps the quotes of set REQUESTS_CA_BUNDLE="C:\studio\ca.pem"
    env = {name: unquote(os.environ.get(name, "")) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")}
    first = env["REQUESTS_CA_BUNDLE"] or env["CURL_CA_BUNDLE"] or certifi.where()
    extra = [env["SSL_CERT_FILE"], env["SSL_CERT_DIR"]]
    return [first] + [p for p in extra if p and p != first]


def _load(make: Callable[[], T], path: str, server: str) -> T:
    try:
        return make()
    except (OSError, ssl.SSLError) as exc:
        where = f"{server}: " if server else ""
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc.__class__.__name__
        raise ConfigError(f"{where}verify_tls: cannot load CA certificates from {path}: {reason}") from None
