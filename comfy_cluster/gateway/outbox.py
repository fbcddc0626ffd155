"""A client websocket's outgoing queue (:class:`Outbox`): frames written in order by one
writer task, bounded in bytes.

A client that lags loses preview frames first (a preview is queued only while the queue is
under half its bound); when a JSON frame no longer fits, the socket is closed with code 1013
(try again later) and a warning is logged: the client reconnects and reads ``/history``. A
:class:`Gate` in the queue holds the frames behind it until a task is done (the record that a
prompt's end was told, on replicas), or ``GATE_WAIT`` seconds at most. Everything here runs on
the gateway's loop; :mod:`.relay` decides which frames go to which queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Awaitable, Deque, Optional, Tuple, TypeVar, Union

from aiohttp import web

__all__ = ["Outbox", "Gate", "passed", "within_gate_wait", "Frame", "Key", "CLOSE_TOO_SLOW", "CLOSE_WAIT", "GATE_WAIT"]

log = logging.getLogger(__name__)

Frame = Union[str, bytes]
Key = Tuple[str, str]  # (user name, clientId)
#: Close code for a client too slow to keep up (RFC 6455: try again later).
CLOSE_TOO_SLOW = 1013
#: Seconds a close handshake may take before the socket is cut.
CLOSE_WAIT = 10.0
#: Seconds an end waits for its record at most (a database that does not answer must not
#: stop a client's events: it may then, rarely, get that end twice).
GATE_WAIT = 5.0


class Gate:
    """A wait in a socket's queue: the frames after it are written once ``task`` is done (the
    record that the end after it is told), or after ``GATE_WAIT`` seconds whatever happens."""

    __slots__ = ("task",)

    def __init__(self, task: "asyncio.Future[Any]") -> None:
        self.task = task


class Outbox:
    """One socket's queue and writer task (frames leave in order)."""

    def __init__(self, key: Key, ws: web.WebSocketResponse, transport: Any, limit: int) -> None:
        self.key = key
        self.ws = ws
        self.transport = transport
        self.limit = limit
        self.frames: Deque[Union[Frame, Gate]] = collections.deque()
        self.bytes = 0
        self.dropped_previews = 0
        self.closed = False
        self._wake = asyncio.Event()
        self.writer: Optional["asyncio.Task[None]"] = None

    async def write(self) -> None:
        try:
            while True:
                while not self.frames:
                    if self.closed:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                frame = self.frames.popleft()
                if isinstance(frame, Gate):
                    await passed(frame)
                    continue
                self.bytes -= len(frame)
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("websocket %s: send failed: %s", self.key[1], exc)

    def gate(self, gate: Gate) -> None:
        """The frames queued after this wait for ``gate``."""
        if not self.closed:
            self.frames.append(gate)
            self._wake.set()

    def put(self, frame: Frame) -> None:
        if self.closed:
            return
        size = len(frame)
        if isinstance(frame, bytes):
            if self.bytes + size > self.limit // 2:
                self.dropped_previews += 1  # a lagging client loses previews first
                return
        elif self.bytes + size > self.limit:
            self._drop_previews(self.bytes + size - self.limit)
            if self.bytes + size > self.limit:
                self._overflow()
                return
        self.frames.append(frame)
        self.bytes += size
        self._wake.set()

    def _drop_previews(self, need: int) -> None:
        kept: Deque[Union[Frame, Gate]] = collections.deque()
        for frame in self.frames:
            if need > 0 and isinstance(frame, bytes):
                need -= len(frame)
                self.bytes -= len(frame)
                self.dropped_previews += 1
            else:
                kept.append(frame)
        self.frames = kept

    def _overflow(self) -> None:
        user, sid = self.key
        log.warning(
            "websocket of client %s (user %s) is too slow: over %d bytes queued; closing it with code %d",
            sid[:80], user, self.limit, CLOSE_TOO_SLOW,
        )
        self.finish()
        asyncio.get_running_loop().create_task(self._close_now())

    async def _close_now(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        try:
            await asyncio.wait_for(self.ws.close(code=CLOSE_TOO_SLOW, message=b"client too slow: reconnect and read /history"), CLOSE_WAIT)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.abort()  # it does not read: the close frame may never get through

    def finish(self) -> None:
        """No more frames: the writer ends once the queue is written."""
        self.closed = True
        self._wake.set()


T = TypeVar("T")


async def within_gate_wait(answer: Awaitable[T], failed: str, default: T) -> T:
    """``answer`` (the store's) awaited ``GATE_WAIT`` seconds at most: a database that fails or
    does not answer must not stop a client's events. Then ``failed`` (a message whose ``%s``
    says why) is logged as a warning and ``default`` given instead."""
    try:
        return await asyncio.wait_for(answer, GATE_WAIT)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - logged; the caller goes on without the answer
        # An exception is always true: its text may be empty (a time-out's is), so name its type then.
        log.warning(failed, str(exc) or type(exc).__name__)
        return default


async def passed(gate: Gate) -> None:
    # The end goes out anyway: maybe twice, never lost.
    await within_gate_wait(asyncio.shield(gate.task), "could not record a prompt's end as told (%s); sending it anyway", None)
