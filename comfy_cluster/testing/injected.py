"""The faults issue 11's fault matrix needs, as a mixin of :class:`MockComfyServer`: faults of
one route (a burst of 500s on ``/history``, accept-then-stall on ``POST /prompt``), a timed
refusal window (a network split), an old server ignoring the id in ``/interrupt``, half-open
and late-noticed websockets, and a record of every execution with the input bytes it read.

Kept apart from the server module so that the server keeps only small hooks into it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import http
import logging
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, TypeVar, Union

from aiohttp import web

from .engine import Engine, Execution
from .faults import Fault, RouteFault, parse_route_fault
from .route_faults import RouteRule, RouteRules, route_key
from .wsclient import WsClient

__all__ = ["InjectedFaults"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_CALL_TIMEOUT = 10.0
_PLAIN_500 = "500 Internal Server Error\n\nServer got itself in trouble"


class InjectedFaults:
    """Fault injection of a :class:`MockComfyServer` beyond its standing faults; every public
    method may be called from any thread other than the server's own."""

    # Provided by MockComfyServer.
    _name: str
    _lock: threading.RLock
    _engine: Optional[Engine]
    _fault: Optional[Fault]
    _route_rules: RouteRules
    _held: Set["asyncio.Task[Any]"]
    _release: Optional[asyncio.Event]
    _refuse_window: Optional["asyncio.Task[None]"]
    _muted: Optional[Set[str]]
    _lost_types: "collections.Counter[str]"
    _answered: Dict[str, int]
    _sockets: Dict[str, WsClient]
    _all_ws: Set[WsClient]

    @property
    def running(self) -> bool:  # pragma: no cover - overridden by the server
        raise NotImplementedError

    def _call(self, factory: Callable[[], Awaitable[_T]], timeout: float = _CALL_TIMEOUT) -> _T:  # pragma: no cover
        raise NotImplementedError

    async def _apply_fault(self, fault: Optional[Fault]) -> None:  # pragma: no cover
        raise NotImplementedError

    # --- faults of one route, windows, old-server behaviour, records (issue 11) -----------

    def fail_route(
        self,
        path: str,
        kind: Union[RouteFault, str] = RouteFault.ERROR_500,
        *,
        count: Optional[int] = None,
        method: Optional[str] = None,
        delay: Optional[float] = None,
    ) -> None:
        """Make the next ``count`` requests to ``path`` (None: all, until cleared) show ``kind``:
        ``500``, another HTTP error status such as ``"429"`` (a proxy's answer), ``hang`` (unanswered, the handler does not run), ``reset`` (connection cut) or
        ``stall`` (the handler runs, then the answer is held). Held requests wait ``delay``
        seconds, or until :meth:`release_held` / :meth:`clear_route_faults` when None.
        ``path`` also takes the routes below it (``/history`` takes ``/history/<id>``); the
        ``/api`` prefix is ignored. Rules are tried in the order they were added."""
        parsed = parse_route_fault(kind)
        status = int(kind) if parsed is RouteFault.STATUS and isinstance(kind, str) else 500
        if count is not None and count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if delay is not None and delay < 0:
            raise ValueError("delay must not be negative")
        self._route_rules.add(RouteRule(path=path, kind=parsed, method=method, remaining=count, delay=delay, status=status))
        logger.info("mock %s: %s %s -> %s (%s)", self._name, method or "*", path, parsed.value, count or "until cleared")

    def stall_prompt(self, delay: Optional[float] = None, count: Optional[int] = None) -> None:
        """Accept-then-stall on ``POST /prompt``: the prompt is queued and runs, but the answer
        comes ``delay`` seconds late (None: never, until released or cleared)."""
        self.fail_route("/prompt", RouteFault.STALL, method="POST", count=count, delay=delay)

    def clear_route_faults(self) -> None:
        """Remove every route fault and answer every held request now."""
        self._route_rules.clear()
        if self.running:
            self.release_held()

    def route_faults(self) -> List[RouteRule]:
        """The route faults still active (with their ``hits`` so far)."""
        return self._route_rules.active()

    def held_requests(self) -> int:
        """Requests held by a ``hang`` or ``stall`` route fault right now."""
        return len(self._held)

    def release_held(self) -> int:
        """Answer the held requests now (a hung one then runs its handler); returns how many."""

        async def release() -> int:
            event, self._release = self._release, asyncio.Event()
            if event is not None:
                event.set()
            await asyncio.sleep(0)
            return len(self._held)

        count = len(self._held)
        self._call(release)
        return count

    async def _route_fault(
        self, rule: RouteRule, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if rule.kind is RouteFault.ERROR_500:
            return web.Response(status=500, text=_PLAIN_500, content_type="text/plain")
        if rule.kind is RouteFault.STATUS:  # what a proxy in front of ComfyUI answers
            phrase = next((h.phrase for h in http.HTTPStatus if h.value == rule.status), "Error")
            return web.Response(status=rule.status, text=f"{rule.status} {phrase}", content_type="text/plain")
        if rule.kind is RouteFault.RESET:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client
        if rule.kind is RouteFault.HANG:
            await self._hold(rule.delay)
            return await handler(request)
        response = await handler(request)  # STALL: the work is done ...
        await self._hold(rule.delay)  # ... and the answer is late, or never comes
        return response

    async def _hold(self, delay: Optional[float]) -> None:
        if self._release is None:
            self._release = asyncio.Event()
        release = self._release
        task = asyncio.current_task()
        assert task is not None
        self._held.add(task)
        try:
            if delay is None:
                await release.wait()
            else:
                try:
                    await asyncio.wait_for(release.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._held.discard(task)

    def refuse_for(self, seconds: float, wait: bool = False) -> None:
        """A network split of ``seconds``: refuse connections (open ones are cut), keep the
        queue and the running job, then listen again. Returns at once, or once back (``wait``)."""
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("seconds must not be negative")

        async def window() -> "asyncio.Task[None]":
            if self._refuse_window is not None:
                self._refuse_window.cancel()
            await self._apply_fault(Fault.REFUSE)

            async def back() -> None:
                try:
                    await asyncio.sleep(seconds)
                    if self._fault is Fault.REFUSE:
                        await self._apply_fault(None)
                finally:
                    if self._refuse_window is asyncio.current_task():
                        self._refuse_window = None

            task = asyncio.get_running_loop().create_task(back())
            self._refuse_window = task
            return task

        task = self._call(window)
        logger.info("mock %s: refusing for %.2fs", self._name, seconds)
        if wait:

            async def until_back() -> None:
                await asyncio.shield(task)

            self._call(until_back, timeout=seconds + _CALL_TIMEOUT)

    def _set_engine_flag(self, name: str, value: bool) -> None:
        """Set a behaviour flag of the running server's engine (under the server's lock)."""
        if self._engine is None:
            raise RuntimeError("start the server first")
        with self._lock:
            setattr(self._engine, name, bool(value))

    @property
    def interrupt_ignores_id(self) -> bool:
        """True: ``/interrupt`` stops whatever runs, whatever prompt_id it names (ComfyUI
        before the prompt_id form, still common on studio servers)."""
        return bool(self._engine and self._engine.ignore_interrupt_id)

    @interrupt_ignores_id.setter
    def interrupt_ignores_id(self, value: bool) -> None:
        self._set_engine_flag("ignore_interrupt_id", value)

    @property
    def sends_execution_success(self) -> bool:
        """False: a job's success is told only by ``executing`` null, with no
        ``execution_success`` frame before it (ComfyUI before that event existed)."""
        return bool(self._engine is None or self._engine.sends_execution_success)

    @sends_execution_success.setter
    def sends_execution_success(self, value: bool) -> None:
        self._set_engine_flag("sends_execution_success", value)

    def mute_websockets(self, client_id: Optional[str] = None) -> None:
        """Lose every frame to ``client_id``'s socket (None: all sockets) while the sockets stay
        open: a half-open connection. :meth:`unmute_websockets` ends it."""
        with self._lock:
            muted = set(self._muted or ())
            muted.add(client_id if client_id is not None else "*")
            self._muted = muted

    def unmute_websockets(self) -> None:
        with self._lock:
            self._muted = None

    def frames_lost(self, frame_type: str) -> int:
        """How many frames of ``frame_type`` (``"executed"``, ``"progress"``, ...) muting has
        lost so far: a test waits on this rather than on the work that precedes a frame."""
        with self._lock:
            return self._lost_types[frame_type]

    def drop_websockets_late(self) -> int:
        """Cut every websocket, but notice each close only after its client has reconnected
        with the same clientId; ComfyUI then drops the *new* socket's registration (it pops
        whatever holds the sid), so that client gets no more events. Returns how many."""

        async def drop() -> int:
            with self._lock:
                clients = list(self._all_ws)
            for client in clients:
                client.late = True
                client.abort()
            await asyncio.sleep(0)
            return len(clients)

        return self._call(drop)

    async def _notice_late(self, client: WsClient) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CALL_TIMEOUT
        while loop.time() < deadline and self.running:
            with self._lock:
                current = self._sockets.get(client.sid)
            if current is not None and current is not client:
                return
            await asyncio.sleep(0.01)  # the loop's own poll of a dict; nothing to await

    @property
    def executions(self) -> List[Execution]:
        """Every execution started, in order, across restarts (copies; see :class:`Execution`)."""
        with self._lock:
            records = list(self._engine.executions) if self._engine else []
            return [dataclasses.replace(r, inputs=dict(r.inputs)) for r in records]

    def execution_counts(self) -> Dict[str, int]:
        """How many times each prompt_id started executing."""
        counts: Dict[str, int] = {}
        for record in self.executions:
            counts[record.prompt_id] = counts.get(record.prompt_id, 0) + 1
        return counts

    def answered(self, path: str) -> int:
        """How many requests to ``path`` (``/api`` prefix ignored) its handler has answered,
        e.g. to know that a client has read ``/object_info`` again."""
        with self._lock:
            return self._answered.get(route_key(path), 0)

    def _note_answered(self, path: str) -> None:
        key = route_key(path)
        with self._lock:
            self._answered[key] = self._answered.get(key, 0) + 1
