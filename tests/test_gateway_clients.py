"""Clients as they really talk: ComfyUI-for-Nuke's remote mode (uploads, post without
waiting, /view probing, bodied interrupt) and uploads bound per prompt, over a mock cluster."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List

import pytest
import requests
from gateway_util import NukeRemoteClient, ScriptClient, folder_colour, gateway_over, loaded_colour, of_prompt, png_rgb, running_on

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def frames_prompt(names: List[str], out_folder: str, seconds: float = 0.0) -> Dict[str, Any]:
    """One prompt for a frame range, node ids named like Nuke nodes: a loader per frame, then
    one SaveImage per frame under ``<out_folder>/ComfyUI``."""
    prompt: Dict[str, Any] = {}
    for i, name in enumerate(names, start=1):
        prompt[f"Read{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        src = f"Read{i}"
        if seconds:
            prompt[f"Sleep{i}"] = {"class_type": "TestSleep", "inputs": {"image": [src, 0], "seconds": seconds, "steps": 10, "seed": i}}
            src = f"Sleep{i}"
        prompt[f"Save{i}"] = {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": f"{out_folder}/ComfyUI"}}
    return prompt


def sequence_prompt(directory: str, out_folder: str, seconds: float = 0.0) -> Dict[str, Any]:
    """ComfyUI-for-Nuke's prompt for a frame range: a folder loader (with its extra
    ``frame_range`` key and ``id`` input) feeding a SaveImage, node ids as Nuke names."""
    prompt: Dict[str, Any] = {
        "Read1": {
            "frame_range": [1, 3],
            "inputs": {"directory": directory, "skip_first_images": 0, "select_every_nth": 1, "image_load_cap": 0, "id": 4711},
            "class_type": "VHS_LoadImagesPath",
        },
    }
    src = "Read1"
    if seconds:
        prompt["Sleep1"] = {"class_type": "TestSleep", "inputs": {"image": [src, 0], "seconds": seconds, "steps": 10, "seed": 3}}
        src = "Sleep1"
    prompt["SaveImage1"] = {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": f"{out_folder}/ComfyUI"}}
    return prompt


def test_comfyui_for_nuke_remote_mode_frame_range_through_a_folder_loader(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    frames = [png_bytes(8, 8, (i, 5, 9)) for i in range(1, 4)]
    with gateway_over(cluster) as gw:
        nuke = NukeRemoteClient(gw.url, n=2)
        try:
            directory = nuke.upload_sequence(frames, "a3f9c2d1e0b4")
            pid = nuke.run(sequence_prompt(directory, "20261201_0200"))
            nuke.wait_done(pid)
            nuke.cancel()
            outputs = nuke.collect("ComfyUI", "20261201_0200")
            assert [png_rgb(o) for o in outputs] == [folder_colour(frames)] * 3  # the batch of 3 frames
            # The client's prompt is shown as posted; the servers ran a copy of the folder.
            item = requests.get(f"{gw.url}/history/{pid}", timeout=5).json()[pid]
            assert item["prompt"][2]["Read1"]["inputs"]["directory"] == directory
            ran = [p for s in cluster for _, p, _ in s.received_prompts]
            assert len(ran) == 1 and ran[0]["Read1"]["inputs"]["directory"].startswith(os.path.join("input", "cc-"))
        finally:
            nuke.close()


def test_a_folder_loader_job_moves_with_its_frames(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    frames = [png_bytes(8, 8, (7, i, 7)) for i in range(1, 4)]
    with gateway_over(cluster) as gw:
        nuke = NukeRemoteClient(gw.url, n=3)
        try:
            directory = nuke.upload_sequence(frames, "0badc0de")
            for server in cluster:  # the job cannot end before the victim stops, whatever the load
                server.pause_jobs()
            pid = nuke.run(sequence_prompt(directory, "moved", seconds=0.5))
            victim = running_on(cluster)
            assert nuke.socket is not None
            nuke.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "executing")
            victim.stop()
            next(s for s in cluster if s is not victim).resume_jobs()
            nuke.wait_done(pid, timeout=30)
            assert [png_rgb(o) for o in nuke.collect("ComfyUI", "moved")] == [folder_colour(frames)] * 3
        finally:
            nuke.close()


def test_comfyui_for_nuke_remote_mode_round_trip(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    frames = [png_bytes(8, 8, (i, 2 * i, 3 * i)) for i in range(1, 4)]
    with gateway_over(cluster) as gw:
        nuke = NukeRemoteClient(gw.url, n=7)
        try:
            names = nuke.upload_frames(frames, subfolder="6f1ed002ab5595859014ebf0951522d9")
            stamp = time.strftime("%Y%m%d%H%M%S")
            pid = nuke.run(frames_prompt(names, stamp))
            got = nuke.wait_done(pid)
            mine = of_prompt(got, pid)
            assert [m["type"] for m in mine if m["type"] in ("execution_start", "execution_success")] == ["execution_start", "execution_success"]
            assert any(m["type"] == "executing" and m["data"]["node"] == "Save1" for m in mine)  # Nuke node names shown
            nuke.cancel()  # it always does this once a run ends: nothing of its own runs now
            outputs = nuke.collect("ComfyUI", stamp)  # probes names until the 404
            assert sorted(png_rgb(o) for o in outputs) == sorted(loaded_colour(f) for f in frames)
            # Uploads are readable back as ComfyUI serves its input folder.
            sub, name = names[0].split("/")
            back = requests.get(gw.url + "/view", params={"filename": name, "subfolder": sub, "type": "input"}, timeout=5)
            assert back.status_code == 200 and back.content == frames[0]
        finally:
            nuke.close()


def test_comfyui_for_nuke_cancel_interrupts_only_its_run(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    with gateway_over(cluster, server_mock1={"max_queue": 1}, server_mock2={"max_queue": 1}) as gw:
        nuke = NukeRemoteClient(gw.url, n=1)
        other = ScriptClient(gw.url)
        try:
            mine = nuke.run(sleep_workflow(seconds=5.0, steps=50, seed=11))
            theirs = other.run(sleep_workflow(seconds=0.8, steps=8, seed=12))
            assert nuke.socket is not None
            nuke.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            other.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            for server in cluster:  # both jobs held mid-run (interrupts still work), whatever the load
                server.pause_jobs()
            nuke.cancel()
            frames = nuke.wait_done(mine)
            assert [m["type"] for m in of_prompt(frames, mine)][-2:] == ["execution_interrupted", "executing"]
            for server in cluster:
                server.resume_jobs()
            assert [m["type"] for m in other.follow(theirs)][-2:] == ["execution_success", "executing"]
        finally:
            nuke.close()
            other.close()


def test_uploads_are_sent_again_to_the_server_a_job_moves_to(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    frame = png_bytes(8, 8, (40, 50, 60))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        nuke = NukeRemoteClient(gw.url)
        try:
            names = nuke.upload_frames([frame], subfolder="plates")
            for server in cluster:  # the job cannot end before the victim stops, whatever the load
                server.pause_jobs()
            pid = client.run(frames_prompt(names, "moved", seconds=0.5))
            victim = running_on(cluster)
            client.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "executing")
            victim.stop()
            survivor = next(s for s in cluster if s is not victim)
            survivor.resume_jobs()
            msgs = client.follow(pid, timeout=30)
            assert [m["type"] for m in msgs].count("execution_start") == 1
            item = client.history(pid)
            assert item["status"]["status_str"] == "success"
            assert survivor.input_dir is not None
            uploaded = [os.path.join(d, n) for d, _, names in os.walk(survivor.input_dir) for n in names if n == "frame.0001.png"]
            assert len(uploaded) == 1
            with open(uploaded[0], "rb") as fh:
                assert fh.read() == frame
            image = item["outputs"]["Save1"]["images"][0]
            assert png_rgb(client.view(image).content) == loaded_colour(frame)
        finally:
            client.close()
            nuke.close()


def test_two_clients_one_file_name_each_gets_its_own_upload(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster[0]
    with gateway_over(cluster, server_mock1={"max_queue": 1}) as gw:
        blocker = ScriptClient(gw.url)
        a, b = NukeRemoteClient(gw.url, user="anna"), NukeRemoteClient(gw.url, user="bert")
        try:
            server.pause_jobs()
            blocked = blocker.run(sleep_workflow(seconds=0.1, steps=1, seed=99))
            wait_until(lambda: server.queue_snapshot()[0], message="the blocker running")
            # Both jobs wait in the gateway; each posts right after its own upload of "plate.png".
            fa, fb = png_bytes(8, 8, (1, 1, 1)), png_bytes(8, 8, (2, 2, 2))
            pa = a.run(frames_prompt(a.upload_frames([fa], "", pattern="plate.png"), "anna"))
            pb = b.run(frames_prompt(b.upload_frames([fb], "", pattern="plate.png"), "bert"))
            server.resume_jobs()
            blocker.follow(blocked)
            a.wait_done(pa)
            b.wait_done(pb)
            assert [png_rgb(o) for o in a.collect("ComfyUI", "anna")] == [loaded_colour(fa)]
            assert [png_rgb(o) for o in b.collect("ComfyUI", "bert")] == [loaded_colour(fb)]
        finally:
            blocker.close()
            a.close()
            b.close()


@pytest.mark.parametrize(
    "filename, subfolder, status",
    [("../evil.png", "", 400), ("ok.png", "../../etc", 403), ("ok.png", "/abs", 403), ("bad\x01.png", "", 400), ("tab\t.png", "", 400)],
)
def test_upload_names_are_sanitised(mock_cluster_factory: Factory, filename: str, subfolder: str, status: int) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        r = requests.post(gw.url + "/upload/image", files={"image": (filename, b"x", "image/png")}, data={"subfolder": subfolder}, timeout=5)
        assert r.status_code == status


def test_uploads_are_size_capped_and_renamed_like_comfyui(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, gateway_kwargs={"max_upload_size": 4096}) as gw:
        url = gw.url + "/upload/image"
        big = requests.post(url, files={"image": ("big.png", b"x" * 8192, "image/png")}, timeout=5)
        assert big.status_code == 413
        first = requests.post(url, files={"image": ("a.png", b"one", "image/png")}, timeout=5).json()
        same = requests.post(url, files={"image": ("a.png", b"one", "image/png")}, timeout=5).json()
        other = requests.post(url, files={"image": ("a.png", b"two", "image/png")}, timeout=5).json()
        assert (first["name"], same["name"], other["name"]) == ("a.png", "a.png", "a (1).png")
        nested = requests.post(url, files={"image": ("sub/b.png", b"3", "image/png")}, data={"subfolder": "x"}, timeout=5).json()
        assert nested == {"name": "b.png", "subfolder": "x/sub", "type": "input"}
        mask = requests.post(gw.url + "/api/upload/mask", files={"image": ("m.png", b"mask", "image/png")}, data={"original_ref": "{}"}, timeout=5)
        assert mask.status_code == 200 and mask.json()["name"] == "m.png"


def test_events_kept_for_an_absent_client_are_bounded_and_a_new_socket_takes_over(mock_cluster_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import comfy_cluster.gateway.relay as relay

    monkeypatch.setattr(relay, "MAX_KEPT_FRAMES", 3)
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        late = NukeRemoteClient(gw.url, n=3)
        gate = threading.Event()
        try:
            pid = late.run(sleep_workflow(seconds=0.05, steps=5, seed=31), socket_gate=gate)
            wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", timeout=5).json(), message="the job done")
            gate.set()
            frames = late.wait_done(pid)
            # The first status frame, then only the newest 3 kept (status frames go to open
            # sockets only): the job's last messages (as ComfyUI: the last node's progress_state
            # "finished" comes between its executed and execution_success).
            assert [f["type"] for f in frames if isinstance(f, dict)] == ["status", "progress_state", "execution_success", "executing"]
            # The same clientId on a second socket: the newer one gets the events.
            second = NukeRemoteClient(gw.url, n=3)
            try:
                pid2 = second.run(sleep_workflow(seconds=0.05, steps=1, seed=32))
                assert [m["type"] for m in of_prompt(second.wait_done(pid2), pid2)][-2:] == ["execution_success", "executing"]
            finally:
                second.close()
        finally:
            late.close()


def test_frames_kept_in_all_are_bounded_oldest_client_first(mock_cluster_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import comfy_cluster.gateway.relay as relay

    monkeypatch.setattr(relay, "MAX_KEPT_TOTAL", 5)
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        first, second = NukeRemoteClient(gw.url, n=4), NukeRemoteClient(gw.url, n=5)
        gates = threading.Event(), threading.Event()
        try:
            p1 = first.run(sleep_workflow(seconds=0.01, steps=1, seed=41), socket_gate=gates[0])
            wait_until(lambda: requests.get(f"{gw.url}/history/{p1}", timeout=5).json(), message="the first job done")
            p2 = second.run(sleep_workflow(seconds=0.01, steps=1, seed=42), socket_gate=gates[1])
            wait_until(lambda: requests.get(f"{gw.url}/history/{p2}", timeout=5).json(), message="the second job done")
            gates[1].set()
            assert [m["type"] for m in of_prompt(second.wait_done(p2), p2)][-2:] == ["execution_success", "executing"]
            gates[0].set()  # the oldest client's frames were dropped to stay within the total
            p3 = first.run(sleep_workflow(seconds=0.01, steps=1, seed=43))
            frames = first.wait_done(p3)
            assert of_prompt(frames, p1) == []
        finally:
            first.close()
            second.close()
