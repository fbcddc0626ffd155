"""The gateway's routes for the queue and the history (``/queue``, ``/interrupt``, ``/history``):
ComfyUI's shapes, each answered for the user who asks (:func:`.auth.request_user`)."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

from aiohttp import web

from .auth import User, request_user
from .book import JobBook
from .listing import Listing, Unfinished

__all__ = ["queue_routes", "read_json"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; raises for another body (the gateway answers ComfyUI's plain 500)."""
    return json.loads((await request.read()).decode("utf-8"))


def _named(body: Dict[str, Any]) -> Optional[Set[str]]:
    """The prompt ids an ``/interrupt`` body names (``prompt_id``, or a ``delete`` list as
    ComfyUI-for-Nuke sends); None when it names none."""
    if "prompt_id" not in body and "delete" not in body:
        return None
    named = {body["prompt_id"]} if isinstance(body.get("prompt_id"), str) else set()
    if isinstance(body.get("delete"), list):
        named.update(p for p in body["delete"] if isinstance(p, str))
    return named


def queue_routes(book: JobBook, listing: Listing, remote_cancel: Optional[Callable[[str], Awaitable[bool]]] = None) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` for the queue and history routes (lists from ``listing``;
    changes through ``book``). ``remote_cancel`` (replicas): cancel a prompt another replica
    holds or none has claimed yet, so that ``/queue`` deletes and ``/interrupt`` reach a
    prompt whichever replica they are sent to."""

    async def elsewhere(viewer: User, pick: Callable[[Unfinished], bool], local: Set[str]) -> None:
        if remote_cancel is None:
            return
        for u in await listing.unfinished(viewer, fresh=True):
            if u.prompt_id not in local and pick(u):
                await remote_cancel(u.prompt_id)

    async def get_queue(request: web.Request) -> web.StreamResponse:
        return _json(await listing.queue(request_user(request)))

    async def post_queue(request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise TypeError("queue request must be an object")
        viewer = request_user(request)
        local = set(book.active)
        if body.get("clear"):
            book.clear_pending(viewer)
            await elsewhere(viewer, lambda u: not u.running, local)
        if isinstance(body.get("delete"), list):
            book.delete_pending(body["delete"], viewer)
            ids = {p for p in body["delete"] if isinstance(p, str)}
            await elsewhere(viewer, lambda u: not u.running and u.prompt_id in ids, local)
        return web.Response(status=200)

    async def interrupt(request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request)
        except ValueError:
            body = {}
        viewer = request_user(request)
        local = set(book.active)
        book.interrupt(body, viewer)
        body = body if isinstance(body, dict) else {}
        named, cid = _named(body), body.get("client_id")
        await elsewhere(viewer, lambda u: u.running and (u.prompt_id in named if named is not None else cid is None or u.client_id == cid), local)
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
