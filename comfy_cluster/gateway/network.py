"""The gateway on a network: the Origin check, exposure warnings, and refusing to serve itself.

* **Origin.** A web page on another site can make a browser POST to the gateway (a "simple"
  cross-origin request needs no CORS permission) and open its websocket. ComfyUI answers 403
  when the ``Origin`` header's host differs from ``Host`` (only for loopback hosts); the gateway
  does so for every host, since it is meant to be reached over the network. ``allowed`` origins
  (``--allow-origin``) pass and get CORS headers, as ComfyUI's ``--enable-cors-header``.
* **Exposure.** Listening beyond loopback without a token or users: a warning at start.
* **Self-loop.** A cluster that names the gateway's own address would make it post to itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import urllib.parse
from typing import Awaitable, Callable, Iterable, List, Optional, Sequence, Set

from aiohttp import web

from ..config import ServerConfig
from .auth import ANONYMOUS, Authenticator, User, set_request_user
from .login import is_open, to_login, token_to_cookie, wants_page

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PLAIN_500 = "500 Internal Server Error\n\nServer got itself in trouble"

__all__ = ["guard", "origin_refused", "cors_headers", "is_loopback", "listens_beyond_loopback", "self_loop_servers"]

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_ANY = {"0.0.0.0", "::", ""}


def guard(auth: Authenticator, allowed: Sequence[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The gateway's middleware: the Origin check (403), CORS for ``allowed`` origins, who is
    asking (401 when nobody may be, or the login page for a browser's page request; else
    :func:`.auth.request_user` gives the user; the sign-in routes answer anyone), and
    ComfyUI's plain-text 500 for a handler that raises."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = origin_refused(request, allowed)
        if refused is not None:
            log.warning("gateway: %s %s refused (403): %s", request.method, request.path, refused)
            return web.Response(status=403, text=f"403: Forbidden ({refused})")
        extra = cors_headers(request, allowed)
        if request.method == "OPTIONS" and extra:
            return web.Response(headers=extra)  # a browser's preflight carries no credentials
        if is_open(request):  # signing in (login.py) needs no credentials
            user: Optional[User] = ANONYMOUS
        else:
            user = await auth.identify_async(request.headers, request.query, request.remote, request.cookies)
        if user is None:
            if wants_page(request):
                return to_login(request)  # a browser: the login page, then back here
            return web.Response(status=401, text="401: Unauthorized (comfy-cluster gateway token or user)", headers=extra)
        set_request_user(request, user)
        signed_in = await token_to_cookie(request, auth)  # a page opened with ?token=: a session instead
        if signed_in is not None:
            return signed_in
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - ComfyUI answers its plain-text 500
            log.debug("gateway: %s %s raised", request.method, request.path, exc_info=True)
            response = web.Response(status=500, text=_PLAIN_500, content_type="text/plain")
        if extra and not response.prepared:
            response.headers.update(extra)
        return response

    return middleware


def is_loopback(host: Optional[str]) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listens_beyond_loopback(host: str) -> bool:
    """True when a gateway listening on ``host`` can be reached from other machines."""
    return not is_loopback(host)


def _host_and_port(netloc: str) -> "tuple[Optional[str], Optional[int]]":
    parts = urllib.parse.urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port


def origin_refused(request: web.Request, allowed: Sequence[str]) -> Optional[str]:
    """Why the request's ``Origin`` is refused, or None when it may go on.

    As ComfyUI: compare host names (and ports when both carry one); a request without
    ``Origin`` (scripts, Nuke, same-origin GETs) passes.
    """
    host = request.headers.get("Host")
    for origin in request.headers.getall("Origin", []):
        why = _origin_refused(origin, host, allowed)
        if why is not None:
            return why
    return None


def _origin_refused(origin: str, host: Optional[str], allowed: Sequence[str]) -> Optional[str]:
    if not origin or not host:
        return None
    if "*" in allowed or origin.rstrip("/") in allowed:
        return None
    parsed = urllib.parse.urlsplit(origin)
    origin_host, origin_port = parsed.hostname, _port_of(parsed)
    host_name, host_port = _host_and_port(host.lower())
    if not origin_host or not host_name:
        return f"origin {origin[:80]!r} is not a web address"
    if origin_host.lower() != host_name:
        return f"origin {origin_host[:80]} differs from host {host_name[:80]}"
    if origin_port is not None and host_port is not None and origin_port != host_port:
        return f"origin port {origin_port} differs from host port {host_port}"
    return None


def _port_of(parts: urllib.parse.SplitResult) -> Optional[int]:
    try:
        return parts.port
    except ValueError:
        return None


def cors_headers(request: web.Request, allowed: Sequence[str]) -> dict:
    """CORS headers for a request from an allowed origin (empty otherwise)."""
    origin = request.headers.get("Origin")
    if not origin or not allowed or not ("*" in allowed or origin.rstrip("/") in allowed):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, GET, DELETE, PUT, OPTIONS, PATCH",
        "Access-Control-Allow-Headers": "Content-Type, Authorization, Comfy-User",
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def _local_addresses(listen_host: str) -> Set[str]:
    """Names and addresses that reach this machine: loopback, the host names, their addresses."""
    names: Set[str] = set(_LOOPBACK_NAMES) | {"127.0.0.1", "::1", "0.0.0.0", "::"}
    for name in (socket.gethostname(), socket.getfqdn(), listen_host):
        if name:
            names.add(name.lower())
    for name in list(names):
        names.update(_addresses_of(name))
    return names


def _addresses_of(name: str) -> List[str]:
    if name in _ANY:
        return []
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]).lower() for info in infos]


def self_loop_servers(listen_host: str, port: int, servers: Iterable[ServerConfig]) -> List[str]:
    """Names of the servers that are this gateway itself (same port, an address of this machine).

    Listening on a specific address, only that address (and, for loopback, every loopback
    name) is the gateway; listening on 0.0.0.0 or ::, every local address is.
    """
    same_port = []
    for s in servers:
        host, server_port = _host_and_port(urllib.parse.urlsplit(s.url).netloc)
        if server_port is None:
            server_port = 443 if s.url.startswith("https") else 80
        if server_port == port and host:
            same_port.append((s.name, host.lower().strip("[]")))
    if not same_port or port == 0:
        return []
    local = _local_addresses(listen_host)
    if listen_host.strip("[]") in _ANY:
        mine = local
    elif is_loopback(listen_host):
        mine = {n for n in local if is_loopback(n)} | set(_LOOPBACK_NAMES)
    else:
        mine = {listen_host.lower().strip("[]")} | set(_addresses_of(listen_host))
    found = []
    for name, host in same_port:
        if host in mine or host in _ANY or any(a in mine for a in _addresses_of(host)):
            found.append(name)
    return found
