"""One websocket per server per pool, read by one thread, routed to jobs by ``prompt_id``.

ComfyUI sends a job's events only to the socket of the ``client_id`` that submitted it, and
two sockets with the same ``client_id`` break each other. So a pool opens exactly one socket
per server under its own ``client_id``, shared by all of its jobs there, and opens it (and
waits for the first ``status`` frame) before the first ``POST /prompt`` to that server.

Listeners are called on the reader thread and must be quick (jobs put the message on a queue).
When the socket drops, every listener gets a ``{"type": "_disconnected"}`` message; after a
reconnect a ``{"type": "_reconnected"}`` one, so each job reconciles from ``/history``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from websocket import WebSocketException

from .config import ServerConfig
from .errors import ServerError
from .resolve import check_resolvable
from .wsframes import (
    ENDING,
    MAX_MESSAGE_BYTES,
    CappedWebSocket,
    abort,
    binary_prompt_id,
    decode,
    describe,
    receive,
    sslopt_for,
)

__all__ = ["ServerSocket", "ServerSockets", "MAX_MESSAGE_BYTES", "sslopt_for"]

log = logging.getLogger(__name__)

Listener = Callable[[Dict[str, Any]], None]


class ServerSocket:
    """The pool's websocket to one server.

    ``on_status(queue_remaining)`` is called for every ``status`` frame (live load).
    ``generation`` counts successful connects; a job that saw generation N and now sees a
    larger one knows the socket reconnected in between.
    """

    def __init__(
        self,
        server: ServerConfig,
        client_id: str,
        *,
        on_status: Optional[Callable[[int], None]] = None,
        connect_timeout: float = 5.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        reconnect_base: float = 0.2,
        reconnect_cap: float = 5.0,
    ) -> None:
        self.server = server
        self.client_id = client_id
        self._on_status = on_status
        self._connect_timeout = connect_timeout
        self._max_message_bytes = max_message_bytes
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._lock = threading.Lock()
        self._listeners: Dict[str, Listener] = {}
        self._ws: Optional[CappedWebSocket] = None
        self._connecting: Optional[CappedWebSocket] = None  # close() aborts a connect under way
        self._thread: Optional[threading.Thread] = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._attempt_done = threading.Condition(self._lock)
        self._waiters = 0  # ensure_connected() calls waiting: the reader must not end under them
        self._exiting = False  # the reader decided to end (nobody listens): start another
        self._last_error: Optional[str] = None
        self._attempts = 0
        self._running: Optional[str] = None  # our prompt running on the server, if seen
        self.generation = 0

    def __repr__(self) -> str:
        return f"ServerSocket({self.server.name!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def register(self, prompt_id: str, listener: Listener) -> None:
        with self._lock:
            self._listeners[prompt_id] = listener

    def unregister(self, prompt_id: str) -> None:
        with self._lock:
            self._listeners.pop(prompt_id, None)

    def _broadcast(self, message: Dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
        for fn in listeners:
            self._call(fn, message)

    @staticmethod
    def _call(fn: Listener, message: Dict[str, Any]) -> None:
        try:
            fn(message)
        except Exception:  # a listener must never kill the reader thread
            log.exception("websocket listener failed")

    def ensure_connected(self, timeout: Optional[float] = None) -> None:
        """Connect if needed and wait for the first ``status`` frame.

        Raises :class:`ServerError` with the reason when the socket cannot be opened in time.
        """
        if self._connected.is_set():
            return
        if self._closed.is_set():
            raise ServerError(f"{self.server.name}: pool is closed", server=self.server.name)
        wait_for = self._connect_timeout + 1.0 if timeout is None else timeout
        with self._lock:
            attempts_before = self._attempts
            thread = self._thread
            if thread is not None and self._exiting:
                # It decided to end as nobody listened, and takes this lock no more: a new
                # reader must connect (waiting on the old one would wait for the whole timeout).
                thread.join()
            if thread is None or not thread.is_alive():
                self._exiting = False
                self._thread = threading.Thread(
                    target=self._run, name=f"comfy-cluster-ws-{self.server.name}", daemon=True
                )
                self._thread.start()
            # Wait for a connect, or for one full attempt to fail: a down server is reported
            # at once instead of after the whole timeout.
            self._waiters += 1
            try:
                self._attempt_done.wait_for(
                    lambda: self._connected.is_set() or self._attempts > attempts_before or self._closed.is_set(),
                    timeout=wait_for,
                )
            finally:
                self._waiters -= 1
            # Only an attempt that ended during this wait says why: an older one's error is stale.
            error = self._last_error if self._attempts > attempts_before else None
        if not self._connected.is_set():
            reason = error or "websocket did not open in time"
            raise ServerError(f"{self.server.name}: websocket: {reason}", server=self.server.name)

    def _connect(self) -> CappedWebSocket:
        # websocket-client checks UTF-8 in pure Python (about 1 s per MiB); decode checks it
        # once, in C, and drops a bad frame instead of the connection.
        ws = CappedWebSocket(sslopt=sslopt_for(self.server), enable_multithread=True, skip_utf8_validation=True)
        ws.max_message_bytes = self._max_message_bytes
        url = f"{self.server.ws_url}/ws?clientId={self.client_id}"
        headers = [f"{k}: {v}" for k, v in self.server.headers.items()]
        with self._lock:
            self._connecting = ws
        try:
            check_resolvable(self.server.host, self.server.port, self._connect_timeout)  # DNS within the timeout too
            ws.connect(url, header=headers, timeout=self._connect_timeout, suppress_origin=True)
            # Events are routed to us once the first status frame (our sid) came. The loop also
            # ends a connect that a close() found with no socket yet to abort.
            while not self._closed.is_set():
                ws.bytes_this_message = 0
                msg = decode(receive(ws))
                if msg is not None and msg.get("type") == "status":
                    self._handle(msg)
                    ws.settimeout(None)
                    return ws
            raise WebSocketException("closed")
        except BaseException:
            ws.shutdown()  # a half-open socket is not left to the garbage collector
            raise
        finally:
            with self._lock:
                self._connecting = None

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                ws = self._connect()
            except Exception as exc:  # any failure to connect: report, back off, retry
                failures += 1
                error = describe(exc)
                log.debug("websocket to %s failed: %s", self.server.name, error)
                with self._lock:
                    self._last_error = error
                    self._attempts += 1
                    self._attempt_done.notify_all()
                    # Callers waiting now are answered by this attempt (its reason, at once).
                    if self._end_if_idle(waiters=False):
                        return  # nobody waits for events: reconnect on the next ensure_connected()
                delay = min(self._reconnect_base * 2 ** (failures - 1), self._reconnect_cap)
                if self._closed.wait(delay):
                    return
                continue
            failures = 0
            with self._lock:
                if self._closed.is_set():
                    ws.shutdown()
                    return
                self._ws = ws
                self.generation += 1
                generation = self.generation
                self._last_error = None
                self._attempts += 1
                self._connected.set()
                self._attempt_done.notify_all()
            log.debug("websocket to %s open (generation %d)", self.server.name, generation)
            if generation > 1:
                self._broadcast({"type": "_reconnected", "data": {"generation": generation}})
            reason = self._read(ws)
            with self._lock:
                self._connected.clear()
                self._ws = None
            ws.shutdown()
            if self._closed.is_set():
                return
            log.info("websocket to %s dropped: %s", self.server.name, reason)
            self._broadcast({"type": "_disconnected", "data": {"reason": reason}})
            with self._lock:
                if self._end_if_idle():
                    return

    def _end_if_idle(self, waiters: bool = True) -> bool:
        """Under the lock, on the reader: True (and the reader ends) when no job listens and
        (``waiters``) no ``ensure_connected()`` waits; the next ``ensure_connected()`` starts
        a new reader."""
        if self._listeners or (waiters and self._waiters):
            return False
        self._exiting = True
        return True

    def _read(self, ws: CappedWebSocket) -> str:
        while not self._closed.is_set():
            try:
                ws.bytes_this_message = 0
                raw = receive(ws)
            except Exception as exc:
                return describe(exc)
            if raw == "" and not ws.connected:
                return "closed by server"
            if isinstance(raw, bytes):
                self._handle_binary(raw)
                continue
            msg = decode(raw)
            if msg is not None:
                self._handle(msg)
        return "closed"

    def _handle(self, msg: Dict[str, Any]) -> None:
        kind = msg.get("type")
        data = msg.get("data")
        if not isinstance(data, dict):
            return
        if kind == "status":
            status = data.get("status")
            info = status.get("exec_info") if isinstance(status, dict) else None
            remaining = info.get("queue_remaining") if isinstance(info, dict) else None
            if isinstance(remaining, int) and not isinstance(remaining, bool) and self._on_status:
                try:
                    self._on_status(remaining)
                except Exception:
                    log.exception("status callback failed")
            return
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            return  # e.g. "executing" without a prompt_id after a reconnect, or custom events
        # Which of our prompts runs now: binary frames (previews) carry no prompt_id, and
        # ComfyUI sends them only to the client whose prompt is running.
        if kind == "execution_start" or (kind == "executing" and data.get("node") is not None):
            self._running = prompt_id
        elif kind in ENDING or (kind == "executing" and data.get("node") is None):
            if self._running == prompt_id:
                self._running = None
        with self._lock:
            fn = self._listeners.get(prompt_id)
        if fn is not None:
            self._call(fn, msg)

    def _handle_binary(self, frame: bytes) -> None:
        """A binary frame (a preview image, text, or preview with metadata): to the listener of
        the prompt it names (type 4 metadata), else of our prompt running on this server."""
        prompt_id = binary_prompt_id(frame) or self._running
        if prompt_id is None:
            return
        with self._lock:
            fn = self._listeners.get(prompt_id)
        if fn is not None:
            self._call(fn, {"type": "_binary", "data": frame})

    def drop(self) -> None:
        """Close the current socket (the reader reconnects if jobs still listen)."""
        with self._lock:
            ws = self._ws
        if ws is not None:
            abort(ws)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = [s for s in (self._ws, self._connecting) if s is not None]
            thread = self._thread
            self._attempt_done.notify_all()
        for ws in sockets:
            abort(ws)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._connect_timeout + 2.0)
        self._connected.clear()


class ServerSockets:
    """The pool's websockets, one per server, each made when a runner first needs it (a
    socket's locks and events cost about 4 KB; a large pool runs jobs on some servers only).
    ``on_status(name, queue_remaining)`` is called for every ``status`` frame. Thread-safe."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        client_id: str,
        *,
        on_status: Callable[[str, int], None],
        connect_timeout: float = 5.0,
    ) -> None:
        self._servers = {s.name: s for s in servers}
        self._client_id = client_id
        self._on_status = on_status
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._made: Dict[str, ServerSocket] = {}
        # Sockets under another clientId (adopted copies of a dead process), with their users.
        self._borrowed: Dict[Tuple[str, str], Tuple[ServerSocket, int]] = {}
        self._closed = False

    def __getitem__(self, name: str) -> ServerSocket:
        with self._lock:
            sock = self._made.get(name)
            if sock is None:
                on_status = self._on_status
                sock = ServerSocket(self._servers[name], self._client_id, connect_timeout=self._connect_timeout,
                                    on_status=lambda remaining: on_status(name, remaining))
                self._made[name] = sock
                if self._closed:
                    sock.close()  # made after close: it never connects
        return sock

    def borrow(self, name: str, client_id: str) -> ServerSocket:
        """A socket to server ``name`` under ``client_id`` (not the pool's: a copy posted by a
        process that died), shared by everyone who borrowed it until each gives it back."""
        with self._lock:
            sock, users = self._borrowed.get((name, client_id), (None, 0))
            if sock is None:
                on_status = self._on_status
                sock = ServerSocket(self._servers[name], client_id, connect_timeout=self._connect_timeout,
                                    on_status=lambda remaining: on_status(name, remaining))
                if self._closed:
                    sock.close()
            self._borrowed[(name, client_id)] = (sock, users + 1)
        return sock

    def give_back(self, name: str, client_id: str) -> None:
        """One borrower of ``(name, client_id)`` is done; the last one closes the socket."""
        with self._lock:
            sock, users = self._borrowed.get((name, client_id), (None, 0))
            if sock is None:
                return
            if users > 1:
                self._borrowed[(name, client_id)] = (sock, users - 1)
                return
            del self._borrowed[(name, client_id)]
        sock.close()

    def made(self) -> List[ServerSocket]:
        """The sockets made so far."""
        with self._lock:
            return list(self._made.values())

    def close(self) -> None:
        """Close every socket made (and any made from now on)."""
        with self._lock:
            self._closed = True
            borrowed = [sock for sock, _ in self._borrowed.values()]
        for sock in self.made() + borrowed:
            sock.close()
