"""The gateway's routes for the queue and the history (``/queue``, ``/interrupt``, ``/history``):
ComfyUI's shapes, each answered for the user who asks (:func:`.auth.request_user`)."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, List, Tuple

from aiohttp import web

from .auth import request_user
from .book import JobBook
from .listing import Listing

__all__ = ["queue_routes", "read_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; raises for another body (the gateway answers ComfyUI's plain 500)."""
    return json.loads((await request.read()).decode("utf-8"))


def queue_routes(book: JobBook, listing: Listing) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` for the queue and history routes (lists from ``listing``;
    changes through ``book``)."""

    async def get_queue(request: web.Request) -> web.StreamResponse:
        return _json(await listing.queue(request_user(request)))

    async def post_queue(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise TypeError("queue request must be an object")
        viewer = request_user(request)
        if body.get("clear"):
            book.clear_pending(viewer)
        if isinstance(body.get("delete"), list):
            book.delete_pending(body["delete"], viewer)
        return web.Response(status=200)

    async def interrupt(request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request)
        except ValueError:
            body = {}
        book.interrupt(body, request_user(request))
        return web.Response(status=200)

    async def get_history(request: web.Request) -> web.StreamResponse:
        q = request.query
        max_items = int(q["max_items"]) if "max_items" in q else None
        offset = int(q["offset"]) if "offset" in q else -1
        return _json(await listing.history(request_user(request), max_items=max_items, offset=offset))

    async def get_history_item(request: web.Request) -> web.StreamResponse:
        return _json(await listing.history(request_user(request), prompt_id=request.match_info["prompt_id"]))

    async def post_history(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise TypeError("history request must be an object")
        await listing.post_history(body, request_user(request))
        return web.Response(status=200)

    return [
        ("GET", "/queue", get_queue),
        ("POST", "/queue", post_queue),
        ("POST", "/interrupt", interrupt),
        ("GET", "/history", get_history),
        ("GET", "/history/{prompt_id}", get_history_item),
        ("POST", "/history", post_history),
    ]
