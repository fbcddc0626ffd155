"""The gateway's routes for what the cluster offers (``/object_info``, ``/models``,
``/system_stats``, ...), answered from :class:`~.info.ClusterInfo`, and its index page."""

from __future__ import annotations

import html
import json
from typing import Any, Awaitable, Callable, List, Sequence, Tuple

from aiohttp import web

from .info import ClusterInfo

__all__ = ["info_routes", "index_page"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json")


def index_page(servers: Sequence[str]) -> Handler:
    """``GET /`` without a ComfyUI frontend installed: a page naming the servers."""
    names = html.escape(", ".join(servers))
    page = f"<!doctype html><title>comfy-cluster gateway</title><p>comfy-cluster gateway for {len(servers)} ComfyUI server(s): {names}</p>"

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=page, content_type="text/html")

    return handler


def info_routes(info: ClusterInfo, max_upload: int) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` for the info endpoints, each the cluster's union."""

    async def object_info(request: web.Request) -> web.StreamResponse:
        return _json(await info.object_info())

    async def object_info_one(request: web.Request) -> web.StreamResponse:
        name = request.match_info["node_class"]
        merged = await info.object_info()
        return _json({name: merged[name]} if name in merged else {})

    def union(path: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return _json(await info.union_list(path))

        return handler

    async def models_folder(request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in await info.union_list("/models"):
            return web.Response(status=404)
        return _json(await info.union_list(f"/models/{folder}"))

    async def system_stats(request: web.Request) -> web.StreamResponse:
        return _json(await info.system_stats())

    async def features(request: web.Request) -> web.StreamResponse:
        return _json(await info.features(max_upload))

    async def ok(request: web.Request) -> web.StreamResponse:
        await request.read()  # /free, /internal/logs/subscribe: accepted, nothing to do
        return web.Response(status=200)

    return [
        ("GET", "/object_info", object_info),
        ("GET", "/object_info/{node_class}", object_info_one),
        ("GET", "/embeddings", union("/embeddings")),
        ("GET", "/models", union("/models")),
        ("GET", "/models/{folder}", models_folder),
        ("GET", "/system_stats", system_stats),
        ("GET", "/features", features),
        ("POST", "/free", ok),
        ("PATCH", "/internal/logs/subscribe", ok),
    ]
