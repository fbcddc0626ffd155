"""A faithful mock ComfyUI server: aiohttp on its own event loop in a daemon thread, and the
blocking work of its jobs on a worker thread beside it (as ComfyUI's ``prompt_worker``).

:class:`MockComfyServer` answers ComfyUI 0.3.64's HTTP API and websocket with the same
shapes and message order as a real server (see ``shared/comfyui-api``), runs jobs one at a
time with the mock node types of :mod:`.nodes`, and can be told to misbehave while it runs
(:meth:`MockComfyServer.set_fault`, :meth:`~MockComfyServer.set_latency`,
:meth:`~MockComfyServer.drop_websockets`, :meth:`~MockComfyServer.restart`,
:meth:`~MockComfyServer.fail_next_job`). Every public method may be called from any thread
other than the server's own.

The listening socket is managed here rather than by an aiohttp site, so that "refuse" and
"restart" can close it and listen again on the same port while the app, the job worker and
(for "refuse") the queue stay alive.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import logging
import mimetypes
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, TypeVar, Union

from aiohttp import WSMsgType, web

from .engine import Engine, EventSink
from .faults import Fault, parse_fault
from .injected import InjectedFaults
from .loader_nodes import LOADER_NODES
from .wsclient import WsClient
from .nodes import BUILTIN_NODES, ModelMemory, NodeDef, NodeEnv
from .pixels import CORE_PIXEL_NODES, NODE_PACKS
from .route_faults import RouteRules
from .webroutes import MockWeb

__all__ = ["MockComfyServer", "DEFAULT_MODELS", "MODEL_FOLDERS", "HUGE_HTTP_BYTES", "HUGE_WS_BYTES", "MAX_UPLOAD_SIZE"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_MODELS = ("v1-5-pruned-emaonly.safetensors",)
#: ComfyUI's model folders (``GET /models``); only checkpoints are filled unless told otherwise.
MODEL_FOLDERS = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
#: Size of an endless HTTP body under Fault.HUGE, and of the websocket frame.
HUGE_HTTP_BYTES = 64 * 1024 * 1024
HUGE_WS_BYTES = 32 * 1024 * 1024
_HUGE_CHUNK = b"x" * 65536
_RAM_TOTAL = 32 * 1024**3
_RAM_FREE = 28 * 1024**3
# aiohttp's own answer when a handler raises: ComfyUI's "body is not JSON" looks like this.
_PLAIN_500 = "500 Internal Server Error\n\nServer got itself in trouble"
_CALL_TIMEOUT = 10.0


def _plain_500() -> web.Response:
    return web.Response(status=500, text=_PLAIN_500, content_type="text/plain")


def _json(data: Any, status: int = 200) -> web.Response:
    # json.dumps with default separators, like ComfyUI (web.json_response).
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


class _Sink(EventSink):
    def __init__(self, server: "MockComfyServer") -> None:
        self._server = server

    def send(self, event: str, data: Dict[str, Any], sid: Optional[str]) -> None:
        self._server._send_ws(json.dumps({"type": event, "data": data}), sid)

    def send_binary(self, frame: bytes, sid: str) -> None:
        self._server._send_ws(frame, sid)


class MockComfyServer(InjectedFaults):
    """One mock ComfyUI server on 127.0.0.1; see the module docstring.

    ``models`` is the checkpoint list (or a mapping of model folder to file names),
    ``node_types`` the class_type names offered (None: all of :data:`.nodes.BUILTIN_NODES`,
    :data:`.loader_nodes.LOADER_NODES` and the mask nodes of :mod:`.pixels`), ``node_packs``
    custom node packs installed besides (``"ComfyUI-HQ-Image-Save"``: LoadEXR and SaveEXR),
    ``speed`` divides the time TestSleep and KSampler take, ``web_extensions`` stands for
    custom node packs' web folders (see :mod:`.webroutes`). ``model_load_seconds``: a job
    whose checkpoint differs from the one this server last loaded takes that much longer (at
    speed 1), and a loaded checkpoint shows in ``/system_stats`` VRAM.
    """

    def __init__(
        self,
        *,
        name: str = "mock",
        speed: float = 1.0,
        models: Union[Iterable[str], Mapping[str, Iterable[str]]] = DEFAULT_MODELS,
        node_types: Optional[Iterable[str]] = None,
        node_packs: Iterable[str] = (),
        version: str = "0.3.64",
        device_name: str = "cpu",
        vram_total: Optional[int] = None,
        vram_free: Optional[int] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: Optional["ssl.SSLContext"] = None,
        web_extensions: Optional[Mapping[str, Mapping[str, Union[str, bytes]]]] = None,
        model_load_seconds: float = 0.0,
    ) -> None:
        if not model_load_seconds >= 0:
            raise ValueError(f"model_load_seconds must be >= 0, got {model_load_seconds}")
        self._memory = ModelMemory(load_seconds=float(model_load_seconds))
        if isinstance(models, Mapping):
            self._model_folders: Dict[str, List[str]] = {str(k): [str(m) for m in v] for k, v in models.items()}
        else:
            self._model_folders = {"checkpoints": [str(m) for m in models]}
        packs = list(node_packs)
        unknown_packs = [p for p in packs if p not in NODE_PACKS]
        if unknown_packs:
            raise ValueError(f"unknown node packs {unknown_packs}; known: {sorted(NODE_PACKS)}")
        known = {**BUILTIN_NODES, **LOADER_NODES, **CORE_PIXEL_NODES}
        for pack_nodes in NODE_PACKS.values():
            known.update(pack_nodes)
        if node_types is None:
            registry = {**BUILTIN_NODES, **LOADER_NODES, **CORE_PIXEL_NODES}
        else:
            names = list(node_types)
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"unknown node types {unknown}; known: {sorted(known)}")
            registry = {n: known[n] for n in names}
        for pack in packs:
            registry.update(NODE_PACKS[pack])
        self._registry: Dict[str, NodeDef] = registry
        self._name = name
        self.speed = speed
        self.version = version
        self.device_name = device_name
        is_cpu = device_name.split(":")[0].strip().lower() == "cpu"
        self.vram_total = vram_total if vram_total is not None else (_RAM_TOTAL if is_cpu else 24 * 1024**3)
        self.vram_free = vram_free if vram_free is not None else (_RAM_FREE if is_cpu else 22 * 1024**3)
        self._host = host
        self._port = int(port)
        #: Serve https/wss with this context (None: plain http/ws).
        self._ssl_context = ssl_context
        if host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("mock server %s listens on %s: it has no authentication", name, host)

        self._lock = threading.RLock()
        self._queries: "collections.deque[Tuple[str, Dict[str, str]]]" = collections.deque(maxlen=10000)  # the newest
        self._headers: "collections.deque[Tuple[str, Dict[str, str]]]" = collections.deque(maxlen=10000)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._started = False
        self._stopped = False
        self._tmpdir: Optional[str] = None
        self._env: Optional[NodeEnv] = None
        self._engine: Optional[Engine] = None
        self._runner: Optional[web.AppRunner] = None
        self._listener: Optional[asyncio.AbstractServer] = None
        self._sockets: Dict[str, WsClient] = {}  # ComfyUI's ``sockets[sid]``
        self._all_ws: Set[WsClient] = set()  # every open socket, replaced ones included
        self._generation = 0  # bumped whenever every connection is cut
        self._hung: Set["asyncio.Task[Any]"] = set()
        self._unhang: Optional[asyncio.Event] = None
        self._fault: Optional[Fault] = None
        self._latency = 0.0
        self._request_count = 0
        #: Sizes used by Fault.HUGE; tests of a client's size cap may lower them.
        self.huge_http_bytes = HUGE_HTTP_BYTES
        self.huge_ws_bytes = HUGE_WS_BYTES
        self._coming_back: Optional["asyncio.Task[None]"] = None
        self._route_rules = RouteRules()
        self._held: Set["asyncio.Task[Any]"] = set()
        self._release: Optional[asyncio.Event] = None
        self._refuse_window: Optional["asyncio.Task[None]"] = None
        self._muted: Optional[Set[str]] = None  # client ids whose frames are lost ("*": all)
        self._lost_types: "collections.Counter[str]" = collections.Counter()  # frames lost to muting, by type
        self._answered: Dict[str, int] = {}  # route (without /api) -> requests its handler answered
        self._log_subscribers: Dict[str, bool] = {}  # PATCH /internal/logs/subscribe
        self.web = MockWeb(name, self._all_model_folders, lambda: self._env, web_extensions)

    # --- properties ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The listening port (the real one once started; kept across restarts)."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    @property
    def ws_url(self) -> str:
        """The websocket endpoint, ``ws://127.0.0.1:PORT/ws`` (add ``?clientId=...``)."""
        return "ws" + self.url[len("http") :] + "/ws"

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        value = float(value)
        if not value > 0:
            raise ValueError(f"speed must be positive, got {value}")
        self._speed = value
        loop = getattr(self, "_loop", None)
        engine = getattr(self, "_engine", None)
        if loop is not None and engine is not None and self.running:
            # A sleeping node re-plans its remaining time with the new speed at once.
            loop.call_soon_threadsafe(engine.clock_changed)

    @property
    def models(self) -> List[str]:
        """The checkpoint names this server offers."""
        return list(self._model_folders.get("checkpoints", []))

    @property
    def loaded_model(self) -> Optional[str]:
        """The checkpoint loaded now (None: none since start or restart)."""
        return self._memory.loaded

    @property
    def model_load_seconds(self) -> float:
        return self._memory.load_seconds

    @property
    def model_loads(self) -> int:
        """How many times a checkpoint was loaded since start (a restart does not reset it)."""
        return self._memory.loads

    @property
    def node_types(self) -> List[str]:
        return list(self._registry)

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._started and not self._stopped

    @property
    def fault(self) -> Optional[Fault]:
        return self._fault

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def data_dir(self) -> Optional[str]:
        """The temporary folder holding ``input``, ``output`` and ``temp`` (deleted on stop)."""
        return self._tmpdir

    @property
    def input_dir(self) -> Optional[str]:
        return self._env.input_dir if self._env else None

    @property
    def output_dir(self) -> Optional[str]:
        return self._env.output_dir if self._env else None

    @property
    def temp_dir(self) -> Optional[str]:
        return self._env.temp_dir if self._env else None

    def __repr__(self) -> str:
        return f"MockComfyServer(name={self._name!r}, url={self.url!r}, speed={self._speed})"

    # --- inspection for tests (thread-safe) -----------------------------------------------

    @property
    def executed_prompt_ids(self) -> List[str]:
        """prompt_ids that finished successfully, in order, across restarts."""
        with self._lock:
            return list(self._engine.executed_prompt_ids) if self._engine else []

    @property
    def received_prompts(self) -> List[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
        """(prompt_id, prompt, extra_data) of every prompt accepted by POST /prompt."""
        with self._lock:
            return list(self._engine.received_prompts) if self._engine else []

    @property
    def interrupt_requests(self) -> List[Any]:
        """Bodies posted to /interrupt ({} when there was none)."""
        with self._lock:
            return list(self._engine.interrupt_requests) if self._engine else []

    @property
    def request_queries(self) -> List[Tuple[str, Dict[str, str]]]:
        """``(path, query)`` of every request, in order (what a client or gateway sent)."""
        with self._lock:
            return list(self._queries)

    @property
    def request_headers(self) -> List[Tuple[str, Dict[str, str]]]:
        """``(path, headers)`` of every request, in order; header names in lower case."""
        with self._lock:
            return list(self._headers)

    @property
    def view_queries(self) -> List[Dict[str, str]]:
        """The query of every GET /view, in order."""
        return [q for path, q in self.request_queries if path in ("/view", "/api/view")]

    @property
    def queue_delete_requests(self) -> List[Any]:
        """Bodies posted to POST /queue (``{"delete": [...]}`` or ``{"clear": true}``)."""
        with self._lock:
            return list(self._engine.queue_delete_requests) if self._engine else []

    @property
    def request_count(self) -> int:
        """HTTP requests (websocket handshakes included) the server has started answering."""
        with self._lock:
            return self._request_count

    def queue_snapshot(self) -> Tuple[List[str], List[str]]:
        """(running prompt_ids, pending prompt_ids in run order)."""
        return self._engine.queue_snapshot() if self._engine else ([], [])

    def history_ids(self) -> List[str]:
        return self._engine.history_ids() if self._engine else []

    def connected_clients(self) -> List[str]:
        """Client ids that currently receive events (ComfyUI's socket map)."""
        with self._lock:
            return list(self._sockets)

    def open_websockets(self) -> int:
        """Open websockets, including ones replaced by a newer socket with the same clientId."""
        with self._lock:
            return len(self._all_ws)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> "MockComfyServer":
        """Start the loop thread and listen; returns self once connections are accepted."""
        if self._stopped:
            raise RuntimeError("a stopped MockComfyServer cannot be started again; make a new one")
        if self._started:
            return self
        self._tmpdir = tempfile.mkdtemp(prefix=f"mock-comfy-{self._name}-")
        dirs = {}
        for sub in ("input", "output", "temp"):
            dirs[sub] = os.path.join(self._tmpdir, sub)
            os.makedirs(dirs[sub])
        self._env = NodeEnv(dirs["input"], dirs["output"], dirs["temp"], self._model_folders.get("checkpoints", []), self._memory)
        self._engine = Engine(
            env=self._env,
            registry=self._registry,
            sink=_Sink(self),
            speed=lambda: self._speed,
            lock=self._lock,
            worker_name=f"mock-comfy-{self._name}-worker",
        )
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready: "concurrent.futures.Future[None]" = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._thread_main, args=(loop, ready), name=f"mock-comfy-{self._name}", daemon=True)
        self._started = True
        self._thread.start()
        try:
            ready.result(timeout=_CALL_TIMEOUT)
        except BaseException:
            # The loop thread ends by itself after a failed start (e.g. the port is taken).
            self._stopped = True
            self._thread.join(timeout=_CALL_TIMEOUT)
            self._engine.close(timeout=_CALL_TIMEOUT)
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        logger.info("mock ComfyUI %s listening on %s", self._name, self.url)
        return self

    def _thread_main(self, loop: asyncio.AbstractEventLoop, ready: "concurrent.futures.Future[None]") -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._async_start())
        except BaseException as ex:  # noqa: BLE001 - handed to the starting thread
            ready.set_exception(ex)
        else:
            ready.set_result(None)
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _async_start(self) -> None:
        self._unhang = asyncio.Event()
        self._unhang.set()
        app = self._build_app()
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.05, handler_cancellation=True)
        await runner.setup()
        self._runner = runner
        assert self._engine is not None
        self._engine.start()
        try:
            if self._fault is not Fault.REFUSE:
                await self._go_up()
        except BaseException:
            await self._engine.stop()
            await runner.cleanup()
            raise

    def stop(self) -> None:
        """Close everything and join the thread; idempotent."""
        if not self._started or self._stopped:
            self._stopped = True
            return
        if threading.current_thread() is self._thread:
            raise RuntimeError("stop() must be called from another thread than the server's own")
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._async_stop(), loop).result(timeout=_CALL_TIMEOUT)
            except Exception:  # noqa: BLE001 - stopping must go on regardless
                logger.exception("mock server %s did not stop cleanly", self._name)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CALL_TIMEOUT)
        if self._engine is not None:
            # After the loop: a job it abandoned may still have a node's file write under way,
            # which must end before the data folder goes.
            self._engine.close(timeout=_CALL_TIMEOUT)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        logger.info("mock ComfyUI %s stopped", self._name)

    async def _async_stop(self) -> None:
        await self._go_down()
        if self._engine is not None:
            await self._engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> "MockComfyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- listening -----------------------------------------------------------------------

    async def _go_up(self) -> None:
        """Listen on the configured (then remembered) port."""
        if self._listener is not None:
            return
        assert self._runner is not None and self._runner.server is not None
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                # Coming back on the same port while old connections sit in TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.setblocking(False)
            self._listener = await asyncio.get_running_loop().create_server(
                self._runner.server, sock=sock, backlog=128, ssl=self._ssl_context
            )
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]

    async def _go_down(self) -> None:
        """Stop listening and cut every connection (HTTP, websockets, hung requests)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            self._generation += 1
            clients = list(self._all_ws)
            self._sockets.clear()
            self._all_ws.clear()
        for client in clients:
            client.abort()
        for task in list(self._hung) + list(self._held):
            task.cancel()
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                transport = conn.transport
                if transport is not None:
                    transport.abort()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    # --- calling into the loop from other threads ----------------------------------------

    def _call(self, factory: Callable[[], Awaitable[_T]], timeout: float = _CALL_TIMEOUT) -> _T:
        if not self.running or self._loop is None:
            raise RuntimeError(f"mock server {self._name} is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("call MockComfyServer methods from another thread than its own")

        async def run() -> _T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=timeout)

    # --- faults --------------------------------------------------------------------------

    def set_fault(self, fault: Union[Fault, str, None]) -> None:
        """Switch the standing fault (a :class:`Fault`, its name, or None for none)."""
        parsed = parse_fault(fault)
        if not self.running:
            self._fault = parsed
            return
        self._call(lambda: self._apply_fault(parsed))
        logger.info("mock %s: fault %s", self._name, parsed.value if parsed else "off")

    async def _apply_fault(self, fault: Optional[Fault]) -> None:
        previous, self._fault = self._fault, fault
        assert self._unhang is not None
        if fault is Fault.HANG:
            self._unhang.clear()
        else:
            self._unhang.set()
        if fault is Fault.REFUSE and previous is not Fault.REFUSE:
            await self._go_down()
        elif fault is not Fault.REFUSE and previous is Fault.REFUSE:
            if self._coming_back is None:  # a restart still counting down brings it back itself
                await self._go_up()
        if fault is Fault.HUGE:
            with self._lock:
                clients = list(self._all_ws)
            for client in clients:
                client.queue.put_nowait(self._huge_ws_message())

    def clear_faults(self) -> None:
        """No standing fault, no latency, no pending injected job failure."""
        self.set_fault(None)
        self._latency = 0.0
        self.clear_route_faults()
        self._muted = None
        if self._engine is not None:
            with self._lock:
                self._engine.fail_next_message = None
                self._engine.ignore_interrupt_id = False
                self._engine.sends_execution_success = True

    def set_latency(self, seconds: float) -> None:
        """Delay every HTTP answer and websocket handshake by ``seconds`` (0 switches off)."""
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._latency = seconds

    def drop_websockets(self) -> int:
        """Cut every open websocket now; the server keeps running. Returns how many."""

        async def drop() -> int:
            with self._lock:
                self._generation += 1
                clients = list(self._all_ws)
                self._sockets.clear()
                self._all_ws.clear()
            for client in clients:
                client.abort()
            await asyncio.sleep(0)
            return len(clients)

        count = self._call(drop)
        logger.info("mock %s: dropped %d websockets", self._name, count)
        return count

    def restart(self, down_for: float = 0.0, wait: bool = True) -> None:
        """Die and come back empty: cut all connections, abandon the running job without any
        event, forget queue, history and cache, stay down ``down_for`` seconds, then listen
        on the same port again. Returns once down (``wait=False``) or back up (default).
        Under Fault.REFUSE it stays down until that fault is switched off."""
        engine = self._engine
        assert engine is not None

        async def come_back() -> None:
            try:
                if down_for > 0:
                    await asyncio.sleep(down_for)
                if self._fault is not Fault.REFUSE:
                    await self._go_up()
            finally:
                if self._coming_back is asyncio.current_task():
                    self._coming_back = None

        async def die() -> "asyncio.Task[None]":
            if self._coming_back is not None:
                self._coming_back.cancel()  # a restart during a restart's downtime
            await self._go_down()
            await engine.restart()
            task = asyncio.get_running_loop().create_task(come_back())
            self._coming_back = task
            return task

        task = self._call(die)
        logger.info("mock %s: restarted (down for %.2fs)", self._name, down_for)
        if wait:

            async def back() -> None:
                await task

            self._call(back, timeout=down_for + _CALL_TIMEOUT)

    def fail_next_job(self, message: str = "injected failure") -> None:
        """Make the next job that starts executing fail with ``execution_error``."""
        if self._engine is None:
            raise RuntimeError("start the server first")
        with self._lock:
            self._engine.fail_next_message = message

    def pause_jobs(self) -> None:
        """Freeze running jobs: sleeping nodes (TestSleep, KSampler) make no progress until
        :meth:`resume_jobs`, like a stalled GPU. HTTP, websockets and interrupts still work."""
        self._set_paused(True)

    def resume_jobs(self) -> None:
        """Let paused jobs go on where they stopped."""
        self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        engine = self._engine
        if engine is None:
            raise RuntimeError("start the server first")

        async def apply() -> None:
            engine.paused = paused
            engine.clock_changed()

        self._call(apply)

    @property
    def jobs_paused(self) -> bool:
        return bool(self._engine and self._engine.paused)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing runs or is pending; True if it became idle in time."""
        deadline = time.monotonic() + timeout
        while True:
            running, pending = self.queue_snapshot()
            if not running and not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)  # no event to wait on from another thread; polling is cheap

    # --- websocket -----------------------------------------------------------------------

    def _send_ws(self, message: Union[str, bytes], sid: Optional[str]) -> None:
        """Queue a frame for ``sid``'s socket, or every socket when sid is None (loop thread)."""
        with self._lock:
            if sid is None:
                targets = list(self._sockets.values())
            else:
                client = self._sockets.get(sid)
                targets = [client] if client is not None else []  # no socket: dropped
            muted = self._muted
            if muted is not None:  # a half-open connection: the frames are lost on the way
                kept = [c for c in targets if "*" not in muted and c.sid not in muted]
                if len(kept) < len(targets):
                    self._lost_types[_frame_type(message)] += len(targets) - len(kept)
                targets = kept
        for client in targets:
            client.queue.put_nowait(message)

    def _huge_ws_message(self) -> str:
        padding = "x" * max(0, self.huge_ws_bytes)
        return '{"type": "mock_huge", "data": {"padding": "' + padding + '"}}'

    @staticmethod
    async def _ws_writer(client: WsClient) -> None:
        try:
            while True:
                message = await client.queue.get()
                if isinstance(message, bytes):
                    await client.ws.send_bytes(message)
                else:
                    await client.ws.send_str(message)
        except asyncio.CancelledError:
            raise
        except Exception as ex:  # noqa: BLE001 - a closed socket ends its writer quietly
            logger.debug("websocket %s: send failed: %s", client.sid, ex)

    def _features(self) -> Dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        assert self._engine is not None
        sid = request.query.get("clientId", "")
        ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_SIZE)
        with self._lock:
            if sid:
                self._sockets.pop(sid, None)  # reusing a session: the older socket goes deaf
            else:
                sid = uuid.uuid4().hex
            client = WsClient(sid=sid, ws=ws, generation=self._generation, transport=request.transport)
            # Registered (and the first frame queued) before the handshake answer, so no
            # status frame can slip past between the 101 and the registration.
            self._sockets[sid] = client
            self._all_ws.add(client)
        status = self._engine.status_data()
        status["sid"] = sid
        client.queue.put_nowait(json.dumps({"type": "status", "data": status}))
        if self._engine.running_client() == sid and self._engine.last_node_id is not None:
            client.queue.put_nowait(json.dumps({"type": "executing", "data": {"node": self._engine.last_node_id}}))
        if self._fault is Fault.HUGE:
            client.queue.put_nowait(self._huge_ws_message())
        try:
            await ws.prepare(request)
            client.writer = asyncio.get_running_loop().create_task(self._ws_writer(client))
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        data = None
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        client.queue.put_nowait(json.dumps({"type": "feature_flags", "data": self._features()}))
                    first = False
                elif msg.type == WSMsgType.ERROR:
                    logger.debug("websocket %s closed with %s", sid, ws.exception())
        finally:
            if client.late:
                await self._notice_late(client)
            with self._lock:
                if client.generation == self._generation:
                    # ComfyUI pops whatever socket holds the sid now, even a newer one.
                    self._sockets.pop(sid, None)
                self._all_ws.discard(client)
            if client.writer is not None:
                client.writer.cancel()
        return ws

    # --- the app -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[self._fault_middleware])
        routes: List[Tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/", self._index),
            ("GET", "/ws", self._ws_handler),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._get_features),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/models", self._models),
            ("GET", "/models/{folder}", self._models_folder),
            ("GET", "/embeddings", self._empty_list),
            ("POST", "/upload/image", self._upload_image),
            ("POST", "/upload/mask", self._upload_mask),
            ("PATCH", "/internal/logs/subscribe", self._logs_subscribe),
            ("GET", "/view", self._view),
        ] + self.web.api_routes()
        for prefix in ("", "/api"):
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path if path != "/" or not prefix else prefix + "/", handler)
        for method, path, handler in self.web.plain_routes():
            app.router.add_route(method, path, handler)
        return app

    @web.middleware
    async def _fault_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._latency > 0:
            await asyncio.sleep(self._latency)
        if self._fault is Fault.HANG:
            task = asyncio.current_task()
            assert task is not None and self._unhang is not None
            self._hung.add(task)
            try:
                await self._unhang.wait()  # cancelled when the server stops or dies
            finally:
                self._hung.discard(task)
        fault = self._fault
        with self._lock:
            self._request_count += 1
            self._queries.append((request.path, dict(request.query)))
            self._headers.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        rule = self._route_rules.take(request.method, request.path)
        if rule is not None:
            return await self._route_fault(rule, request, handler)
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if fault is Fault.ERROR_500:
            return _plain_500()
        if fault is Fault.TRUNCATED and is_ws:
            if request.transport is not None:
                request.transport.abort()  # the handshake answer never completes
            return web.Response(status=500)
        try:
            response = await handler(request)
            self._note_answered(request.path)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:  # noqa: BLE001 - ComfyUI answers aiohttp's plain-text 500
            logger.debug("mock %s: %s %s raised", self._name, request.method, request.path, exc_info=True)
            response = _plain_500()
        if is_ws or not isinstance(response, web.Response):
            return response
        is_json = response.content_type == "application/json"
        if fault is Fault.MALFORMED and is_json:
            body = bytes(response.body or b"")  # type: ignore[arg-type]
            garbled = body[: max(1, len(body) // 2)] + b"\x00<<mock: malformed>>"
            return web.Response(status=200, body=garbled, content_type="application/json")
        if fault is Fault.HUGE and is_json:
            return await self._huge_response(request)
        if fault is Fault.TRUNCATED:
            return await self._truncated_response(request, response)
        return response

    async def _truncated_response(self, request: web.Request, response: web.Response) -> web.StreamResponse:
        body = bytes(response.body or b"")  # type: ignore[arg-type]
        stream = web.StreamResponse(status=response.status)
        stream.content_type = response.content_type
        stream.content_length = len(body) + max(64, len(body))  # more than will ever come
        await stream.prepare(request)
        await stream.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.close()  # flush what was written, then hang up
        return stream

    async def _huge_response(self, request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(status=200)
        stream.content_type = "application/json"
        await stream.prepare(request)  # chunked: the client only learns the size by reading
        sent = 0
        try:
            await stream.write(b'{"queue_running": [], "queue_pending": [], "padding": "')
            while sent < self.huge_http_bytes:
                await stream.write(_HUGE_CHUNK)  # waits for the client to drain: no buffering
                sent += len(_HUGE_CHUNK)
            await stream.write(b'"}')
        except (ConnectionError, RuntimeError):
            logger.debug("mock %s: client left a huge answer after %d bytes", self._name, sent)
        return stream

    # --- handlers ------------------------------------------------------------------------

    @property
    def _eng(self) -> Engine:
        assert self._engine is not None
        return self._engine

    async def _read_json(self, request: web.Request) -> Any:
        raw = await request.read()
        return json.loads(raw.decode("utf-8"))  # raises: ComfyUI answers a plain 500

    async def _index(self, request: web.Request) -> web.StreamResponse:
        html = f"<!doctype html><title>mock ComfyUI {self._name}</title><p>mock ComfyUI {self.version}</p>"
        return web.Response(text=html, content_type="text/html")

    async def _get_prompt(self, request: web.Request) -> web.StreamResponse:
        return _json(self._eng.status_data()["status"])

    async def _post_prompt(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        status, answer = self._eng.submit(body)
        return _json(answer, status)

    async def _get_queue(self, request: web.Request) -> web.StreamResponse:
        return _json(self._eng.queue_json())

    async def _post_queue(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise TypeError("queue request must be an object")
        self._eng.post_queue(body)
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_json(request)
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            raise TypeError("interrupt request must be an object")
        self._eng.interrupt(body)
        return web.Response(status=200)

    async def _post_free(self, request: web.Request) -> web.StreamResponse:
        await self._read_json(request)
        return web.Response(status=200)

    async def _get_history(self, request: web.Request) -> web.StreamResponse:
        max_items = request.query.get("max_items")
        offset = request.query.get("offset")
        return _json(
            self._eng.history_json(
                max_items=int(max_items) if max_items is not None else None,
                offset=int(offset) if offset is not None else -1,
            )
        )

    async def _get_history_item(self, request: web.Request) -> web.StreamResponse:
        return _json(self._eng.history_json(prompt_id=request.match_info["prompt_id"]))

    async def _post_history(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise TypeError("history request must be an object")
        self._eng.post_history(body)
        return web.Response(status=200)

    async def _system_stats(self, request: web.Request) -> web.StreamResponse:
        device_type = self.device_name.split(":")[0].strip().lower() or "cpu"
        if device_type not in ("cpu", "cuda", "mps", "xpu", "npu", "mlu"):
            device_type = "cuda"
        used = self._memory.model_bytes if self._memory.loaded is not None else 0
        vram_free = max(0, self.vram_free - used)
        return _json(
            {
                "system": {
                    "os": os.name,
                    "ram_total": _RAM_TOTAL,
                    "ram_free": _RAM_FREE,
                    "comfyui_version": self.version,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "mock",
                    "embedded_python": False,
                    # As the servers of ../shared/real-comfyui are started: clients (LoadEXR
                    # paths) find the input folder here.
                    "argv": ["main.py", "--listen", self._host, "--port", str(self._port)]
                    + (["--input-directory", self._env.input_dir] if self._env is not None else []),
                },
                "devices": [
                    {
                        "name": self.device_name,
                        "type": device_type,
                        "index": None if device_type == "cpu" else 0,
                        "vram_total": self.vram_total,
                        "vram_free": vram_free,
                        "torch_vram_total": self.vram_total,
                        "torch_vram_free": vram_free,
                    }
                ],
            }
        )

    async def _get_features(self, request: web.Request) -> web.StreamResponse:
        return _json(self._features())

    async def _object_info(self, request: web.Request) -> web.StreamResponse:
        return _json(self._eng.object_info())

    async def _object_info_one(self, request: web.Request) -> web.StreamResponse:
        return _json(self._eng.object_info(request.match_info["node_class"]))

    def _all_model_folders(self) -> Dict[str, List[str]]:
        names = list(MODEL_FOLDERS) + [f for f in self._model_folders if f not in MODEL_FOLDERS]
        return {f: list(self._model_folders.get(f, [])) for f in names}

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return _json(list(self._all_model_folders()))

    async def _models_folder(self, request: web.Request) -> web.StreamResponse:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS and folder not in self._model_folders:
            return web.Response(status=404)
        return _json(list(self._model_folders.get(folder, [])))

    async def _empty_list(self, request: web.Request) -> web.StreamResponse:
        return _json([])

    async def _upload_image(self, request: web.Request) -> web.StreamResponse:
        env = self._env
        assert env is not None
        post = await request.post()
        image = post.get("image")
        kind = post.get("type") or "input"
        if not isinstance(kind, str) or env.directory(kind) is None:
            raise ValueError(f"unknown upload type {kind!r}")  # ComfyUI crashes: 500
        upload_dir = os.path.abspath(str(env.directory(kind)))
        if image is None or not isinstance(image, web.FileField):
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = post.get("subfolder", "")
        subfolder = subfolder if isinstance(subfolder, str) else ""
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, path)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        overwrite = post.get("overwrite")
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            counter = 1
            while os.path.exists(path):
                with open(path, "rb") as existing:
                    if hashlib.sha256(existing.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True  # same bytes under the same name: keep the name
                        break
                filename = f"{stem} ({counter}){ext}"
                path = os.path.join(folder, filename)
                counter += 1
        if not duplicate:
            with open(path, "wb") as handle:
                handle.write(data)
        return _json({"name": filename, "subfolder": subfolder, "type": kind})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        env = self._env
        assert env is not None
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        base_dir: Optional[str] = None
        for suffix, kind in ((" [input]", "input"), (" [output]", "output"), (" [temp]", "temp")):
            if filename.endswith(suffix):
                filename, base_dir = filename[: -len(suffix)], env.directory(kind)
                break
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)  # no arbitrary paths
        if base_dir is None:
            base_dir = env.directory(query.get("type", "output"))
        if base_dir is None:
            return web.Response(status=400)
        base_dir = os.path.abspath(base_dir)
        if "subfolder" in query:
            full = os.path.join(base_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), base_dir)) != base_dir:
                return web.Response(status=403)
            base_dir = full
        filename = os.path.basename(filename)
        path = os.path.join(base_dir, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        with open(path, "rb") as handle:
            data = handle.read()
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in ("text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"):
            content_type = "application/octet-stream"  # ComfyUI forces a download for these
        response = web.Response(body=data, content_type=content_type)
        response.headers["Content-Disposition"] = f'filename="{filename}"'
        return response

    # --- /upload/mask and /internal/logs/subscribe ---------------------------------------

    @property
    def log_subscribers(self) -> Dict[str, bool]:
        """clientId -> enabled, as set by ``PATCH /internal/logs/subscribe``."""
        with self._lock:
            return dict(self._log_subscribers)

    async def _logs_subscribe(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_json(request)
        # ComfyUI indexes both keys: a body without them is its plain 500.
        client_id, enabled = body["clientId"], body["enabled"]
        with self._lock:
            self._log_subscribers[str(client_id)] = bool(enabled)
        return web.Response(status=200)

    async def _upload_mask(self, request: web.Request) -> web.StreamResponse:
        """``POST /upload/mask``: ``image`` (the mask) and ``original_ref`` (JSON naming the
        image it applies to). ComfyUI stores the original with the mask as its alpha under the
        upload's name; the mock's images are solid colours, so it stores the original's bytes.
        A missing original stores nothing but still answers the name, as ComfyUI does."""
        env = self._env
        assert env is not None
        post = await request.post()
        image = post.get("image")
        if image is None or not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        ref = json.loads(str(post.get("original_ref")))  # raises: ComfyUI's plain 500
        original = str(ref.get("filename") or "")
        if not original:
            return web.Response(status=400)
        if original[0] == "/" or ".." in original:
            return web.Response(status=400)
        ref_dir = env.directory(str(ref.get("type") or "output"))
        if ref_dir is None:
            return web.Response(status=400)
        ref_dir = os.path.abspath(ref_dir)
        if ref.get("subfolder"):
            full = os.path.abspath(os.path.join(ref_dir, str(ref["subfolder"])))
            if os.path.commonpath((full, ref_dir)) != ref_dir:
                return web.Response(status=403)
            ref_dir = full
        kind = post.get("type") or "input"
        if not isinstance(kind, str) or env.directory(kind) is None:
            raise ValueError(f"unknown upload type {kind!r}")
        upload_dir = os.path.abspath(str(env.directory(kind)))
        subfolder = post.get("subfolder", "")
        subfolder = subfolder if isinstance(subfolder, str) else ""
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filename = image.filename
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, path)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        if post.get("overwrite") not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            counter = 1
            while os.path.exists(path):
                filename = f"{stem} ({counter}){ext}"
                path = os.path.join(folder, filename)
                counter += 1
        source = os.path.join(ref_dir, os.path.basename(original))
        if os.path.isfile(source):
            shutil.copyfile(source, path)
        return _json({"name": filename, "subfolder": subfolder, "type": kind})


def _frame_type(message: Union[str, bytes]) -> str:
    """A frame's ``type`` ("binary" for a preview), for :meth:`MockComfyServer.frames_lost`."""
    if isinstance(message, bytes):
        return "binary"
    try:
        return str(json.loads(message).get("type"))
    except (ValueError, AttributeError):
        return "?"
