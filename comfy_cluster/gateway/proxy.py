"""Answers the gateway takes from one of its servers as they are: a file (a custom node's web
extension, a model preview) streamed from the first server that has it."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable, List, Mapping, Optional

import aiohttp
from aiohttp import web
from yarl import URL

from ..config import ServerConfig
from .auth import server_query
from .info import ssl_for

__all__ = ["stream_first", "Online"]

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=30.0)
Online = Callable[[], Awaitable[List[str]]]


async def stream_first(
    request: web.Request,
    session: aiohttp.ClientSession,
    servers: Mapping[str, ServerConfig],
    names: Iterable[str],
    path: Optional[str] = None,
) -> Optional[web.StreamResponse]:
    """The request's path (or ``path``, already URL-encoded) with its query, streamed from the
    first of ``names`` that answers 200; None when none does."""
    raw = path if path is not None else request.rel_url.raw_path
    for name in names:
        server = servers.get(name)
        if server is None:
            continue
        url = URL(server.url + raw, encoded=True).with_query(server_query(request.rel_url.query))  # never the token
        try:
            async with session.get(url, headers=server.headers, ssl=ssl_for(server), timeout=_TIMEOUT) as resp:
                if resp.status != 200:
                    continue
                out = web.StreamResponse(status=200)
                out.content_type = resp.content_type
                if resp.content_length is not None:
                    out.content_length = resp.content_length
                for header in ("Content-Disposition", "Cache-Control", "Last-Modified"):
                    if header in resp.headers:
                        out.headers[header] = resp.headers[header]
                await out.prepare(request)
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:  # that server cannot: the next
            log.debug("%s %s: %s", name, raw, exc)
    return None
