"""The mock's additions that real clients (and the gateway) rely on: SaveImageWebsocket and
its binary frames, latent preview frames while sampling, /upload/mask, and
PATCH /internal/logs/subscribe."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any, Dict, List, Union

import pytest
import requests
import websocket

from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.png import PNG_SIGNATURE, png_bytes, read_png_size
from comfy_cluster.testing.workflows import txt2img_workflow

import io

pytestmark = pytest.mark.timeout(30)

Frame = Union[Dict[str, Any], bytes]


def _connect(server: MockComfyServer, client_id: str) -> websocket.WebSocket:
    ws = websocket.create_connection(server.ws_url + f"?clientId={client_id}", timeout=10)
    first = json.loads(ws.recv())
    assert first["type"] == "status"
    return ws


def _until_done(ws: websocket.WebSocket, prompt_id: str) -> List[Frame]:
    frames: List[Frame] = []
    while True:
        raw = ws.recv()
        if isinstance(raw, bytes):
            frames.append(raw)
            continue
        msg = json.loads(raw)
        frames.append(msg)
        if msg["type"] == "executing" and msg["data"].get("node") is None and msg["data"].get("prompt_id") == prompt_id:
            return frames


def _post(server: MockComfyServer, prompt: Dict[str, Any], client_id: str) -> str:
    r = requests.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["prompt_id"])


def ws_image_workflow(batch: int = 2, color: int = 0x336699) -> Dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }


def test_save_image_websocket_sends_each_image_as_a_binary_png_frame(mock_comfy: MockComfyServer) -> None:
    cid = str(uuid.uuid4())
    ws = _connect(mock_comfy, cid)
    try:
        pid = _post(mock_comfy, ws_image_workflow(batch=2), cid)
        frames = _until_done(ws, pid)
        # Rerun: IS_CHANGED makes the node run again rather than come from the cache.
        pid2 = _post(mock_comfy, ws_image_workflow(batch=2), cid)
        frames2 = _until_done(ws, pid2)
    finally:
        ws.close()
    for got in (frames, frames2):
        binary = [f for f in got if isinstance(f, bytes)]
        assert len(binary) == 2
        for frame in binary:
            kind, fmt = struct.unpack(">II", frame[:8])
            assert (kind, fmt) == (1, 2)
            assert frame[8:16] == PNG_SIGNATURE
            assert read_png_size(io.BytesIO(frame[8:])) == (16, 8)
            assert frame[8:] == png_bytes(16, 8, (0x33, 0x66, 0x99))
        # Each frame follows a progress update; no "executed" (its UI dict is empty).
        kinds = [f["type"] if isinstance(f, dict) else "binary" for f in got if not (isinstance(f, dict) and f["type"] == "progress_state")]
        assert "executed" not in kinds
        i = kinds.index("binary")
        assert kinds[i - 1] == "progress"
    hist = requests.get(f"{mock_comfy.url}/history/{pid}", timeout=5).json()[pid]
    assert hist["status"]["status_str"] == "success" and hist["outputs"] == {}


def test_save_image_websocket_is_listed_in_object_info(mock_comfy: MockComfyServer) -> None:
    info = requests.get(mock_comfy.url + "/object_info/SaveImageWebsocket", timeout=5).json()
    node = info["SaveImageWebsocket"]
    assert node["output_node"] is True and node["input"]["required"]["images"] == ["IMAGE"]


def test_sampling_sends_a_binary_preview_per_step_to_the_client_only(mock_comfy: MockComfyServer) -> None:
    cid, other = str(uuid.uuid4()), str(uuid.uuid4())
    ws = _connect(mock_comfy, cid)
    bystander = _connect(mock_comfy, other)
    try:
        pid = _post(mock_comfy, txt2img_workflow(steps=3, seed=5), cid)
        frames = _until_done(ws, pid)
        bystander.settimeout(0.5)
        seen: List[Any] = []
        try:
            while True:
                seen.append(bystander.recv())
        except websocket.WebSocketTimeoutException:
            pass
    finally:
        ws.close()
        bystander.close()
    previews = [f for f in frames if isinstance(f, bytes)]
    assert len(previews) == 3
    assert all(struct.unpack(">II", f[:8]) == (1, 2) and f[8:16] == PNG_SIGNATURE for f in previews)
    assert not any(isinstance(f, bytes) for f in seen)


def test_upload_mask_stores_the_original_under_the_new_name(mock_comfy: MockComfyServer) -> None:
    original = png_bytes(8, 8, (1, 2, 3))
    up = requests.post(
        mock_comfy.url + "/upload/image", files={"image": ("base.png", original, "image/png")}, data={"overwrite": "true"}, timeout=5
    )
    assert up.status_code == 200
    mask = png_bytes(8, 8, (0, 0, 0))
    ref = json.dumps({"filename": "base.png", "subfolder": "", "type": "input"})
    r = requests.post(
        mock_comfy.url + "/api/upload/mask",
        files={"image": ("masked.png", mask, "image/png")},
        data={"original_ref": ref, "type": "input", "subfolder": "clipspace"},
        timeout=5,
    )
    assert r.status_code == 200
    assert r.json() == {"name": "masked.png", "subfolder": "clipspace", "type": "input"}
    view = requests.get(mock_comfy.url + "/view", params={"filename": "masked.png", "subfolder": "clipspace", "type": "input"}, timeout=5)
    assert view.status_code == 200 and view.content == original


@pytest.mark.parametrize(
    "ref, status",
    [
        ({"filename": "", "type": "input"}, 400),
        ({"filename": "../x.png", "type": "input"}, 400),
        ({"filename": "x.png", "type": "input", "subfolder": "../../etc"}, 403),
        ({"filename": "x.png", "type": "nowhere"}, 400),
    ],
)
def test_upload_mask_refuses_bad_references(mock_comfy: MockComfyServer, ref: Dict[str, Any], status: int) -> None:
    r = requests.post(
        mock_comfy.url + "/upload/mask",
        files={"image": ("m.png", png_bytes(2, 2), "image/png")},
        data={"original_ref": json.dumps(ref)},
        timeout=5,
    )
    assert r.status_code == status


def test_logs_subscribe_is_answered_and_recorded(mock_comfy: MockComfyServer) -> None:
    r = requests.patch(mock_comfy.url + "/internal/logs/subscribe", json={"clientId": "abc", "enabled": True}, timeout=5)
    assert r.status_code == 200
    assert mock_comfy.log_subscribers == {"abc": True}
    r = requests.patch(mock_comfy.url + "/api/internal/logs/subscribe", json={"clientId": "abc", "enabled": False}, timeout=5)
    assert r.status_code == 200 and mock_comfy.log_subscribers == {"abc": False}
    bad = requests.patch(mock_comfy.url + "/internal/logs/subscribe", json={"enabled": True}, timeout=5)
    assert bad.status_code == 500
