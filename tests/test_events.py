"""The pool's websocket to one server (comfy_cluster/events.py) against a scripted server.

A small websocket server on 127.0.0.1 (aiohttp, its own thread) plays a ComfyUI: it answers
the upgrade, sends its first ``status`` frame, then exactly the frames a test tells it to (a
real ComfyUI 0.3.64's frames, from /work/shared/comfyui-api/transcripts.json, and faults no
real server sends on purpose). What a job relies on: its events, and only its, reach it in
order; previews reach the prompt that runs; a drop is told (``_disconnected``) and a reconnect
too (``_reconnected``), so the job reconciles from /history; a refused or silent server is
reported at once with the reason; a message over the cap is refused; ``close()`` stops the
reader and no socket is opened after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import pytest
from aiohttp import WSMsgType, web

from comfy_cluster.config import ServerConfig
from comfy_cluster.errors import ConfigError, ServerError
from comfy_cluster.events import ServerSocket, ServerSockets, sslopt_for

from helpers import wait_until

PID = "3fa1e423-fdd0-4957-9a82-9942383e9014"
OTHER = "09530630-9029-4c4c-ad85-d026f9ff0c52"
CID = "0d138daf-4496-4e33-806e-eaa7d2cf7aa2"
WAIT = 10.0  # bounds a hang only (a frame on loopback takes milliseconds)
DEATHS: List[Any] = []  # threads that died of an exception during the test (threading.excepthook)

# A real ComfyUI 0.3.64's frames of one prompt (transcripts.json "success", shortened).
RUN: List[Dict[str, Any]] = [
    {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}},
    {"type": "execution_start", "data": {"prompt_id": PID, "timestamp": 1795798121021}},
    {"type": "execution_cached", "data": {"nodes": [], "prompt_id": PID, "timestamp": 1795798121022}},
    {"type": "executing", "data": {"node": "2", "display_node": "2", "prompt_id": PID}},
    {"type": "progress", "data": {"value": 1, "max": 5, "prompt_id": PID, "node": "2"}},
    {"type": "executed", "data": {"node": "3", "display_node": "3", "output": {"images": [
        {"filename": "rec_00004_.png", "subfolder": "", "type": "output"}]}, "prompt_id": PID}},
    {"type": "execution_success", "data": {"prompt_id": PID, "timestamp": 1795798121529}},
    {"type": "executing", "data": {"node": None, "prompt_id": PID}},
    {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}},
]


def status(remaining: int = 0, pad: str = "") -> str:
    data: Dict[str, Any] = {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": CID}
    if pad:
        data["pad"] = pad
    return json.dumps({"type": "status", "data": data})


def preview(fill: bytes = b"i") -> bytes:
    """ComfyUI's PREVIEW_IMAGE frame: type 1, image format 2 (PNG), the image."""
    return (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + fill * 16


def with_meta(meta: Union[bytes, Dict[str, Any], List[Any]], image: bytes = b"img", size: Optional[int] = None) -> bytes:
    """ComfyUI's PREVIEW_IMAGE_WITH_METADATA frame: type 4, the JSON's length, the JSON, the image."""
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return (4).to_bytes(4, "big") + (len(raw) if size is None else size).to_bytes(4, "big") + raw + image


class Script:
    """A websocket server on 127.0.0.1 that sends what the test says, to its latest socket."""

    def __init__(self) -> None:
        self.first: List[Union[str, bytes]] = [status()]  # sent on each connect, in order
        self.reject = False  # answer upgrades with 503
        self.silent = False  # accept upgrades, never send the status frame
        self.rejected = 0
        self.upgrades: List[Tuple[str, Dict[str, str]]] = []  # (clientId, headers) per socket opened
        self.closed = 0  # sockets ended (by either side)
        self._ws: Optional[web.WebSocketResponse] = None
        self._cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="scripted-ws", daemon=True)
        self._thread.start()
        self._runner: Optional[web.AppRunner] = None
        self.port = self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/ws", self._handler)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)  # sockets a test left open are cut
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        if self.reject:
            with self._cond:
                self.rejected += 1
                self._cond.notify_all()
            return web.Response(status=503, text="busy")
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        with self._cond:  # recorded before the first frame: the client is connected once it reads it
            self._ws = ws
            self.upgrades.append((request.query.get("clientId", ""), dict(request.headers)))
            self._cond.notify_all()
        if not self.silent:
            for frame in self.first:
                await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        try:
            async for _ in ws:
                pass
        finally:
            with self._cond:
                self.closed += 1
                self._cond.notify_all()
        return ws

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server(self, name: str = "s1", **extra: Any) -> ServerConfig:
        return ServerConfig(name=name, url=self.url, **extra)

    def wait(self, predicate: Any, what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, WAIT), f"timed out waiting for {what}"

    def send(self, *frames: Union[str, bytes, Dict[str, Any]]) -> None:
        async def go() -> None:
            ws = self._ws
            assert ws is not None
            for frame in frames:
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                elif isinstance(frame, str):
                    await ws.send_str(frame)
                else:
                    await ws.send_str(json.dumps(frame))

        self._call(go())

    def send_raw_text(self, payload: bytes) -> None:
        """A text frame whose bytes are not UTF-8 (no real server sends one)."""
        async def go() -> None:
            assert self._ws is not None
            await self._ws.send_frame(payload, WSMsgType.TEXT)

        self._call(go())

    def close_socket(self) -> None:
        async def go() -> None:
            assert self._ws is not None
            await self._ws.close()

        self._call(go())

    def stop(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)


