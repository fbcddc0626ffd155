"""The gateway's client websockets: one per clientId, events written in order.

Unlike ComfyUI, which drops events for a client whose socket is not open, the gateway keeps
a client's job events until its socket connects (bounded), because clients such as
ComfyUI-for-Nuke post their prompt without waiting for the socket. Binary preview frames are
not kept: they are only worth something live. Everything here runs on the gateway's loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any, Callable, Deque, Dict, Optional, Union

from aiohttp import web

__all__ = ["Relay"]

log = logging.getLogger(__name__)

Frame = Union[str, bytes]
#: Frames kept for one client without a socket, clients kept at most, and frames in all (the
#: oldest clients' frames go first): a script that posts without ever opening a socket costs
#: bounded memory.
MAX_KEPT_FRAMES = 5000
MAX_KEPT_CLIENTS = 1000
MAX_KEPT_TOTAL = 100_000
#: Frames queued for one slow socket before it is dropped (it reconnects and reconciles).
MAX_QUEUED_FRAMES = 20000


class _Client:
    def __init__(self, sid: str, ws: web.WebSocketResponse) -> None:
        self.sid = sid
        self.ws = ws
        self.queue: "asyncio.Queue[Optional[Frame]]" = asyncio.Queue()
        self.writer: Optional["asyncio.Task[None]"] = None

    async def write(self) -> None:
        try:
            while True:
                frame = await self.queue.get()
                if frame is None:
                    return
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("websocket %s: send failed: %s", self.sid, exc)

    def put(self, frame: Frame) -> None:
        if self.queue.qsize() >= MAX_QUEUED_FRAMES:
            log.warning("websocket %s is not reading; closing it", self.sid)
            asyncio.get_running_loop().create_task(self.ws.close())
            return
        self.queue.put_nowait(frame)


class Relay:
    """Client sockets by clientId, frames kept for clients not connected yet.

    ``publish(sid, frame)``, when set (replicas), is also given each JSON frame for a client
    whose socket is not here: the replica that holds it sends it (:meth:`deliver`)."""

    def __init__(self) -> None:
        self.publish: Optional[Callable[[str, str], None]] = None
        self._clients: Dict[str, _Client] = {}
        self._kept: "collections.OrderedDict[str, Deque[Frame]]" = collections.OrderedDict()
        self._kept_total = 0

    @property
    def connected(self) -> int:
        return len(self._clients)

    def is_connected(self, sid: str) -> bool:
        return sid in self._clients

    def attach(self, sid: str, ws: web.WebSocketResponse, first: Dict[str, Any]) -> _Client:
        """Register ``ws`` for ``sid`` (a newer socket replaces an older one), queue the first
        frame and then whatever was kept for this client."""
        old = self._clients.pop(sid, None)
        if old is not None:
            old.queue.put_nowait(None)
        client = _Client(sid, ws)
        self._clients[sid] = client
        client.put(json.dumps(first))
        kept = self._kept.pop(sid, ())
        self._kept_total -= len(kept)
        for frame in kept:
            client.put(frame)
        client.writer = asyncio.get_running_loop().create_task(client.write())
        return client

    def detach(self, client: _Client) -> None:
        if self._clients.get(client.sid) is client:
            del self._clients[client.sid]
        client.queue.put_nowait(None)

    def send(self, sid: str, kind: str, data: Dict[str, Any]) -> None:
        """A JSON event for one client; kept for it when its socket is not open."""
        self._send(sid, json.dumps({"type": kind, "data": data}), keep=True)

    def send_bytes(self, sid: str, frame: bytes) -> None:
        """A binary frame for one client (dropped when its socket is not open)."""
        self._send(sid, frame, keep=False)

    def _send(self, sid: str, frame: Frame, keep: bool) -> None:
        client = self._clients.get(sid)
        if client is not None:
            client.put(frame)
            return
        if not keep or not sid:
            return
        if self.publish is not None and isinstance(frame, str):
            self.publish(sid, frame)
        self._keep(sid, frame)

    def deliver(self, sid: str, frame: str) -> None:
        """A frame another replica published: sent if the client's socket is here, else kept."""
        client = self._clients.get(sid)
        if client is not None:
            client.put(frame)
        elif sid:
            self._keep(sid, frame)

    def _keep(self, sid: str, frame: Frame) -> None:
        kept = self._kept.get(sid)
        if kept is None:
            kept = self._kept[sid] = collections.deque(maxlen=MAX_KEPT_FRAMES)
        if len(kept) < MAX_KEPT_FRAMES:
            self._kept_total += 1  # (a full deque drops its oldest frame: the total stays)
        kept.append(frame)
        while len(self._kept) > 1 and (len(self._kept) > MAX_KEPT_CLIENTS or self._kept_total > MAX_KEPT_TOTAL):
            _, dropped = self._kept.popitem(last=False)
            self._kept_total -= len(dropped)

    def broadcast(self, kind: str, data: Dict[str, Any]) -> None:
        """A JSON event for every open socket (status frames)."""
        frame = json.dumps({"type": kind, "data": data})
        for client in list(self._clients.values()):
            client.put(frame)

    @property
    def kept_frames(self) -> int:
        """Frames kept for clients without a socket, in all."""
        return self._kept_total

    async def close(self) -> None:
        for client in list(self._clients.values()):
            client.queue.put_nowait(None)
            await client.ws.close()
        self._clients.clear()
        self._kept.clear()
        self._kept_total = 0
