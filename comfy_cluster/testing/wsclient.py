"""One websocket client of the mock server, shared by the server and its fault injection."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional, Union

from aiohttp import web

__all__ = ["WsClient"]


@dataclass(eq=False)
class WsClient:
    """One open websocket; events are queued and written by its own task, in order."""

    sid: str
    ws: web.WebSocketResponse
    generation: int
    transport: Optional[asyncio.Transport]
    queue: "asyncio.Queue[Union[str, bytes]]" = field(default_factory=asyncio.Queue)
    writer: Optional["asyncio.Task[None]"] = None
    #: Cut by ``drop_websockets_late()``: the server notices the close only once a
    #: newer socket took the same clientId (then drops that one's registration, as ComfyUI does).
    late: bool = False

    def abort(self) -> None:
        """Cut the connection at once, as a dying process or a lost network would."""
        if self.writer is not None:
            self.writer.cancel()
        if self.transport is not None:
            self.transport.abort()