@pytest.fixture(autouse=True)
def thread_deaths(monkeypatch):
    """A reader thread that dies of an exception fails the test at once (it would otherwise
    only show as frames that never come)."""
    DEATHS.clear()
    monkeypatch.setattr(threading, "excepthook", DEATHS.append)
    yield
    assert not DEATHS, f"a thread died: {DEATHS[0].exc_value!r}"


def no_thread_died() -> None:
    if DEATHS:
        raise AssertionError(f"thread {DEATHS[0].thread.name} died: {DEATHS[0].exc_value!r}")


@pytest.fixture
def script():
    s = Script()
    yield s
    s.stop()


class Listener:
    """What a job's listener receives, in order."""

    def __init__(self) -> None:
        self.q: "queue.Queue[Dict[str, Any]]" = queue.Queue()

    def __call__(self, message: Dict[str, Any]) -> None:
        self.q.put(message)

    def next(self) -> Dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            no_thread_died()
            try:
                return self.q.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError("no message came") from None

    def until(self, last: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The messages up to and including ``last`` (a sentinel sent after the ones checked:
        a single socket keeps the order, so what is not there by then never came)."""
        got = []
        while True:
            msg = self.next()
            got.append(msg)
            if msg == last:
                return got


def sentinel(n: int, pid: str = PID) -> Dict[str, Any]:
    return {"type": "progress", "data": {"value": n, "max": 99, "prompt_id": pid, "node": "sentinel"}}


def ws_threads(name: str) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"comfy-cluster-ws-{name}" and t.is_alive()]


def in_thread(fn: Any) -> "queue.Queue[Any]":
    """Run ``fn`` on a thread; its result or exception arrives on the queue returned."""
    out: "queue.Queue[Any]" = queue.Queue()

    def run() -> None:
        try:
            out.put(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.put(exc)

    threading.Thread(target=run, daemon=True).start()
    return out


# ---------------------------------------------------------------------------------------------
# Routing: a job's events reach it, and only its.


def test_each_prompts_events_reach_its_listener_only_in_order_and_statuses_go_to_on_status(script):
    statuses: List[Any] = []
    mine, other = Listener(), Listener()
    sock = ServerSocket(script.server(headers={"Authorization": "Bearer secret"}), CID, on_status=statuses.append,
                        connect_timeout=2.0)
    try:
        sock.register(PID, mine)
        sock.register(OTHER, other)
        sock.register("forgotten", other)
        sock.unregister("forgotten")
        sock.unregister("forgotten")  # twice: harmless
        sock.unregister("never-registered")
        sock.ensure_connected()
        assert sock.connected and sock.generation == 1
        assert statuses == [0]  # the first status frame: read before ensure_connected returns
        client_id, headers = script.upgrades[0]
        assert client_id == CID
        assert headers.get("Authorization") == "Bearer secret"
        assert "Origin" not in headers  # ComfyUI refuses a websocket whose Origin is not its own
        script.send(*RUN)
        script.send({"type": "progress", "data": {"value": 1, "prompt_id": "forgotten"}})
        script.send(sentinel(1, OTHER), sentinel(1))
        assert mine.until(sentinel(1)) == [m for m in RUN if m["type"] != "status"] + [sentinel(1)]
        assert other.until(sentinel(1, OTHER)) == [sentinel(1, OTHER)]
        assert statuses == [0, 1, 0]
        sock.unregister(PID)
        script.send(sentinel(2), sentinel(2, OTHER))
        assert other.until(sentinel(2, OTHER)) == [sentinel(2, OTHER)]
        assert mine.q.empty()
    finally:
        sock.close()


def test_frames_a_job_cannot_use_are_skipped_and_the_socket_stays(script):
    """Garbage, frames of no prompt, a failing listener or status callback: the reader skips
    them and goes on (the socket is not dropped)."""
    statuses: List[Any] = []

    def on_status(remaining: Any) -> None:
        statuses.append(remaining)
        if remaining == 13:
            raise RuntimeError("status callback fails")

    failing_calls: List[Dict[str, Any]] = []

    def failing(message: Dict[str, Any]) -> None:
        failing_calls.append(message)
        raise RuntimeError("listener fails")

    mine = Listener()
    # Before the first status: garbage, a binary frame holding a status, another event.
    script.first = ["not json", b'{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 7}}}}',
                    json.dumps({"type": "execution_start", "data": {"prompt_id": PID}}), status(0)]
    sock = ServerSocket(script.server(), CID, on_status=on_status, connect_timeout=2.0)
    try:
        sock.register(PID, mine)
        sock.register(OTHER, failing)
        sock.ensure_connected()
        script.send("", "not json", "[1, 2]", '{"type": 5, "data": {"prompt_id": "%s"}}' % PID, '"text"', "[" * 100_000,
                    json.dumps({"data": {"prompt_id": PID}}))
        script.send_raw_text(b'{"type": "progress", "data": {"prompt_id": "' + PID.encode() + b'"}, "x": "\xff\xfe"}')
        script.send({"type": "progress", "data": [PID]}, {"type": "progress", "data": {"prompt_id": 5}},
                    {"type": "executing", "data": {"node": "1"}}, {"type": "custom", "data": "x"})
        script.send({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": True}}}},
                    {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": "3"}}}},
                    {"type": "status", "data": {"status": {"exec_info": {}}}},
                    {"type": "status", "data": {"status": {"exec_info": 4}}},
                    {"type": "status", "data": {"status": "busy"}},
                    {"type": "status", "data": "busy"},
                    {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 13}}}},
                    {"type": "progress", "data": {"prompt_id": OTHER}},
                    sentinel(1))
        assert mine.until(sentinel(1)) == [sentinel(1)]
        assert statuses == [0, 13]
        assert failing_calls == [{"type": "progress", "data": {"prompt_id": OTHER}}]
        assert sock.connected and sock.generation == 1 and len(script.upgrades) == 1
    finally:
        sock.close()


def test_previews_reach_the_prompt_running_or_the_one_their_metadata_names(script):
    """Binary frames carry no prompt_id: ComfyUI sends them to the client whose prompt runs,
    and a type-4 frame names its prompt. Each reaches that prompt's listener, or none."""
    mine, other = Listener(), Listener()
    sock = ServerSocket(script.server(), CID, connect_timeout=2.0)
    binary = lambda frame: {"type": "_binary", "data": frame}  # noqa: E731
    try:
        sock.register(PID, mine)
        sock.register(OTHER, other)
        sock.ensure_connected()
        script.send(preview(b"0"), sentinel(0))  # nothing runs yet: to nobody
        assert mine.until(sentinel(0)) == [sentinel(0)]
        start = {"type": "execution_start", "data": {"prompt_id": PID}}
        script.send(start, preview(b"1"),
                    {"type": "progress", "data": {"value": 1, "prompt_id": OTHER, "node": "5"}},  # not a start
                    {"type": "progress_state", "data": {"prompt_id": PID, "nodes": {}}},  # no node, not an end
                    preview(b"2"),
                    {"type": "executing", "data": {"node": None, "prompt_id": OTHER}},  # another's end: PID still runs
                    preview(b"3"), sentinel(1))
        assert mine.until(sentinel(1)) == [start, binary(preview(b"1")), {"type": "progress_state", "data": {"prompt_id": PID, "nodes": {}}},
                                           binary(preview(b"2")), binary(preview(b"3")), sentinel(1)]
        # Joined mid-run: an executing with a node says which prompt runs.
        executing = {"type": "executing", "data": {"node": "4", "prompt_id": OTHER}}
        script.send(executing, preview(b"4"), sentinel(2, OTHER))
        assert other.until(sentinel(2, OTHER))[-2:] == [binary(preview(b"4")), sentinel(2, OTHER)]
        for end in ({"type": "execution_success", "data": {"prompt_id": OTHER}},
                    {"type": "execution_error", "data": {"prompt_id": OTHER}},
                    {"type": "execution_interrupted", "data": {"prompt_id": OTHER}},
                    {"type": "executing", "data": {"node": None, "prompt_id": OTHER}}):
            script.send(executing, end, preview(b"5"), sentinel(3, OTHER))  # after the end: to nobody
            assert other.until(sentinel(3, OTHER)) == [executing, end, sentinel(3, OTHER)]
        script.send(start, with_meta({"prompt_id": OTHER, "node_id": "4"}), sentinel(4, OTHER))
        assert other.until(sentinel(4, OTHER)) == [binary(with_meta({"prompt_id": OTHER, "node_id": "4"})), sentinel(4, OTHER)]
        script.send(with_meta({"prompt_id": OTHER}, image=b""), sentinel(5, OTHER))  # metadata, no image
        assert other.until(sentinel(5, OTHER)) == [binary(with_meta({"prompt_id": OTHER}, image=b"")), sentinel(5, OTHER)]
        edge = with_meta({"prompt_id": OTHER, "pad": "x" * (65536 - len(json.dumps({"prompt_id": OTHER, "pad": ""})))})
        assert int.from_bytes(edge[4:8], "big") == 65536  # the largest metadata read
        script.send(edge, sentinel(6, OTHER))
        assert other.until(sentinel(6, OTHER)) == [binary(edge), sentinel(6, OTHER)]
        mine.until(start)
        # Frames whose metadata cannot be read go to the prompt running (PID).
        bad = [with_meta({"prompt_id": OTHER, "pad": "x" * (65537 - len(json.dumps({"prompt_id": OTHER, "pad": ""})))}),  # over 64 KiB
               with_meta({"prompt_id": OTHER}, image=b"", size=len(json.dumps({"prompt_id": OTHER})) + 5),  # says more than it holds
               with_meta({"prompt_id": OTHER}, size=(1 << 24) + len(json.dumps({"prompt_id": OTHER}))),  # 16 MiB more
               with_meta(b"\xff\xfe not utf-8"), with_meta(b"{not json"), with_meta(b"[" * 5000),
               with_meta(["a list"]), with_meta({"prompt_id": 5}), with_meta({"no": "prompt"}),
               (9).to_bytes(4, "big") + (4).to_bytes(4, "big") + json.dumps({"prompt_id": OTHER}).encode(),  # not type 4
               b"\x00\x00\x00\x04\x00\x00"]  # too short
        script.send(*bad, sentinel(7))
        assert mine.until(sentinel(7)) == [binary(frame) for frame in bad] + [sentinel(7)]
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# Drops and reconnects.


def test_a_drop_is_told_to_every_listener_and_the_reconnect_too_with_its_generation(script, caplog):
    caplog.set_level(logging.INFO, logger="comfy_cluster.events")
    mine, other = Listener(), Listener()
    sock = ServerSocket(script.server(name="gpu-7"), CID, connect_timeout=2.0, reconnect_base=0.01, reconnect_cap=0.05)
    try:
        sock.register(PID, mine)
        sock.register(OTHER, other)
        sock.ensure_connected()
        script.send(sentinel(1))
        assert mine.until(sentinel(1)) == [sentinel(1)]  # no _reconnected on the first connect
        script.close_socket()
        for listener in (mine, other):
            dropped = listener.next()
            assert dropped == {"type": "_disconnected", "data": {"reason": "closed by server"}}
            assert listener.next() == {"type": "_reconnected", "data": {"generation": 2}}
        assert sock.generation == 2 and [cid for cid, _ in script.upgrades] == [CID, CID]
        script.send(sentinel(2))
        assert mine.until(sentinel(2)) == [sentinel(2)]
        drops = [r for r in caplog.records if r.name == "comfy_cluster.events" and r.levelno == logging.INFO]
        assert len(drops) == 1 and "gpu-7" in drops[0].getMessage() and "closed by server" in drops[0].getMessage()

        sock.drop()  # the pool's own cut (a server it thinks is lost)
        assert mine.next()["type"] == "_disconnected"
        assert mine.next() == {"type": "_reconnected", "data": {"generation": 3}}
    finally:
        sock.close()


def test_a_server_that_refuses_for_a_while_is_reconnected_while_jobs_listen(script):
    mine = Listener()
    sock = ServerSocket(script.server(), CID, connect_timeout=2.0, reconnect_base=0.01, reconnect_cap=0.05)
    try:
        sock.register(PID, mine)
        sock.ensure_connected()
        script.reject = True
        script.close_socket()
        assert mine.next()["type"] == "_disconnected"
        script.wait(lambda: script.rejected >= 3, "three refused reconnects")
        assert not sock.connected
        script.reject = False
        assert mine.next() == {"type": "_reconnected", "data": {"generation": 2}}
        assert sock.connected
    finally:
        sock.close()


def test_without_listeners_a_drop_ends_the_reader_and_the_next_need_reconnects(script):
    sock = ServerSocket(script.server(name="idle"), CID, connect_timeout=2.0, reconnect_base=0.01)
    try:
        sock.ensure_connected()
        script.close_socket()
        wait_until(lambda: not ws_threads("idle"), timeout=WAIT, what="the idle reader gone")
        assert not sock.connected and len(script.upgrades) == 1  # nobody listens: no reconnect
        sock.drop()  # harmless now
        sock.ensure_connected()
        assert sock.connected and len(script.upgrades) == 2 and sock.generation == 2
        threads = ws_threads("idle")
        assert len(threads) == 1 and threads[0].daemon  # never keeps the process alive
    finally:
        sock.close()
    assert not ws_threads("idle")


def waiting_in(thread: threading.Thread) -> bool:
    """True while ``thread`` waits on a condition (its stack, as Python's own tools read it)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name in ("wait", "wait_for") and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


class HeldLog(logging.Handler):
    """A slow log handler (user code): holds the thread that logs ``text`` until ``go`` is set."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.held, self.go = text, threading.Event(), threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage() and not self.go.is_set():
            self.held.set()
            assert self.go.wait(WAIT)


@pytest.mark.parametrize("fault", ["drop", "refusal"])
def test_a_caller_waiting_while_the_reader_decides_to_end_gets_a_socket(script, fault):
    """The reader ends when nobody listens; a job that needs the socket in that moment (a
    slow log handler widens it) must not wait for a reader that is ending (it was told
    'websocket did not open in time' and moved to another server)."""
    logger = logging.getLogger("comfy_cluster.events")
    held = HeldLog("dropped" if fault == "drop" else "failed")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(held)
    sock = ServerSocket(script.server(name="ending"), CID, connect_timeout=WAIT, reconnect_base=0.01)
    try:
        if fault == "drop":
            sock.ensure_connected()
            script.close_socket()
        else:
            script.reject = True
            in_thread(sock.ensure_connected)  # its attempt fails: the reader logs why
        assert held.held.wait(WAIT), "the reader never logged"
        script.reject = False
        assert len(ws_threads("ending")) == 1  # the reader, held in the log handler
        got: "queue.Queue[Any]" = queue.Queue()

        def call() -> None:
            try:
                got.put(sock.ensure_connected())
            except ServerError as exc:
                got.put(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        wait_until(lambda: waiting_in(caller) or not caller.is_alive(), timeout=WAIT, what="the caller waiting")
        held.go.set()  # the reader goes on, to its decision
        outcome = got.get(timeout=WAIT + 2.0)
        if fault == "drop":
            assert outcome is None and sock.connected
        else:  # the attempt under way when it came ended during its wait: its reason, at once
            assert outcome is None or ("503" in str(outcome) and "did not open in time" not in str(outcome)), outcome
            sock.ensure_connected()  # and the next call connects
    finally:
        held.go.set()
        logger.removeHandler(held)
        logger.setLevel(old_level)
        sock.close()
    assert not ws_threads("ending")


# ---------------------------------------------------------------------------------------------
# Failing to connect: the reason, at once.


def test_a_refusing_server_is_reported_at_once_with_the_reason_each_time(script):
    script.reject = True
    sock = ServerSocket(script.server(name="busy"), CID, connect_timeout=2.0)
    try:
        for attempt in (1, 2):
            result = in_thread(lambda: sock.ensure_connected(timeout=3600.0)).get(timeout=WAIT)
            assert isinstance(result, ServerError), result
            assert result.server == "busy"
            assert str(result).startswith("busy: websocket: ") and "503" in str(result)
            assert script.rejected == attempt  # one try each: nobody listens, so no retries
            wait_until(lambda: not ws_threads("busy"), timeout=WAIT, what="the reader gone after the failure")
        script.reject = False
        sock.ensure_connected(timeout=WAIT)  # bounds a hang only: a loaded machine may take seconds
        assert sock.connected
    finally:
        sock.close()


def test_a_server_that_never_sends_its_status_times_out_with_the_reason(script):
    script.silent = True
    sock = ServerSocket(script.server(name="mute"), CID, connect_timeout=0.3)
    patient = ServerSocket(script.server(name="mute"), CID, connect_timeout=30.0)
    try:
        with pytest.raises(ServerError, match=r"^mute: websocket: no answer \(read timed out\)$"):
            sock.ensure_connected()  # the connect's own time-out (0.3 s) ends the try first
        with pytest.raises(ServerError, match=r"^mute: websocket: websocket did not open in time$") as info:
            patient.ensure_connected(timeout=0.3)
        assert info.value.server == "mute"
    finally:
        sock.close()
        patient.close()


def test_close_wakes_a_caller_waiting_for_the_socket_and_stops_a_connect_under_way(script):
    """A server that accepts the websocket but never sends its status: close() must neither
    wait for the connect's time-out (an hour here) nor leave the caller waiting; nothing
    connects after it."""
    script.silent = True
    sock = ServerSocket(script.server(name="late"), CID, connect_timeout=3600.0)
    waiting = in_thread(lambda: sock.ensure_connected(timeout=3600.0))
    script.wait(lambda: len(script.upgrades) == 1, "the upgrade")
    closing = in_thread(sock.close)
    assert closing.get(timeout=WAIT) is None, "close() waited for the connect under way"
    result = waiting.get(timeout=WAIT)
    assert isinstance(result, ServerError) and result.server == "late"
    assert not ws_threads("late")
    script.wait(lambda: script.closed == 1, "the half-open socket closed")
    script.silent = False
    with pytest.raises(ServerError, match="^late: pool is closed$") as info:
        sock.ensure_connected()
    assert info.value.server == "late" and len(script.upgrades) == 1


def test_close_cuts_a_connect_whose_upgrade_gets_no_answer():
    """A server that takes the connection but never answers the upgrade (hung, a stalled
    proxy): close() cuts the handshake at once. websocket-client's own abort() does nothing
    before the upgrade is answered, so close() waited for the connect's time-out (an hour
    here; 5 s in a pool, for every close while a server hangs)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(WAIT)
    conn: Optional[socket.socket] = None
    sock = ServerSocket(ServerConfig(name="hung", url=f"http://127.0.0.1:{listener.getsockname()[1]}"), CID, connect_timeout=3600.0)
    try:
        waiting = in_thread(lambda: sock.ensure_connected(timeout=3600.0))
        conn, _ = listener.accept()
        conn.settimeout(WAIT)
        request = b""
        while b"\r\n\r\n" not in request:  # the whole upgrade sent: the client now waits for its answer
            chunk = conn.recv(4096)
            assert chunk, "the client closed before sending its upgrade"
            request += chunk
        assert request.startswith(b"GET /ws?clientId=")
        closing = in_thread(sock.close)
        assert closing.get(timeout=WAIT) is None, "close() waited for the connect under way"
        result = waiting.get(timeout=WAIT)
        assert isinstance(result, ServerError) and result.server == "hung"
        assert not ws_threads("hung")
        assert conn.recv(1) == b""  # the client's side is shut: nothing left half-open
    finally:
        if conn is not None:
            conn.close()  # first: a close() still waiting on the handshake then ends (the test fails, not hangs)
        sock.close()
        listener.close()


def test_close_stops_the_reader_at_once_even_from_a_listener(script, caplog):
    caplog.set_level(logging.ERROR)
    sock = ServerSocket(script.server(name="closing"), CID, connect_timeout=1.0)
    sock.register(PID, lambda message: sock.close())  # e.g. a job's callback closing the pool
    sock.ensure_connected()
    script.send(sentinel(1))
    wait_until(lambda: not ws_threads("closing"), timeout=WAIT, what="the reader gone")
    assert not sock.connected
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    other = ServerSocket(script.server(name="closing2"), CID, connect_timeout=1.0)
    other.register(PID, Listener())
    other.ensure_connected()
    other.close()
    assert not ws_threads("closing2") and not other.connected  # gone when close() returns
    other.close()  # twice: harmless


# ---------------------------------------------------------------------------------------------
# The message cap.


def test_a_message_over_the_cap_is_refused_and_the_socket_reconnects(script):
    cap = 1000
    # The first status frame is exactly the cap (raw bytes: 4 of header, the rest payload).
    script.first = [status(0, pad="x" * (cap - 4 - len(status(0, pad="x"))+1))]
    assert len(script.first[0]) + 4 == cap
    mine = Listener()
    sock = ServerSocket(script.server(), CID, connect_timeout=2.0, max_message_bytes=cap, reconnect_base=0.01)
    try:
        sock.register(PID, mine)
        sock.ensure_connected()
        fits = {"type": "progress", "data": {"prompt_id": PID, "pad": ""}}
        fits["data"]["pad"] = "x" * (cap - 4 - len(json.dumps(fits)))
        assert len(json.dumps(fits)) + 4 == cap
        script.send(fits)
        assert mine.next() == fits
        over = json.loads(json.dumps(fits))
        over["data"]["pad"] += "x"
        script.send(over)
        dropped = mine.next()
        assert dropped == {"type": "_disconnected", "data": {"reason": f"request failed: websocket message exceeds {cap} bytes"}}
        assert mine.next() == {"type": "_reconnected", "data": {"generation": 2}}
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# The pool's sockets: one per server, borrowed ones shared, none after close().


def test_the_pool_has_one_socket_per_server_each_status_named_by_its_server():
    one, two = Script(), Script()
    statuses: List[Tuple[str, int]] = []
    try:
        two.first = [status(5)]
        sockets = ServerSockets([one.server("a"), two.server("b")], CID, on_status=lambda n, r: statuses.append((n, r)),
                                connect_timeout=2.0)
        assert sockets.made() == []
        a, b = sockets["a"], sockets["b"]
        assert sockets["a"] is a and sockets.made() == [a, b]
        assert repr(a) == "ServerSocket('a', connected=False)"
        a.ensure_connected()
        b.ensure_connected()
        assert repr(a) == "ServerSocket('a', connected=True)"
        assert sorted(statuses) == [("a", 0), ("b", 5)]
        assert [cid for cid, _ in one.upgrades] == [CID] and [cid for cid, _ in two.upgrades] == [CID]
        sockets.close()
        assert not a.connected and not b.connected
        with pytest.raises(ServerError, match="pool is closed"):
            a.ensure_connected()
    finally:
        one.stop()
        two.stop()


def test_the_pools_connect_timeout_is_each_sockets(script):
    script.silent = True
    sockets = ServerSockets([script.server("a")], CID, on_status=lambda n, r: None, connect_timeout=0.3)
    try:
        for sock in (sockets["a"], sockets.borrow("a", "adopted")):
            with pytest.raises(ServerError, match=r"\(read timed out\)$"):
                sock.ensure_connected(timeout=3.0)  # the try ends at 0.3 s, not at a default 5 s
    finally:
        sockets.close()


def test_a_borrowed_socket_is_shared_until_its_last_borrower_gives_it_back(script):
    """Adopted jobs of a dead process: their events come to that process's clientId."""
    statuses: List[Tuple[str, int]] = []
    sockets = ServerSockets([script.server("a")], CID, on_status=lambda n, r: statuses.append((n, r)), connect_timeout=2.0)
    try:
        sockets.give_back("a", "nobody")  # nothing borrowed: harmless
        borrowed = [sockets.borrow("a", "dead-process") for _ in range(3)]
        assert borrowed[0] is borrowed[1] is borrowed[2] and borrowed[0] is not sockets["a"]
        sock = borrowed[0]
        sock.ensure_connected()
        assert script.upgrades[-1][0] == "dead-process" and statuses == [("a", 0)]
        sockets.give_back("a", "dead-process")
        sockets.give_back("a", "dead-process")
        assert sock.connected  # one borrower left
        sockets.give_back("a", "dead-process")
        assert not sock.connected
        again = sockets.borrow("a", "dead-process")
        assert again is not sock  # a new one once all gave it back
        again.ensure_connected()
        sockets.close()  # closes the borrowed ones too
        assert not again.connected
        late, late_borrowed = sockets["a"], sockets.borrow("a", "other")  # made after close: never connect
        for s in (late, late_borrowed):
            with pytest.raises(ServerError, match="pool is closed"):
                s.ensure_connected()
        assert len(script.upgrades) == 2
    finally:
        sockets.close()


def test_wss_names_the_server_whose_ca_certificates_cannot_be_loaded(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    cfg = ServerConfig(name="gpu-3", url="https://127.0.0.1:1", verify_tls=str(bad))
    with pytest.raises(ConfigError, match=r"^gpu-3: verify_tls: cannot load CA certificates from "):
        sslopt_for(cfg)
    assert sslopt_for(ServerConfig(name="plain", url="http://127.0.0.1:1")) == {}
