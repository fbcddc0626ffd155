"""Checks against real ComfyUI servers (opt-in), and the mock's fidelity on the same points.

The mock is what the suite runs on; real ComfyUI is what studios run. The tests marked
``real_comfyui`` run only when ``COMFY_REAL_SERVERS`` names real servers with the test nodes
(``host:port,host:port,...`` on 127.0.0.1; see ../shared/real-comfyui/README.md:
``servers.sh start 3 8301 1,2,4`` then ``COMFY_REAL_SERVERS=127.0.0.1:8301,127.0.0.1:8302,127.0.0.1:8303``).
Without it they are deselected (conftest.py), never skipped.
"""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import requests
import websocket

from comfy_cluster import ServerPool
from comfy_cluster.testing import wait_until
from comfy_cluster.testing.png import write_png
from comfy_cluster.testing.workflows import sleep_workflow

REAL = [s.strip() for s in os.environ.get("COMFY_REAL_SERVERS", "").split(",") if s.strip()]


def _servers() -> List[Dict[str, Any]]:
    out = []
    for i, hp in enumerate(REAL):
        host, port = hp.rsplit(":", 1)
        assert host == "127.0.0.1", "tests reach loopback only"
        out.append({"name": f"real{i}", "host": host, "port": int(port), "max_queue": 2})
    return out


def _first_pixel(png: bytes) -> Tuple[int, ...]:
    """The first pixel of an 8-bit RGB/RGBA PNG. Row 0's first pixel is stored raw whatever the
    row filter (every predictor of it is 0), so no unfiltering is needed."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, channels = 8, b"", 3
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            assert data[8] == 8, "8-bit only"
            channels = {2: 3, 6: 4}[data[9]]
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    return tuple(raw[1:1 + channels])


def _deaf_after_old_socket_closes(http_base: str, ws_base: str, cleaned_up: Optional[Callable[[str], None]] = None,
                                  ended: Optional[Callable[[str], None]] = None) -> List[str]:
    """Open two sockets with one clientId, close the older, run a job for that clientId: the
    kinds of message the newer socket still gets. Where the server can be watched (the mock),
    ``cleaned_up(client_id)`` waits for its clean-up of the old socket and ``ended(prompt_id)``
    for the job's end, after which every frame for it has been sent."""
    cid = str(uuid.uuid4())
    ws1 = websocket.create_connection(f"{ws_base}/ws?clientId={cid}", timeout=5)
    ws1.recv()
    ws2 = websocket.create_connection(f"{ws_base}/ws?clientId={cid}", timeout=5)
    ws2.recv()
    ws1.close()
    if cleaned_up is not None:
        cleaned_up(cid)
    else:
        time.sleep(0.5)  # let the real server run the old socket's clean-up (nothing to await)
    prompt_id = str(uuid.uuid4())
    body = {"prompt": sleep_workflow(0.2, 2, seed=uuid.uuid4().int % 2**31), "client_id": cid, "prompt_id": prompt_id}
    assert requests.post(f"{http_base}/prompt", json=body, timeout=10).status_code == 200
    if ended is not None:
        ended(prompt_id)
    ws2.settimeout(0.5 if ended is not None else 3)  # frames already sent, or the job's time and more
    kinds: List[str] = []
    try:
        while True:
            msg = ws2.recv()
            if isinstance(msg, str):
                kinds.append(json.loads(msg)["type"])
    except websocket.WebSocketTimeoutException:
        pass
    finally:
        ws2.close()
    return kinds


def test_mock_models_the_deaf_reconnect_of_real_comfyui(mock_comfy):
    """ComfyUI 0.3.64 (server.py websocket_handler) pops ``sockets[sid]`` when a socket ends,
    even if a newer socket with the same clientId holds it: the newer socket goes deaf. The
    real-server twin below shows the same on real ComfyUI; the library must not rely on a
    reconnected socket under the same clientId."""
    def cleaned_up(cid: str) -> None:
        wait_until(lambda: cid not in mock_comfy.connected_clients(), message="the old socket's clean-up")

    def ended(prompt_id: str) -> None:
        wait_until(lambda: prompt_id in mock_comfy.executed_prompt_ids, message="the job's end")

    assert _deaf_after_old_socket_closes(mock_comfy.url, mock_comfy.ws_url.rsplit("/ws", 1)[0], cleaned_up, ended) == []


@pytest.mark.real_comfyui
def test_real_comfyui_reconnect_under_same_client_id_is_deaf():
    host = REAL[0]
    assert _deaf_after_old_socket_closes(f"http://{host}", f"ws://{host}") == []


@pytest.mark.real_comfyui
def test_real_batch_runs_everywhere_and_downloads(tmp_path):
    wfs = [sleep_workflow(0.5, 3, seed=uuid.uuid4().int % 2**31, prefix=f"cc_{i}") for i in range(9)]
    with ServerPool(_servers()) as pool:
        batch = pool.map_async(wfs)
        results = batch.results(timeout=300)
        assert len({r.server for r in results}) == len(REAL)
        for job in batch.jobs:
            paths = job.download(str(tmp_path), types=("output",))
            assert paths and all(os.path.getsize(p) > 0 for p in paths)


@pytest.mark.real_comfyui
def test_real_two_pools_same_input_name_each_render_their_own(tmp_path):
    """Issue 11 defect 1 on real servers: two artists' plates with one file name."""
    colors = [(250, 10, 10), (10, 250, 10)]
    pools, jobs = [], []
    try:
        for k, rgb in enumerate(colors):
            d = tmp_path / f"artist{k}"
            d.mkdir()
            plate = d / "ComfyUIClusterRun1.png"
            write_png(str(plate), 32, 32, rgb)
            pool = ServerPool(_servers()[:1])
            pools.append(pool)
            # A slow job first, so both uploads happen while the LoadImage jobs wait.
            pool.submit(sleep_workflow(1.0, 2, seed=uuid.uuid4().int % 2**31))
            wf = {
                "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"own{k}"}},
            }
            jobs.append(pool.submit(wf, inputs={"1": str(plate)}))
        for k, job in enumerate(jobs):
            (path,) = job.download(str(tmp_path / f"out{k}"), types=("output",))
            with open(path, "rb") as fh:
                assert _first_pixel(fh.read())[:3] == colors[k]
    finally:
        for pool in pools:
            pool.close()


@pytest.mark.real_comfyui
def test_real_cancel_stops_only_that_job():
    """Another client's job on the same server runs on when ours is cancelled while running."""
    host = REAL[0]
    other_cid = str(uuid.uuid4())
    other_id = str(uuid.uuid4())
    with ServerPool(_servers()[:1]) as pool:
        ours = pool.submit(sleep_workflow(20.0, 20, seed=uuid.uuid4().int % 2**31))
        body = {"prompt": sleep_workflow(1.0, 2, seed=uuid.uuid4().int % 2**31), "client_id": other_cid, "prompt_id": other_id}
        assert requests.post(f"http://{host}/prompt", json=body, timeout=10).status_code == 200
        deadline = time.monotonic() + 60
        while ours.status != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ours.status == "running"
        ours.cancel()
        with pytest.raises(Exception):
            ours.result(timeout=60)
        assert ours.status == "cancelled"
    deadline = time.monotonic() + 60
    item = None
    while time.monotonic() < deadline:
        item = requests.get(f"http://{host}/history/{other_id}", timeout=10).json().get(other_id)
        if item:
            break
        time.sleep(0.2)
    assert item and item["status"]["status_str"] == "success"
