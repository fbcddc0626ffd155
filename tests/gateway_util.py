"""Helpers of the gateway tests: a gateway over a mock cluster, and two kinds of clients.

* :class:`NukeRemoteClient` behaves on the wire as ComfyUI-for-Nuke's remote mode does (see
  ``shared/clients/comfyui-for-nuke.md``): uploads frames into a subfolder, starts its socket
  in a thread and posts without waiting for it, follows ``progress``/``executing``, treats
  ``executing`` with ``node: null`` as done, probes ``/view`` by predicted names until a
  non-200, and cancels with a bodied ``/interrupt`` plus ``/queue`` delete.
* :class:`ScriptClient` is a plain script: opens its socket, posts, follows its prompt_id,
  reads ``/history`` and ``/view``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
import uuid
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import requests
import websocket

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.testing import MockCluster, wait_until

# Outages in the gateway tests are stopped servers (refused at once), never hangs: the
# timeouts only bound a hang, so a loaded machine's slow answer is not taken for an outage.
FAST_POOL = dict(ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0, status_ttl=0.5)
Frame = Union[Dict[str, Any], bytes]


@contextlib.contextmanager
def gateway_over(cluster: MockCluster, token: Optional[str] = None, gateway_kwargs: Optional[Dict[str, Any]] = None, **pool_kwargs: Any) -> Iterator[Gateway]:
    """A started gateway (free port) over ``cluster``; the gateway and its pool are closed after."""
    kwargs = dict(FAST_POOL, **pool_kwargs)
    servers = [{"url": s.url, "name": s.name, **kwargs.pop(f"server_{s.name}", {})} for s in cluster]
    pool = ServerPool(servers, **kwargs)
    gw = Gateway(pool, port=0, token=token, **(gateway_kwargs or {}))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        pool.close()


def png_rgb(data: bytes) -> Tuple[int, int, int]:
    """The first pixel of an 8-bit RGB PNG (the mock's images are one colour)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompressobj().decompress(idat, 4)
    return raw[1], raw[2], raw[3]


def folder_colour(files: Sequence[bytes]) -> Tuple[int, int, int]:
    """The colour the mock's VHS_LoadImagesPath gives a folder (hash of its files, by name)."""
    d = hashlib.sha256(b"".join(files)).digest()
    return d[0], d[1], d[2]


def loaded_colour(file_bytes: bytes) -> Tuple[int, int, int]:
    """The colour the mock's LoadImage gives an image file (from its content hash)."""
    d = hashlib.sha256(file_bytes).digest()
    return d[0], d[1], d[2]


class _Socket:
    """A client websocket read by a thread; frames kept in order, waited on with a condition."""

    def __init__(self, url: str, client_id: str, headers: Sequence[str] = (), gate: Optional[threading.Event] = None) -> None:
        self.frames: List[Frame] = []
        self.error: Optional[BaseException] = None
        self._cond = threading.Condition()
        self._ws: Optional[websocket.WebSocket] = None
        self._closed = False
        ws_url = "ws" + url[len("http") :] + f"/ws?clientId={client_id}"
        self._thread = threading.Thread(target=self._run, args=(ws_url, list(headers), gate), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: List[str], gate: Optional[threading.Event]) -> None:
        try:
            if gate is not None:
                gate.wait(30)
            ws = websocket.create_connection(url, header=headers, timeout=30)
            with self._cond:
                self._ws = ws
            while not self._closed:
                raw = ws.recv()
                frame: Frame = raw if isinstance(raw, bytes) else json.loads(raw)
                with self._cond:
                    self.frames.append(frame)
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - kept for the test to see
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 20.0) -> List[Frame]:
        """Frames so far once one satisfies ``predicate``."""
        with self._cond:
            ok = self._cond.wait_for(lambda: any(predicate(f) for f in self.frames) or (self.error is not None and not self._closed), timeout)
            if self.error is not None and not self._closed:
                raise AssertionError(f"client socket failed: {self.error!r}")
            assert ok, f"no such frame within {timeout} s; got {[f.get('type') if isinstance(f, dict) else 'binary' for f in self.frames]}"
            return list(self.frames)

    def close(self) -> None:
        self._closed = True
        with self._cond:
            ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close(timeout=1)


def is_done(prompt_id: str) -> Callable[[Frame], bool]:
    return lambda f: isinstance(f, dict) and f.get("type") == "executing" and f["data"].get("node") is None and f["data"].get("prompt_id") == prompt_id


def of_prompt(frames: Sequence[Frame], prompt_id: str) -> List[Dict[str, Any]]:
    """The JSON frames about ``prompt_id``."""
    return [f for f in frames if isinstance(f, dict) and isinstance(f.get("data"), dict) and f["data"].get("prompt_id") == prompt_id]


