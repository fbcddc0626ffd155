"""The cluster behind one ComfyUI URL: :class:`Gateway` serves a ServerPool as one ComfyUI
server, so ComfyUI-for-Nuke, scripts and other ComfyUI clients use the cluster unchanged.

Needs aiohttp: ``pip install 'comfy-cluster[gateway]'``. Run it with ``comfy-cluster gateway``
or inside a process::

    pool = ServerPool.from_env()
    gateway = Gateway(pool, port=8188).start()
    ...
    gateway.stop(); pool.close()
"""

from __future__ import annotations

try:
    from .server import Gateway
except ImportError as exc:  # pragma: no cover - depends on the installation
    if exc.name == "aiohttp":
        raise ImportError("the gateway needs aiohttp: pip install 'comfy-cluster[gateway]'") from exc
    raise

__all__ = ["Gateway"]
