"""The gateway from inside Nuke: the cluster served as one ComfyUI URL (``comfy_cluster.gateway``).

Started from the menu (ComfyUI Cluster > Start gateway) or at Nuke start-up when
``NUKE_COMFYUI_GATEWAY=host:port`` is set (``NUKE_COMFYUI_GATEWAY_TOKEN``, when set, is the
token clients must send). Its address shows in the Servers panel. It needs aiohttp in Nuke's
Python: ``nuke_setup.py --gateway``. The gateway runs on its own thread; starting it returns
once it listens, and it is stopped (and its pool closed) on exit.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import Any, Optional, Tuple

import nuke

__all__ = ["ENV", "TOKEN_ENV", "DEFAULT_ADDRESS", "parse_address", "pool", "start", "start_from_env", "start_from_menu", "stop", "url"]

log = logging.getLogger(__name__)

ENV = "NUKE_COMFYUI_GATEWAY"
TOKEN_ENV = "NUKE_COMFYUI_GATEWAY_TOKEN"
DEFAULT_ADDRESS = "127.0.0.1:8189"

_lock = threading.Lock()
_gateway: Any = None
_pool: Any = None


class GatewayError(Exception):
    """The gateway could not start; the message says why, in one line."""


def parse_address(text: str) -> Tuple[str, int]:
    """``"host:port"`` (or ``":port"``, or ``"port"``) -> (host, port); host defaults to 127.0.0.1."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = "", raw
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise GatewayError(f"{ENV}={raw!r}: expected host:port, for example 127.0.0.1:8189") from None
    if not 0 <= port < 65536:  # 0: a free port, which the Servers panel then shows
        raise GatewayError(f"{ENV}={raw!r}: the port must be 0-65535")
    return host, port


def _env(name: str) -> Optional[str]:
    """A gateway variable with cmd.exe's quotes removed (as every other variable); None when unset."""
    from comfy_cluster.environment import unquote_env

    raw = os.environ.get(name)
    return None if raw is None else unquote_env(name, raw)


def url() -> Optional[str]:
    """The running gateway's URL, or None."""
    with _lock:
        return str(_gateway.url) if _gateway is not None else None


def pool() -> Any:
    """The running gateway's ServerPool, or None (runs share it: see .session)."""
    with _lock:
        return _pool if _gateway is not None else None


def start(address: str) -> str:
    """Start the gateway on ``address`` (one per session); returns its URL."""
    global _gateway, _pool
    host, port = parse_address(address)
    with _lock:
        if _gateway is not None:
            return str(_gateway.url)
        try:
            from comfy_cluster.gateway import Gateway  # needs aiohttp: imported only when asked for
        except ImportError as exc:
            raise GatewayError(
                f"the gateway needs aiohttp in Nuke's Python ({exc}); install it with nuke_setup.py --gateway"
            ) from None
        from comfy_cluster import ComfyClusterError, ServerPool
        from comfy_cluster.gateway.auth import check_token

        from . import run as run_mod

        try:
            token = check_token(_env(TOKEN_ENV), TOKEN_ENV)
        except ValueError as exc:
            raise GatewayError(f"gateway: {exc}") from None
        try:
            pool = ServerPool.from_env(**run_mod.pool_options)
        except ComfyClusterError as exc:
            raise GatewayError(f"gateway: {exc}") from None
        try:
            gateway = Gateway(pool, host=host, port=port, token=token)
            gateway.start()
        except Exception as exc:
            pool.close()
            if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
                # A second Nuke started with the same NUKE_COMFYUI_GATEWAY: the first one serves.
                raise GatewayError(
                    f"gateway: {host}:{port} is taken (another Nuke's gateway?); this Nuke's nodes work without it, "
                    f"or set {ENV} to another port"
                ) from None
            raise GatewayError(f"gateway on {host}:{port} did not start: {exc}") from None
        _gateway, _pool = gateway, pool
        log.info("gateway listening on %s", gateway.url)
        return str(gateway.url)


def stop() -> bool:
    """Stop the gateway and close its pool; False when none ran."""
    global _gateway, _pool
    with _lock:
        gateway, pool = _gateway, _pool
        _gateway = _pool = None
    if gateway is None:
        return False
    try:
        gateway.stop()
    finally:
        pool.close()
    return True


def start_from_env() -> Optional[str]:
    """At start-up: start on ``NUKE_COMFYUI_GATEWAY`` when set; a problem goes to the terminal."""
    address = _env(ENV) or ""
    if not address:
        return None
    try:
        return start(address)
    except GatewayError as exc:
        sys.stderr.write(f"comfy-cluster: {exc}\n")
        return None


def start_from_menu() -> Optional[str]:
    """The menu entry: start on ``NUKE_COMFYUI_GATEWAY`` or 127.0.0.1:8189 and say where."""
    try:
        address = url() or start(_env(ENV) or DEFAULT_ADDRESS)
    except GatewayError as exc:
        nuke.message(str(exc))
        return None
    nuke.message(f"ComfyUI Cluster gateway: {address}\nPoint a ComfyUI client at this URL.")
    return address