class ScriptClient:
    """A plain script client: socket first, then post, follow by prompt_id, read history."""

    def __init__(self, url: str, token: Optional[str] = None, cookies: Optional[Dict[str, str]] = None) -> None:
        self.url = url
        self.client_id = str(uuid.uuid4())
        self.http = requests.Session()
        headers = [f"Authorization: Bearer {token}"] if token else []
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        if cookies:  # a signed-in browser: its session cookie on every request and the socket
            self.http.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            headers.append("Cookie: " + self.http.headers["Cookie"])
        self.socket = _Socket(url, self.client_id, headers)
        self.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")

    def post(self, prompt: Dict[str, Any], **extra: Any) -> requests.Response:
        return self.http.post(self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id, **extra}, timeout=10)

    def run(self, prompt: Dict[str, Any], **extra: Any) -> str:
        r = self.post(prompt, **extra)
        assert r.status_code == 200, r.text
        return str(r.json()["prompt_id"])

    def follow(self, prompt_id: str, timeout: float = 20.0) -> List[Dict[str, Any]]:
        return of_prompt(self.socket.wait_for(is_done(prompt_id), timeout), prompt_id)

    def history(self, prompt_id: str) -> Dict[str, Any]:
        item: Dict[str, Any] = self.http.get(f"{self.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
        return item

    def view(self, f: Dict[str, Any]) -> requests.Response:
        return self.http.get(self.url + "/view", params={k: f[k] for k in ("filename", "subfolder", "type")}, timeout=10)

    def close(self) -> None:
        self.socket.close()
        self.http.close()


class NukeRemoteClient:
    """ComfyUI-for-Nuke in remote mode, as described on the wire (no code of it)."""

    def __init__(self, url: str, user: str = "artist", script: str = "shot010", n: int = 1) -> None:
        self.url = url
        self.client_id = f"{user}:{script}:{n}"
        self.http = requests.Session()
        self.socket: Optional[_Socket] = None

    def upload_frames(self, frames: Sequence[bytes], subfolder: str, pattern: str = "frame.{:04d}.png") -> List[str]:
        """One ``POST /upload/image`` per frame; the names LoadImage uses (``sub/name``)."""
        names = []
        for i, data in enumerate(frames, start=1):
            r = self.http.post(
                self.url + "/upload/image",
                files={"image": (pattern.format(i), data, "image/png")},
                data={"subfolder": subfolder, "type": "input", "overwrite": "true"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            answer = r.json()
            names.append(f"{answer['subfolder']}/{answer['name']}")
        return names

    def upload_sequence(self, frames: Sequence[bytes], code: str) -> str:
        """Its remote mode: the rendered frames ``<code>_00001.png``... into subfolder
        ``code`` (the request names no type); the folder its loader then reads, derived from
        the server's ``argv[0]`` in ``/system_stats`` as ``<ComfyUI folder>/input/<code>``."""
        for i, data in enumerate(frames, start=1):
            r = self.http.post(self.url + "/upload/image", files={"image": (f"{code}_{i:05d}.png", data)},
                               data={"subfolder": code, "overwrite": "true"}, timeout=10)
            assert r.status_code == 200, r.text
        argv = self.http.get(self.url + "/system_stats", timeout=10).json()["system"]["argv"]
        return os.path.join(os.path.dirname(argv[0]), "input", code)

    def run(self, prompt: Dict[str, Any], socket_gate: Optional[threading.Event] = None) -> str:
        """Start the socket in a thread and post at once, without waiting for it."""
        if self.socket is None:
            self.socket = _Socket(self.url, self.client_id, ["User-Agent: nuke"], gate=socket_gate)
        r = self.http.post(self.url + "/prompt", json={"client_id": self.client_id, "prompt": prompt, "extra_data": {}}, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["prompt_id"])

    def wait_done(self, prompt_id: str, timeout: float = 20.0) -> List[Frame]:
        assert self.socket is not None
        return self.socket.wait_for(is_done(prompt_id), timeout)

    def collect(self, prefix: str, subfolder: str, ext: str = "png") -> List[bytes]:
        """Outputs by predicted names: ``<prefix>_00001_.<ext>``, counting up until not 200."""
        out: List[bytes] = []
        counter = 1
        while True:
            r = self.http.get(
                self.url + "/view", params={"filename": f"{prefix}_{counter:05d}_.{ext}", "subfolder": subfolder, "type": "output"}, timeout=10
            )
            if r.status_code != 200:
                return out
            out.append(r.content)
            counter += 1

    def cancel(self) -> None:
        """Its cancel (also sent when a run ends): find its own prompt in ``/queue`` by the
        ``client_id`` in each item's extra data; ``/interrupt`` with ``{"delete": [id]}`` if
        it runs, else ``/queue`` with the same body if it waits."""
        queue = self.http.get(self.url + "/queue", timeout=10).json()

        def find(items: List[Any]) -> Optional[str]:
            return next((item[1] for item in items if item[3].get("client_id") == self.client_id), None)

        running = find(queue["queue_running"])
        target = running or find(queue["queue_pending"])
        if target:
            endpoint = "/interrupt" if running else "/queue"
            self.http.post(self.url + endpoint, json={"delete": [target]}, timeout=10)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.http.close()


def running_on(cluster: MockCluster, timeout: float = 10.0) -> Any:
    """The mock server with a job running (waits for one)."""
    return wait_until(lambda: next((s for s in cluster if s.queue_snapshot()[0]), None), timeout, message="a running job")
