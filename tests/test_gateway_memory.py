"""The gateway's memory stays bounded: a client that stops reading (previews dropped first, then
closed with code 1013 and a log line), uploads streamed to disk, the history bounded in bytes."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import tracemalloc
import uuid
from typing import Any, Callable, Iterator, List

import pytest
import requests
import websocket
from gateway_util import ScriptClient, gateway_over

from comfy_cluster.gateway.auth import User
from comfy_cluster.gateway.history import History
from comfy_cluster.gateway.relay import CLOSE_TOO_SLOW
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import image_workflow

pytestmark = pytest.mark.timeout(90)
Factory = Callable[..., MockCluster]
BOUND = 256 * 1024


def _on_loop(gw: Any, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), gw._loop).result(timeout=30)


def test_a_stalled_client_stays_within_the_bound_then_is_closed(mock_cluster_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="comfy_cluster.gateway.relay")
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, gateway_kwargs={"ws_queue_bytes": BOUND}) as gw:
        cid = str(uuid.uuid4())
        # A client that stops reading at once (small receive buffer, never calls recv).
        ws = websocket.create_connection("ws" + gw.url[4:] + f"/ws?clientId={cid}", timeout=30, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        try:
            wait_until(lambda: gw.relay.connected == 1, message="the socket registered")
            key = ("default", cid)
            progress = {"value": 1, "max": 100, "prompt_id": "p", "node": "x" * 20000}
            preview = struct.pack(">II", 1, 1) + b"\xff" * 20000
            peak = 0
            dropped = 0
            for _ in range(2000):  # ~80 MB offered: far beyond every kernel buffer
                def step() -> Any:
                    gw.relay.send_bytes(key, preview)
                    gw.relay.send(key, "progress", progress)
                    return gw.relay.queued_bytes, gw.relay.dropped_previews(key)

                queued, seen = _on_loop(gw, step)
                peak = max(peak, queued)
                if seen is None:
                    break  # closed
                dropped = seen
            assert peak <= BOUND
            assert dropped > 0, "previews were not dropped first"
            wait_until(lambda: any("too slow" in r.getMessage() for r in caplog.records), message="the log line")
            # The client reads again: what was sent, then the close frame with the code.
            opcode = None
            while opcode != websocket.ABNF.OPCODE_CLOSE:
                opcode, data = ws.recv_data(control_frame=True)
            assert struct.unpack(">H", data[:2])[0] == CLOSE_TOO_SLOW
        finally:
            ws.close()
        wait_until(lambda: gw.relay.connected == 0, message="the slow socket gone")
        # The gateway still serves others.
        client = ScriptClient(gw.url)
        try:
            client.follow(client.run(image_workflow(color=1)))
        finally:
            client.close()


def _multipart(size: int, boundary: str) -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
           "Content-Type: image/png\r\n\r\n").encode()
    chunk = b"\x89" * (256 * 1024)
    sent = 0
    while sent < size:
        part = chunk[: size - sent]
        sent += len(part)
        yield part
    yield f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()


def test_uploads_stream_to_disk_and_are_capped(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    size = 24 * 1024 * 1024
    with gateway_over(cluster, gateway_kwargs={"max_upload_size": 32 * 1024 * 1024}) as gw:
        boundary = uuid.uuid4().hex
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        tracemalloc.start()
        try:
            r = requests.post(gw.url + "/upload/image", data=_multipart(size, boundary), headers=headers, timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status_code == 200, r.text
        assert peak < size // 3, f"{peak} bytes allocated for a {size}-byte upload"
        assert gw.uploads is not None and gw.uploads.total_bytes == size
        over = requests.post(gw.url + "/upload/image", data=_multipart(40 * 1024 * 1024, boundary), headers=headers, timeout=60)
        assert over.status_code == 413
        assert gw.uploads.total_bytes == size  # nothing of the refused one is kept
        import os

        leftovers: List[str] = [n for n in os.listdir(gw.uploads.root) if n.startswith(".incoming")]
        assert leftovers == []


def test_the_history_is_bounded_in_items_and_bytes() -> None:
    admin = User("admin", admin=True, owner="admin")
    history = History(max_items=3, max_bytes=10_000)
    for i in range(5):
        history.add(f"p{i}", "alice", {"outputs": {}, "n": i})
    assert list(history.page(admin)) == ["p2", "p3", "p4"]
    history.note_files("p4", "gpu1", [("output", "", "a.png")])
    history.add("big", "bob", {"outputs": {}, "blob": "x" * 6000})
    history.add("big2", "bob", {"outputs": {}, "blob": "y" * 6000})
    assert list(history.page(admin)) == ["big2"] and history.bytes <= 10_000
    assert history.files == {}  # the files of dropped items are forgotten too


def test_the_gateway_history_bound_is_settable(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, gateway_kwargs={"history_items": 2, "history_bytes": 1024 * 1024}) as gw:
        client = ScriptClient(gw.url)
        try:
            ids = [client.run(image_workflow(color=i)) for i in range(3)]
            for pid in ids:
                client.follow(pid)
            kept = list(requests.get(gw.url + "/history", timeout=5).json())
            assert len(kept) == 2 and set(kept) <= set(ids)  # (the pool may run them in any order)
        finally:
            client.close()
