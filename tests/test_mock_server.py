"""Behaviour of the mock ComfyUI server that the transcripts do not cover."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from typing import Any, Dict, Tuple

import pytest
import requests

from comfy_cluster.testing import Fault, MockCluster, MockComfyServer, wait_until
from comfy_cluster.testing.cli import apply_command, run_mock_server
from comfy_cluster.testing.listener import WsListener, types_of
from comfy_cluster.testing.png import PNG_SIGNATURE, png_bytes
from comfy_cluster.testing.workflows import (
    fail_workflow,
    image_workflow,
    load_image_workflow,
    sleep_workflow,
    txt2img_workflow,
)

pytestmark = pytest.mark.timeout(30)


def submit(server: MockComfyServer, prompt: Dict[str, Any], client_id: str = "", **extra: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"prompt": prompt, **extra}
    if client_id:
        body["client_id"] = client_id
    r = requests.post(server.url + "/prompt", json=body, timeout=5)
    assert r.status_code == 200, r.text
    answer: Dict[str, Any] = r.json()
    return answer


def post_prompt(server: MockComfyServer, body: Any) -> Tuple[int, Any]:
    r = requests.post(server.url + "/prompt", json=body, timeout=5)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def answers(server: MockComfyServer) -> bool:
    try:
        return requests.get(server.url + "/prompt", timeout=1).ok
    except requests.ConnectionError:
        return False


def history(server: MockComfyServer, prompt_id: str) -> Dict[str, Any]:
    data: Dict[str, Any] = requests.get(f"{server.url}/history/{prompt_id}", timeout=5).json()
    return data


# --- lifecycle ---------------------------------------------------------------------------


def test_cluster_of_four_starts_and_stops_without_waiting_on_its_connections() -> None:
    started = time.perf_counter()
    cluster = MockCluster(speeds=(1, 2, 3, 4)).start()
    try:
        up = time.perf_counter() - started
        for server in cluster:
            assert requests.get(server.url + "/prompt", timeout=2).status_code == 200
    finally:
        before_stop = time.perf_counter()
        cluster.stop()
    down = time.perf_counter() - before_stop
    # Stopping must not wait for open connections (aiohttp's default: up to 60 s); the bound only
    # catches that, since a loaded CI machine is slow by seconds.
    assert up + down < 10.0, (up, down)
    with pytest.raises(requests.ConnectionError):
        requests.get(cluster[0].url + "/prompt", timeout=2)
    assert not any(t.name.startswith("mock-comfy-mock") for t in threading.enumerate())


def test_cluster_api_and_servers_json() -> None:
    with MockCluster(speeds=(1.0, 2.5, 4.0), models=("a.safetensors",)) as cluster:
        assert len(cluster) == 3
        assert [s.name for s in cluster] == ["mock1", "mock2", "mock3"]
        assert [s.speed for s in cluster] == [1.0, 2.5, 4.0]
        assert cluster[1] is cluster.servers[1] and cluster.by_name("mock3") is cluster[2]
        assert len(set(cluster.urls)) == 3 and all(u.startswith("http://127.0.0.1:") for u in cluster.urls)
        assert json.loads(cluster.servers_json()) == [{"name": s.name, "url": s.url} for s in cluster]
        assert requests.get(cluster[2].url + "/models/checkpoints", timeout=2).json() == ["a.safetensors"]


def test_server_stop_is_idempotent_and_cleans_up() -> None:
    server = MockComfyServer(name="once").start()
    data_dir = server.data_dir
    assert data_dir is not None
    url = server.url
    server.stop()
    server.stop()
    assert not server.running
    import os

    assert not os.path.exists(data_dir)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/prompt", timeout=2)
    with pytest.raises(RuntimeError):
        server.start()


def test_fixtures_from_the_plugin(mock_comfy: MockComfyServer, mock_cluster: MockCluster, mock_cluster_factory: Any) -> None:
    assert mock_comfy.running and requests.get(mock_comfy.url + "/prompt", timeout=2).ok
    assert [s.speed for s in mock_cluster] == [1.0, 2.0]
    third = mock_cluster_factory(speeds=(3.0,), version="0.4.2")
    assert len(third) == 1 and third[0].running
    stats = requests.get(third[0].url + "/system_stats", timeout=2).json()
    assert stats["system"]["comfyui_version"] == "0.4.2"


# --- routes ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_every_route_also_under_api(mock_comfy: MockComfyServer, prefix: str) -> None:
    base = mock_comfy.url + prefix
    for path in ("/prompt", "/queue", "/history", "/system_stats", "/object_info", "/object_info/SaveImage", "/models", "/models/checkpoints", "/features"):
        r = requests.get(base + path, timeout=2)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), path
    with WsListener(base) as listener:
        assert listener.first is not None and listener.first["data"]["sid"] == listener.client_id
    answer = requests.post(base + "/prompt", json={"prompt": image_workflow()}, timeout=2).json()
    assert mock_comfy.wait_idle()
    assert requests.get(f"{base}/history/{answer['prompt_id']}", timeout=2).json()[answer["prompt_id"]]["status"]["completed"]
    assert requests.post(base + "/interrupt", timeout=2).status_code == 200
    assert requests.post(base + "/queue", json={"clear": True}, timeout=2).status_code == 200
    assert requests.post(base + "/history", json={"clear": True}, timeout=2).status_code == 200


def test_info_routes_report_the_configuration() -> None:
    with MockComfyServer(
        name="gpu", version="0.4.1", device_name="cuda:0 NVIDIA RTX 4090 : cudaMallocAsync", vram_total=24 * 2**30, vram_free=20 * 2**30,
        models=("x.safetensors", "y.ckpt"), node_types=["EmptyImage", "SaveImage", "CheckpointLoaderSimple"],
    ) as server:
        stats = requests.get(server.url + "/system_stats", timeout=2).json()
        assert stats["system"]["comfyui_version"] == "0.4.1"
        device = stats["devices"][0]
        assert device["name"].startswith("cuda:0") and device["type"] == "cuda" and device["index"] == 0
        assert (device["vram_total"], device["vram_free"]) == (24 * 2**30, 20 * 2**30)
        info = requests.get(server.url + "/object_info", timeout=2).json()
        assert sorted(info) == ["CheckpointLoaderSimple", "EmptyImage", "SaveImage"]
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["x.safetensors", "y.ckpt"]
        assert requests.get(server.url + "/object_info/TestSleep", timeout=2).json() == {}
        assert requests.get(server.url + "/models/checkpoints", timeout=2).json() == ["x.safetensors", "y.ckpt"]
        assert requests.get(server.url + "/models/loras", timeout=2).json() == []
        assert requests.get(server.url + "/models/nope", timeout=2).status_code == 404
        assert requests.get(server.url + "/features", timeout=2).json()["max_upload_size"] == 100 * 1024 * 1024
        status, body = post_prompt(server, {"prompt": sleep_workflow()})
        assert status == 400 and body["error"]["message"] == "Cannot execute because node TestSleep does not exist."


# --- validation --------------------------------------------------------------------------


def test_validation_answers(mock_comfy: MockComfyServer) -> None:
    status, body = post_prompt(mock_comfy, {"client_id": "x"})
    assert status == 400 and body["error"]["type"] == "no_prompt"
    r = requests.post(mock_comfy.url + "/prompt", data=b"{nope", timeout=2)
    assert r.status_code == 500 and r.headers["Content-Type"].startswith("text/plain")
    status, body = post_prompt(mock_comfy, {"prompt": sleep_workflow(), "prompt_id": "NOT-A-UUID"})
    assert status == 400 and body["error"]["type"] == "invalid_prompt_id"
    status, body = post_prompt(mock_comfy, {"prompt": sleep_workflow(), "prompt_id": str(uuid.uuid4()).upper()})
    assert status == 400 and body["error"]["type"] == "invalid_prompt_id"

    missing = sleep_workflow()
    del missing["2"]["inputs"]["steps"]
    status, body = post_prompt(mock_comfy, {"prompt": missing})
    assert status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["2"]["errors"][0]["type"] == "required_input_missing"
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3"] and body["node_errors"]["2"]["class_type"] == "TestSleep"

    too_big = sleep_workflow(seconds=601)
    status, body = post_prompt(mock_comfy, {"prompt": too_big})
    assert body["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"

    status, body = post_prompt(mock_comfy, {"prompt": txt2img_workflow(ckpt_name="missing.safetensors")})
    assert status == 400
    error = body["node_errors"]["4"]["errors"][0]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["received_value"] == "missing.safetensors"

    wrong_link = image_workflow()
    wrong_link["3"]["inputs"]["images"] = ["1", 1]  # EmptyImage has one output
    status, body = post_prompt(mock_comfy, {"prompt": wrong_link})
    assert status == 400 and body["node_errors"]["3"]["errors"][0]["type"] == "exception_during_validation"

    # One bad output among two: 200, the good one runs, node_errors tell about the other.
    two = image_workflow(prefix="good")
    two["4"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}  # no filename_prefix
    status, body = post_prompt(mock_comfy, {"prompt": two})
    assert status == 200 and list(body["node_errors"]) == ["4"]
    assert mock_comfy.wait_idle()
    assert list(history(mock_comfy, body["prompt_id"])[body["prompt_id"]]["outputs"]) == ["3"]
    assert mock_comfy.received_prompts[-1][0] == body["prompt_id"]
    assert len(mock_comfy.received_prompts) == 1  # rejected prompts are not recorded


def test_literal_values_are_converted_like_comfyui(mock_comfy: MockComfyServer) -> None:
    answer = submit(mock_comfy, sleep_workflow(seconds=0, steps=1))  # FLOAT given as int 0
    queued = mock_comfy.received_prompts[-1][1]
    assert queued["2"]["inputs"]["seconds"] == 0.0 and isinstance(queued["2"]["inputs"]["seconds"], float)
    assert mock_comfy.wait_idle()
    assert history(mock_comfy, answer["prompt_id"])[answer["prompt_id"]]["prompt"][2]["2"]["inputs"]["seconds"] == 0.0


# --- websocket ---------------------------------------------------------------------------


def test_message_order_of_a_job(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        assert listener.first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": listener.client_id}}
        pid = submit(mock_comfy, sleep_workflow(seconds=0.05, steps=2), listener.client_id)["prompt_id"]
        messages = listener.until_done(pid)
    assert types_of(messages) == [
        "status", "status", "execution_start", "execution_cached",
        "executing", "executing", "progress", "progress", "executing", "executed",
        "execution_success", "status", "executing",
    ]
    assert [m["data"]["status"]["exec_info"]["queue_remaining"] for m in messages if m["type"] == "status"] == [1, 1, 0]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == ["1", "2", "3", None]
    assert mock_comfy.executed_prompt_ids == [pid]


def test_socket_without_client_id_gets_a_generated_sid(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url, client_id="") as listener:
        assert listener.first is not None
        sid = listener.first["data"]["sid"]
        assert len(sid) == 32 and int(sid, 16) >= 0
        assert mock_comfy.connected_clients() == [sid]


def test_job_events_go_to_the_submitter_only_and_status_to_all(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as mine, WsListener(mock_comfy.url) as other:
        pid = submit(mock_comfy, sleep_workflow(seconds=0.02, steps=2), mine.client_id)["prompt_id"]
        mine.until_done(pid)
        # The other socket sees the three status frames and nothing else.
        seen = other.until(lambda m: m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 0)
        assert types_of(seen) == ["status", "status", "status"]
        assert other.expect_silence(0.1) == []


def test_events_for_a_client_without_socket_are_dropped(mock_comfy: MockComfyServer) -> None:
    client_id = str(uuid.uuid4())
    pid = submit(mock_comfy, sleep_workflow(seconds=0.02, steps=2), client_id)["prompt_id"]
    assert mock_comfy.wait_idle()
    assert history(mock_comfy, pid)[pid]["status"]["status_str"] == "success"
    with WsListener(mock_comfy.url, client_id=client_id) as late:
        # Nothing was buffered: only the connect status arrives.
        assert late.first is not None and late.first["data"]["sid"] == client_id
        assert late.expect_silence(0.1) == []


def test_two_sockets_with_the_same_client_id_break_each_other(mock_comfy: MockComfyServer) -> None:
    client_id = str(uuid.uuid4())
    first = WsListener(mock_comfy.url, client_id=client_id)
    second = WsListener(mock_comfy.url, client_id=client_id)
    try:
        assert mock_comfy.open_websockets() == 2 and mock_comfy.connected_clients() == [client_id]
        pid = submit(mock_comfy, sleep_workflow(seconds=0.02, steps=1, seed=1), client_id)["prompt_id"]
        assert types_of(second.until_done(pid))[-1] == "executing"
        assert first.expect_silence(0.1) == []  # the older socket went deaf
        first.close()
        wait_until(lambda: mock_comfy.open_websockets() == 1, message="first socket closed")
        # Closing the first removed the client id entry: the second now gets nothing either.
        assert mock_comfy.connected_clients() == []
        pid = submit(mock_comfy, sleep_workflow(seconds=0.02, steps=1, seed=2), client_id)["prompt_id"]
        assert mock_comfy.wait_idle()
        assert history(mock_comfy, pid)[pid]["status"]["completed"] is True
        assert second.expect_silence(0.1) == []
    finally:
        first.close()
        second.close()


def test_reconnect_during_a_job_gets_the_current_node(mock_comfy: MockComfyServer) -> None:
    listener = WsListener(mock_comfy.url)
    pid = submit(mock_comfy, sleep_workflow(seconds=5, steps=50), listener.client_id)["prompt_id"]
    listener.until(lambda m: m["type"] == "progress")
    listener.close()
    with WsListener(mock_comfy.url, client_id=listener.client_id) as again:
        assert again.recv() == {"type": "executing", "data": {"node": "2"}}
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": pid}, timeout=2)
        again.until_event(pid)


def test_feature_flags_handshake(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        listener.ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = listener.recv()
        assert reply["type"] == "feature_flags" and reply["data"]["max_upload_size"] == 100 * 1024 * 1024


# --- caching -----------------------------------------------------------------------------


def test_identical_resubmission_is_cached(mock_comfy: MockComfyServer) -> None:
    prompt = sleep_workflow(seconds=0.05, steps=2, seed=7)
    with WsListener(mock_comfy.url) as listener:
        first = submit(mock_comfy, prompt, listener.client_id)["prompt_id"]
        listener.until_done(first)
        second = submit(mock_comfy, prompt, listener.client_id)["prompt_id"]
        messages = listener.until_done(second)
        assert types_of(messages) == ["status", "status", "execution_start", "execution_cached", "executed", "execution_success", "status", "executing"]
        cached = [m for m in messages if m["type"] == "execution_cached"][0]
        assert cached["data"]["nodes"] == ["1", "2", "3"]
        outputs_first = history(mock_comfy, first)[first]["outputs"]
        assert history(mock_comfy, second)[second]["outputs"] == outputs_first  # the same files
        # A new seed on TestSleep: only EmptyImage is cached, and it sends no executing.
        third = submit(mock_comfy, sleep_workflow(seconds=0.05, steps=2, seed=8), listener.client_id)["prompt_id"]
        messages = listener.until_done(third)
        assert [m["data"]["nodes"] for m in messages if m["type"] == "execution_cached"] == [["1"]]
        assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == ["2", "3", None]
        images = history(mock_comfy, third)[third]["outputs"]["3"]["images"]
        assert images[0]["filename"] == "mock_00002_.png"


# --- queue, interrupt, delete, order -----------------------------------------------------


def test_interrupt_only_hits_the_running_prompt(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        running = submit(mock_comfy, sleep_workflow(seconds=20, steps=1, seed=1), listener.client_id)["prompt_id"]
        pending = submit(mock_comfy, sleep_workflow(seconds=0.02, steps=1, seed=2), listener.client_id)["prompt_id"]
        listener.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": pending}, timeout=2)
        assert mock_comfy.queue_snapshot() == ([running], [pending])
        started = time.monotonic()
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": running}, timeout=2)
        messages = listener.until_event(running)
        assert time.monotonic() - started < 10.0  # promptly, not at the end of the 20 s step
        end = messages[-1]
        assert end["type"] == "execution_interrupted"
        assert sorted(end["data"]) == ["executed", "node_id", "node_type", "prompt_id", "timestamp"]
        assert (end["data"]["node_id"], end["data"]["node_type"], end["data"]["executed"]) == ("2", "TestSleep", ["1"])
        listener.until_done(pending)
    item = history(mock_comfy, running)[running]
    assert item["status"]["status_str"] == "error" and item["status"]["completed"] is False
    assert item["status"]["messages"][-1][0] == "execution_interrupted"
    assert mock_comfy.executed_prompt_ids == [pending]
    assert mock_comfy.interrupt_requests == [{"prompt_id": pending}, {"prompt_id": running}]


def test_interrupt_without_body_stops_whatever_runs(mock_comfy: MockComfyServer) -> None:
    requests.post(mock_comfy.url + "/interrupt", timeout=2)  # nothing runs: no effect later
    with WsListener(mock_comfy.url) as listener:
        pid = submit(mock_comfy, sleep_workflow(seconds=10, steps=100), listener.client_id)["prompt_id"]
        listener.until(lambda m: m["type"] == "progress")
        assert requests.post(mock_comfy.url + "/interrupt", timeout=2).status_code == 200
        assert listener.until_event(pid)[-1]["type"] == "execution_interrupted"
    assert mock_comfy.interrupt_requests == [{}, {}]


def test_delete_and_clear_pending(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        blocker = submit(mock_comfy, sleep_workflow(seconds=10, steps=100, seed=1), listener.client_id)["prompt_id"]
        listener.until(lambda m: m["type"] == "progress")
        a, b, c = (submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=s), listener.client_id)["prompt_id"] for s in (2, 3, 4))
        r = requests.post(mock_comfy.url + "/queue", json={"delete": [b, "unknown-id", blocker]}, timeout=2)
        assert r.status_code == 200 and r.content == b""
        assert mock_comfy.queue_snapshot() == ([blocker], [a, c])  # the running job is not deleted
        requests.post(mock_comfy.url + "/queue", json={"clear": True}, timeout=2)
        assert mock_comfy.queue_snapshot() == ([blocker], [])
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": blocker}, timeout=2)
        listener.until_done(blocker)
    assert mock_comfy.wait_idle()
    assert history(mock_comfy, b) == {} and history(mock_comfy, a) == {}
    assert mock_comfy.executed_prompt_ids == []
    assert mock_comfy.queue_delete_requests == [{"delete": [b, "unknown-id", blocker]}, {"clear": True}]


def test_jobs_run_one_at_a_time_by_number_and_front_first(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        blocker = submit(mock_comfy, sleep_workflow(seconds=10, steps=100, seed=0), listener.client_id)["prompt_id"]
        listener.until(lambda m: m["type"] == "progress")
        ids: Dict[str, str] = {}
        ids["n5"] = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=5), number=5)["prompt_id"]
        ids["plain"] = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=6))["prompt_id"]  # number 1
        ids["n3"] = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=3), number=3)["prompt_id"]
        ids["front1"] = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=7), front=True)["prompt_id"]  # -2
        ids["front2"] = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=8), front=True)["prompt_id"]  # -3
        pending = requests.get(mock_comfy.url + "/queue", timeout=2).json()["queue_pending"]
        assert sorted(item[0] for item in pending) == [-3, -2, 1, 3.0, 5.0]
        assert requests.get(mock_comfy.url + "/prompt", timeout=2).json() == {"exec_info": {"queue_remaining": 6}}
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": blocker}, timeout=2)
        assert mock_comfy.wait_idle()
    order = ["front2", "front1", "plain", "n3", "n5"]
    assert mock_comfy.executed_prompt_ids == [ids[k] for k in order]
    assert mock_comfy.history_ids() == [blocker] + [ids[k] for k in order]


def test_speed_factor_divides_sleep_time() -> None:
    with MockCluster(speeds=(1.0, 4.0)) as cluster:
        durations = []
        for server in cluster:
            with WsListener(server.url) as listener:
                started = time.monotonic()
                pid = submit(server, sleep_workflow(seconds=0.6, steps=3), listener.client_id)["prompt_id"]
                listener.until_done(pid)
                durations.append(time.monotonic() - started)
        slow, fast = durations
        assert slow >= 0.6 and fast >= 0.15
        assert fast < slow / 2  # 4x nominally; generous for a loaded machine
        # Speed can change while running and applies to the next sleep slice.
        fast_server = cluster[1]
        fast_server.speed = 100.0
        with WsListener(fast_server.url) as listener:
            started = time.monotonic()
            pid = submit(fast_server, sleep_workflow(seconds=50, steps=10, seed=9), listener.client_id)["prompt_id"]
            listener.until_done(pid, timeout=15)
            assert time.monotonic() - started < 10.0  # 0.5 s at speed 100; 12.5 s at the old speed
        with pytest.raises(ValueError):
            fast_server.speed = 0


def test_txt2img_workflow_runs_with_sampler_progress(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        pid = submit(mock_comfy, txt2img_workflow(steps=4), listener.client_id)["prompt_id"]
        messages = listener.until_done(pid)
    progress = [m["data"]["value"] for m in messages if m.get("type") == "progress"]
    assert progress == [1, 2, 3, 4]
    assert sum(1 for m in messages if m.get("binary")) == 4  # a latent preview per step
    executed = [m for m in messages if m.get("type") == "executed"]
    assert executed[0]["data"]["node"] == "9" and executed[0]["data"]["output"]["images"][0]["filename"] == "txt2img_00001_.png"


# --- runtime errors ----------------------------------------------------------------------


def test_testfail_gives_execution_error(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        pid = submit(mock_comfy, fail_workflow("it broke"), listener.client_id)["prompt_id"]
        messages = listener.until_done(pid)
    error = [m for m in messages if m["type"] == "execution_error"][0]["data"]
    assert error["exception_message"] == "it broke\n" and error["node_type"] == "TestFail" and error["node_id"] == "2"
    assert error["current_inputs"]["message"] == ["it broke"]
    assert isinstance(error["traceback"], list) and all(isinstance(line, str) for line in error["traceback"])
    item = history(mock_comfy, pid)[pid]
    assert item["status"]["status_str"] == "error" and item["outputs"] == {}
    assert mock_comfy.executed_prompt_ids == []


# --- files -------------------------------------------------------------------------------


def test_save_image_writes_a_real_png_that_view_serves(mock_comfy: MockComfyServer) -> None:
    pid = submit(mock_comfy, image_workflow(color=0x102030, width=16, height=8, batch_size=2, prefix="sub/pic"))["prompt_id"]
    assert mock_comfy.wait_idle()
    images = history(mock_comfy, pid)[pid]["outputs"]["3"]["images"]
    assert images == [
        {"filename": "pic_00001_.png", "subfolder": "sub", "type": "output"},
        {"filename": "pic_00002_.png", "subfolder": "sub", "type": "output"},
    ]
    r = requests.get(mock_comfy.url + "/view", params=images[0], timeout=2)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    assert r.content.startswith(PNG_SIGNATURE) and r.content[16:24] == (16).to_bytes(4, "big") + (8).to_bytes(4, "big")
    escape = image_workflow(prefix="../outside")
    pid = submit(mock_comfy, escape)["prompt_id"]
    assert mock_comfy.wait_idle()
    assert history(mock_comfy, pid)[pid]["status"]["status_str"] == "error"


def test_view_path_checks(mock_comfy: MockComfyServer) -> None:
    pid = submit(mock_comfy, image_workflow())["prompt_id"]
    assert mock_comfy.wait_idle()
    name = history(mock_comfy, pid)[pid]["outputs"]["3"]["images"][0]["filename"]
    view = mock_comfy.url + "/view"
    assert requests.get(view, params={"filename": name, "type": "output"}, timeout=2).status_code == 200
    assert requests.get(view, params={"filename": f"{name} [output]", "type": "input"}, timeout=2).status_code == 200
    assert requests.get(view, params={"filename": "../" + name}, timeout=2).status_code == 400
    assert requests.get(view, params={"filename": "/etc/passwd"}, timeout=2).status_code == 400
    assert requests.get(view, params={"filename": name, "subfolder": "../../.."}, timeout=2).status_code == 403
    assert requests.get(view, params={"filename": name, "type": "secret"}, timeout=2).status_code == 400
    assert requests.get(view, params={"filename": "nope.png"}, timeout=2).status_code == 404
    assert requests.get(view, timeout=2).status_code == 404


def test_upload_then_load_image(mock_comfy: MockComfyServer) -> None:
    data = png_bytes(12, 10, (200, 10, 10))
    up = requests.post(mock_comfy.url + "/upload/image", files={"image": ("in.png", data, "image/png")}, timeout=2)
    assert up.status_code == 200 and up.json() == {"name": "in.png", "subfolder": "", "type": "input"}
    # Same name, same bytes: kept; same name, other bytes: renamed; overwrite: replaced.
    again = requests.post(mock_comfy.url + "/upload/image", files={"image": ("in.png", data, "image/png")}, timeout=2)
    assert again.json()["name"] == "in.png"
    other = requests.post(mock_comfy.url + "/upload/image", files={"image": ("in.png", png_bytes(4, 4), "image/png")}, timeout=2)
    assert other.json()["name"] == "in (1).png"
    sub = requests.post(
        mock_comfy.url + "/upload/image",
        files={"image": ("in.png", data, "image/png")},
        data={"subfolder": "shots/a", "overwrite": "true"},
        timeout=2,
    )
    assert sub.json() == {"name": "in.png", "subfolder": "shots/a", "type": "input"}
    bad = requests.post(mock_comfy.url + "/upload/image", files={"image": ("x.png", data)}, data={"subfolder": "../.."}, timeout=2)
    assert bad.status_code == 400
    assert requests.post(mock_comfy.url + "/upload/image", data={"overwrite": "true"}, timeout=2).status_code == 400

    listing = requests.get(mock_comfy.url + "/object_info/LoadImage", timeout=2).json()
    assert listing["LoadImage"]["input"]["required"]["image"][0] == ["in (1).png", "in.png"]

    pid = submit(mock_comfy, load_image_workflow("shots/a/in.png"))["prompt_id"]
    assert mock_comfy.wait_idle()
    image = history(mock_comfy, pid)[pid]["outputs"]["3"]["images"][0]
    saved = requests.get(mock_comfy.url + "/view", params=image, timeout=2).content
    assert saved[16:24] == (12).to_bytes(4, "big") + (10).to_bytes(4, "big")  # the uploaded size

    status, body = post_prompt(mock_comfy, {"prompt": load_image_workflow("never-uploaded.png")})
    assert status == 400
    error = body["node_errors"]["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and "Invalid image file: never-uploaded.png" in error["details"]


# --- history -----------------------------------------------------------------------------


def test_history_paging_and_deletion(mock_comfy: MockComfyServer) -> None:
    ids = [submit(mock_comfy, image_workflow(color=c))["prompt_id"] for c in range(4)]
    assert mock_comfy.wait_idle()
    url = mock_comfy.url + "/history"
    assert list(requests.get(url, timeout=2).json()) == ids
    assert list(requests.get(url, params={"max_items": 2}, timeout=2).json()) == ids[2:]
    assert list(requests.get(url, params={"max_items": 2, "offset": 1}, timeout=2).json()) == ids[1:3]
    assert requests.get(f"{url}/{uuid.uuid4()}", timeout=2).json() == {}
    requests.post(url, json={"delete": [ids[0], "nope"]}, timeout=2)
    assert mock_comfy.history_ids() == ids[1:]
    requests.post(url, json={"clear": True}, timeout=2)
    assert requests.get(url, timeout=2).json() == {}
    assert mock_comfy.executed_prompt_ids == ids  # the test record is kept


def test_history_is_empty_while_queued_or_running(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        running = submit(mock_comfy, sleep_workflow(seconds=10, steps=100), listener.client_id)["prompt_id"]
        queued = submit(mock_comfy, sleep_workflow(seconds=0.01, steps=1, seed=1), listener.client_id)["prompt_id"]
        listener.until(lambda m: m["type"] == "progress")
        assert history(mock_comfy, running) == {} and history(mock_comfy, queued) == {}
        queue = requests.get(mock_comfy.url + "/queue", timeout=2).json()
        assert [item[1] for item in queue["queue_running"]] == [running]
        assert len(queue["queue_running"][0]) == 5 and queue["queue_running"][0][3] == {"client_id": listener.client_id}
        requests.post(mock_comfy.url + "/interrupt", timeout=2)
        listener.until_done(queued)


def test_sensitive_extra_data_stays_out_of_queue_and_history(mock_comfy: MockComfyServer) -> None:
    pid = submit(mock_comfy, image_workflow(), extra_data={"api_key_comfy_org": "secret", "note": "keep"})["prompt_id"]
    assert mock_comfy.wait_idle()
    item = history(mock_comfy, pid)[pid]
    assert item["prompt"][3] == {"note": "keep"}
    assert "secret" not in json.dumps(requests.get(mock_comfy.url + "/history", timeout=2).json())


# --- CLI ---------------------------------------------------------------------------------


def test_cli_runs_a_server_and_takes_commands() -> None:
    commands = io.StringIO("status\nfault 500\nlatency 0.25\nfail-next oops\nspeed 3\nfault off\nbogus\nquit\n")
    out = io.StringIO()
    code = run_mock_server(["--port", "0", "--speed", "2", "--models", "a.safetensors,b.safetensors", "--name", "cli"], stdin=commands, stdout=out)
    text = out.getvalue()
    assert code == 0
    assert "mock ComfyUI 'cli' listening on http://127.0.0.1:" in text and "a.safetensors, b.safetensors" in text
    assert "fault: 500" in text and "latency: 0.25s" in text and "the next job will fail: oops" in text
    assert "speed: 3" in text and "fault: off" in text and "error: unknown command 'bogus'" in text
    assert text.rstrip().endswith("mock server stopped")


def test_cli_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_mock_server(["--help"]) == 0
    assert "comfy-cluster mock-server --port 8188 --speed 2 --models" in capsys.readouterr().out
    assert run_mock_server(["--speed", "fast"]) == 2


def test_cli_commands_drive_the_server(mock_comfy: MockComfyServer) -> None:
    assert apply_command(mock_comfy, "fault hang") == "fault: hang"
    assert mock_comfy.fault is Fault.HANG
    assert apply_command(mock_comfy, "fault off") == "fault: off"
    assert apply_command(mock_comfy, "drop-ws") == "dropped 0 websocket(s)"
    assert apply_command(mock_comfy, "pause") == "jobs paused" and mock_comfy.jobs_paused
    assert "paused=True" in (apply_command(mock_comfy, "status") or "")
    assert apply_command(mock_comfy, "resume") == "jobs resumed" and not mock_comfy.jobs_paused
    assert apply_command(mock_comfy, "restart") == "restarted"
    wait_until(lambda: answers(mock_comfy), message="server back")
    assert apply_command(mock_comfy, "quit") is None
    with pytest.raises(ValueError):
        apply_command(mock_comfy, "fault sideways")


def test_busy_port_fails_to_start_cleanly() -> None:
    with MockComfyServer(name="first") as first:
        second = MockComfyServer(name="second", port=first.port)
        with pytest.raises(OSError):
            second.start()
        assert not second.running and not any(t.name == "mock-comfy-second" for t in threading.enumerate())
        out = io.StringIO()
        assert run_mock_server(["--port", str(first.port)], stdin=io.StringIO(""), stdout=out) == 1
        assert "cannot start" in out.getvalue()


def test_models_per_folder_and_unknown_node_types() -> None:
    with MockComfyServer(models={"checkpoints": ["sd.safetensors"], "loras": ["detail.safetensors"], "my_folder": ["x.bin"]}) as server:
        assert server.models == ["sd.safetensors"]
        assert requests.get(server.url + "/models/loras", timeout=2).json() == ["detail.safetensors"]
        assert requests.get(server.url + "/models/my_folder", timeout=2).json() == ["x.bin"]
        assert "my_folder" in requests.get(server.url + "/models", timeout=2).json()
    with pytest.raises(ValueError):
        MockComfyServer(node_types=["NoSuchNode"])
