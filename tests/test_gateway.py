"""The gateway over a mock cluster, driven by a plain script client: ComfyUI's API with the
cluster behind it (spread, failover, cancel, validation, queue, history, info, auth)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, Dict, List

import pytest
import requests
import websocket
from gateway_util import NukeRemoteClient, ScriptClient, gateway_over, is_done, of_prompt, running_on

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import fail_workflow, image_workflow, sleep_workflow, txt2img_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def kinds(messages: List[Dict[str, Any]]) -> List[str]:
    return [m["type"] for m in messages if m["type"] != "progress_state"]


def test_a_job_runs_with_comfyui_events_history_and_view(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            given = str(uuid.uuid4())
            r = client.post(sleep_workflow(seconds=0.05, steps=2, seed=1), prompt_id=given)
            assert r.status_code == 200
            assert r.json() == {"prompt_id": given, "number": 0, "node_errors": {}}  # the client's id is kept
            msgs = client.follow(given)
            assert kinds(msgs) == [
                "execution_start", "execution_cached", "executing", "executing", "progress", "progress",
                "executing", "executed", "execution_success", "executing",
            ]
            # The server ran it under an id of the pool's own; the client never sees that id.
            assert given not in cluster[0].executed_prompt_ids
            item = client.history(given)
            assert item["prompt"][1] == given and item["prompt"][3] == {"client_id": client.client_id}
            assert item["status"]["status_str"] == "success"
            assert all(m[1]["prompt_id"] == given for m in item["status"]["messages"])
            image = item["outputs"]["3"]["images"][0]
            view = client.view(image)
            assert view.status_code == 200 and view.headers["Content-Type"] == "image/png" and view.content[:4] == b"\x89PNG"
            # /api prefix, and a name no job made is a 404 (clients probe names until one).
            assert requests.get(gw.url + "/api/history/" + given, timeout=5).json()[given]["status"]["completed"] is True
            assert requests.get(gw.url + "/view", params=dict(image, filename="mock_00002_.png"), timeout=5).status_code == 404
            assert requests.get(gw.url + "/view", params={"filename": "../x.png"}, timeout=5).status_code == 400
        finally:
            client.close()


def test_jobs_spread_over_the_servers(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0, 1.0))
    with gateway_over(cluster, server_mock1={"max_queue": 1}, server_mock2={"max_queue": 1}, server_mock3={"max_queue": 1}) as gw:
        client = ScriptClient(gw.url)
        try:
            for s in cluster:
                s.pause_jobs()
            ids = [client.run(sleep_workflow(seconds=0.05, steps=1, seed=i)) for i in range(6)]
            # One job on each server at once (max_queue 1), the rest wait in the gateway.
            wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster), message="a job on every server")
            queue = requests.get(gw.url + "/queue", timeout=5).json()
            assert len(queue["queue_running"]) + len(queue["queue_pending"]) == 6
            for s in cluster:
                s.resume_jobs()
            for pid in ids:
                client.follow(pid)
            assert all(len(s.executed_prompt_ids) >= 1 for s in cluster)
            assert sum(len(s.executed_prompt_ids) for s in cluster) == 6
            assert requests.get(gw.url + "/prompt", timeout=5).json() == {"exec_info": {"queue_remaining": 0}}
        finally:
            client.close()


def test_a_server_killed_mid_job_the_client_sees_one_job_finishing(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            for server in cluster:  # the job cannot end before the victim stops, whatever the load
                server.pause_jobs()
            pid = client.run(sleep_workflow(seconds=0.5, steps=10, seed=7))
            victim = running_on(cluster)
            client.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "executing")
            victim.stop()
            next(s for s in cluster if s is not victim).resume_jobs()
            msgs = client.follow(pid, timeout=30)
            assert kinds(msgs).count("execution_start") == 1
            assert kinds(msgs)[-2:] == ["execution_success", "executing"]
            assert "execution_error" not in kinds(msgs) and "execution_interrupted" not in kinds(msgs)
            survivor = next(s for s in cluster if s is not victim)
            assert len(survivor.executed_prompt_ids) == 1
            item = client.history(pid)
            assert item["status"]["status_str"] == "success"
            assert client.view(item["outputs"]["3"]["images"][0]).status_code == 200  # served by the survivor
        finally:
            client.close()


def test_interrupt_with_an_id_stops_that_job_only(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    with gateway_over(cluster, server_mock1={"max_queue": 1}, server_mock2={"max_queue": 1}) as gw:
        a, b = ScriptClient(gw.url), ScriptClient(gw.url)
        try:
            pa = a.run(sleep_workflow(seconds=5.0, steps=50, seed=1))
            pb = b.run(sleep_workflow(seconds=0.6, steps=6, seed=2))
            for c in (a, b):
                c.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            for s in cluster:  # both jobs held mid-run (interrupts still work), whatever the load
                s.pause_jobs()
            assert requests.post(gw.url + "/interrupt", json={"prompt_id": pa}, timeout=5).status_code == 200
            assert kinds(a.follow(pa))[-2:] == ["execution_interrupted", "executing"]
            for s in cluster:
                s.resume_jobs()
            assert kinds(b.follow(pb))[-2:] == ["execution_success", "executing"]
            assert a.history(pa)["status"]["status_str"] == "error"
            assert b.history(pb)["status"]["status_str"] == "success"
            # Every interrupt that reached a server named its job.
            assert all(isinstance(body, dict) and body.get("prompt_id") for s in cluster for body in s.interrupt_requests)
        finally:
            a.close()
            b.close()


def test_interrupt_without_id_never_stops_another_clients_job_on_a_shared_server(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster[0]
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            # Someone else's job runs on the server itself, not through the gateway.
            server.pause_jobs()
            other = requests.post(server.url + "/prompt", json={"prompt": sleep_workflow(seconds=0.1, steps=5, seed=3)}, timeout=5).json()["prompt_id"]
            pid = client.run(sleep_workflow(seconds=0.05, steps=1, seed=4))  # waits behind it there
            wait_until(lambda: (lambda r, q: r == [other] and len(q) == 1)(*server.queue_snapshot()), message="theirs running, ours pending on the server")
            requests.post(gw.url + "/interrupt", data=b"", timeout=5)  # no id: only gateway jobs running now
            server.resume_jobs()
            msgs = client.follow(pid)
            assert kinds(msgs)[-2:] == ["execution_success", "executing"]
            assert other in server.executed_prompt_ids
            assert server.interrupt_requests == []
        finally:
            client.close()


def test_validation_errors_in_comfyui_shape_judged_by_capable_servers(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0, 1.0), models={"checkpoints": ["shared.safetensors"]})
    cluster[1].stop()
    only_two = MockCluster(speeds=(1.0,), names=["special"], models={"checkpoints": ["rare.safetensors"]}, node_types=["EmptyImage", "SaveImage", "TestFail"]).start()
    try:
        from comfy_cluster import ServerPool
        from comfy_cluster.gateway import Gateway

        pool = ServerPool([{"url": cluster[0].url, "name": "a"}, {"url": only_two[0].url, "name": "b"}], status_ttl=0.5)
        gw = Gateway(pool, port=0).start()
        try:
            def post(prompt: Any) -> requests.Response:
                return requests.post(gw.url + "/prompt", json={"prompt": prompt}, timeout=10)

            r = post({"1": {"class_type": "NoSuchNode", "inputs": {}}})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_prompt"
            assert r.json()["error"]["message"] == "Cannot execute because node NoSuchNode does not exist."
            r = post({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}})
            assert r.status_code == 400 and r.json()["error"]["type"] == "prompt_no_outputs"
            bad = image_workflow()
            bad["1"]["inputs"]["width"] = "wide"
            r = post(bad)
            assert r.status_code == 400
            body = r.json()
            assert body["error"]["type"] == "prompt_outputs_failed_validation"
            assert body["node_errors"]["1"]["errors"][0]["type"] == "invalid_input_type"
            assert body["node_errors"]["1"]["dependent_outputs"] == ["3"] and body["node_errors"]["1"]["class_type"] == "EmptyImage"
            r = post(txt2img_workflow(ckpt_name="nowhere.safetensors"))
            assert r.status_code == 400 and r.json()["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
            # A model one server has, a node type only one server has: accepted.
            assert post(txt2img_workflow(ckpt_name="shared.safetensors")).status_code == 200
            assert post(fail_workflow()).status_code == 200
            assert post(txt2img_workflow(ckpt_name="rare.safetensors")).status_code == 400  # b lacks KSampler
            assert requests.post(gw.url + "/prompt", data=b"{nope", timeout=5).status_code == 500
            assert requests.post(gw.url + "/prompt", json={"client_id": "x"}, timeout=5).json()["error"]["type"] == "no_prompt"
        finally:
            gw.stop()
            pool.close()
    finally:
        only_two.stop()


def test_queue_delete_and_clear_and_history_delete(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, server_mock1={"max_queue": 1}) as gw:
        client = ScriptClient(gw.url)
        try:
            cluster[0].pause_jobs()
            ids = [client.run(sleep_workflow(seconds=0.05, steps=1, seed=i)) for i in range(4)]
            queue = wait_until(lambda: (lambda q: q if q["queue_running"] else None)(requests.get(gw.url + "/queue", timeout=5).json()))
            assert [item[1] for item in queue["queue_running"]] == [ids[0]]
            assert [item[1] for item in queue["queue_pending"]] == ids[1:]
            item = queue["queue_pending"][0]
            assert len(item) == 5 and item[3] == {"client_id": client.client_id} and item[4] == ["3"]
            assert requests.post(gw.url + "/queue", json={"delete": [ids[1], "unknown"]}, timeout=5).status_code == 200
            assert [i[1] for i in requests.get(gw.url + "/queue", timeout=5).json()["queue_pending"]] == ids[2:]
            requests.post(gw.url + "/api/queue", json={"clear": True}, timeout=5)
            assert requests.get(gw.url + "/queue", timeout=5).json()["queue_pending"] == []
            cluster[0].resume_jobs()
            client.follow(ids[0])
            assert requests.get(f"{gw.url}/history/{ids[1]}", timeout=5).json() == {}  # deleted: no history, as ComfyUI
            assert list(requests.get(gw.url + "/history?max_items=5", timeout=5).json()) == [ids[0]]
            requests.post(gw.url + "/history", json={"delete": [ids[0]]}, timeout=5)
            assert requests.get(gw.url + "/history", timeout=5).json() == {}
            assert len(cluster[0].executed_prompt_ids) == 1
        finally:
            client.close()


def test_a_prompt_id_sent_again_after_its_end_runs_and_ends_again(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            for seed in (1, 2):
                assert client.run(sleep_workflow(seconds=0.02, steps=1, seed=seed), prompt_id="my-render") == "my-render"
                wait_until(lambda: sum(1 for f in client.socket.wait_for(lambda f: True) if is_done("my-render")(f)) == seed, timeout=20,
                           message=f"end {seed} of my-render")
            ends = [f["type"] for f in of_prompt(client.socket.wait_for(lambda f: True), "my-render") if f["type"] == "execution_success"]
            assert ends == ["execution_success"] * 2 and len(cluster[0].executed_prompt_ids) == 2
        finally:
            client.close()


def test_a_runtime_error_reaches_the_client_as_execution_error(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            pid = client.run(fail_workflow(message="kaputt"))
            msgs = client.follow(pid)
            err = [m for m in msgs if m["type"] == "execution_error"][0]["data"]
            assert err["exception_message"].strip() == "kaputt" and err["node_id"] == "2" and err["prompt_id"] == pid
            assert client.history(pid)["status"]["status_str"] == "error"
        finally:
            client.close()


def test_events_posted_before_the_socket_connects_are_delivered(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        nuke = NukeRemoteClient(gw.url)
        gate = threading.Event()
        try:
            pid = nuke.run(sleep_workflow(seconds=0.05, steps=2, seed=5), socket_gate=gate)
            wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", timeout=5).json(), message="the job done")
            gate.set()  # the socket connects only now
            frames = nuke.wait_done(pid)
            first = frames[0]
            assert isinstance(first, dict) and first["type"] == "status"
            assert kinds(of_prompt(frames, pid))[0] == "execution_start"
            assert kinds(of_prompt(frames, pid))[-2:] == ["execution_success", "executing"]
        finally:
            nuke.close()


def test_the_cluster_as_one_server_info_endpoints(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,), models={"checkpoints": ["one.safetensors"]})
    extra = MockCluster(speeds=(1.0,), names=["other"], models={"checkpoints": ["two.safetensors"]}, node_types=["EmptyImage", "SaveImage", "CheckpointLoaderSimple"], device_name="cuda:0 NVIDIA RTX").start()
    try:
        from comfy_cluster import ServerPool
        from comfy_cluster.gateway import Gateway

        pool = ServerPool([{"url": cluster[0].url, "name": "a"}, {"url": extra[0].url, "name": "b"}])
        gw = Gateway(pool, port=0, argv=["/mnt/comfyui/main.py"]).start()
        try:
            info = requests.get(gw.url + "/object_info", timeout=5).json()
            assert "KSampler" in info and "SaveImageWebsocket" in info
            assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["one.safetensors", "two.safetensors"]
            assert list(requests.get(gw.url + "/api/object_info/KSampler", timeout=5).json()) == ["KSampler"]
            assert requests.get(gw.url + "/object_info/Nope", timeout=5).json() == {}
            stats = requests.get(gw.url + "/system_stats", timeout=5).json()
            assert sorted(d["name"] for d in stats["devices"]) == ["a: cpu", "b: cuda:0 NVIDIA RTX"]
            assert stats["system"]["argv"] == ["/mnt/comfyui/main.py"]
            assert requests.get(gw.url + "/models/checkpoints", timeout=5).json() == ["one.safetensors", "two.safetensors"]
            assert "checkpoints" in requests.get(gw.url + "/models", timeout=5).json()
            assert requests.get(gw.url + "/models/nowhere", timeout=5).status_code == 404
            assert requests.get(gw.url + "/embeddings", timeout=5).json() == []
            assert requests.get(gw.url + "/features", timeout=5).json()["max_upload_size"] == 100 * 1024 * 1024
            assert requests.patch(gw.url + "/internal/logs/subscribe", json={"clientId": "x", "enabled": True}, timeout=5).status_code == 200
        finally:
            gw.stop()
            pool.close()
    finally:
        extra.stop()


def test_a_token_is_required_when_set(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, token="s3cret") as gw:
        assert requests.get(gw.url + "/queue", timeout=5).status_code == 401
        assert requests.post(gw.url + "/prompt", json={"prompt": image_workflow()}, timeout=5).status_code == 401
        assert requests.get(gw.url + "/queue", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection("ws" + gw.url[4:] + "/ws?clientId=x", timeout=5)
        assert refused.value.status_code == 401
        assert "s3cret" not in requests.get(gw.url + "/queue", timeout=5).text
        assert requests.get(gw.url + "/queue?token=s3cret", timeout=5).status_code == 200
        client = ScriptClient(gw.url, token="s3cret")
        try:
            pid = client.run(image_workflow(color=9))
            assert kinds(client.follow(pid))[-2:] == ["execution_success", "executing"]
        finally:
            client.close()


def test_stop_cancels_unfinished_jobs_and_frees_the_port(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        pid = client.run(sleep_workflow(seconds=10.0, steps=100, seed=8))
        client.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
        gw.stop()
        client.close()
        wait_until(lambda: not any(cluster[0].queue_snapshot()), timeout=15, message="the job cancelled on its server")
        assert any(b.get("prompt_id") for b in cluster[0].interrupt_requests)
        with pytest.raises(requests.ConnectionError):
            requests.get(gw.url + "/queue", timeout=2)
        assert pid


def test_binary_frames_reach_the_client_of_the_job(mock_cluster_factory: Factory) -> None:
    # Stock SaveImageWebsocket sends its images only as binary frames; sampling sends previews.
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    with gateway_over(cluster) as gw:
        client, bystander = ScriptClient(gw.url), ScriptClient(gw.url)
        try:
            prompt = {
                "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": 0x336699}},
                "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
            }
            pid = client.run(prompt)
            frames = client.socket.wait_for(is_done(pid))
            images = [f for f in frames if isinstance(f, bytes)]
            assert len(images) == 2
            assert all(f[:8] == b"\x00\x00\x00\x01\x00\x00\x00\x02" and f[8:] == png_bytes(16, 8, (0x33, 0x66, 0x99)) for f in images)
            pid2 = client.run(txt2img_workflow(steps=3, seed=21))
            frames = client.socket.wait_for(is_done(pid2))
            assert sum(1 for f in frames if isinstance(f, bytes)) == 2 + 3  # a preview per step
            assert not any(isinstance(f, bytes) for f in bystander.socket.frames)
        finally:
            client.close()
            bystander.close()


def test_a_prompt_no_server_can_take_ends_with_execution_error(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        try:
            cluster[0].stop()
            wait_until(lambda: not gw.pool.status(refresh=True)[0].online, message="the server seen offline")
            pid = client.run(image_workflow(color=5))  # nothing to judge it by: accepted, as queued
            msgs = client.follow(pid)
            assert kinds(msgs) == ["execution_error", "executing"]
            assert "no server" in msgs[0]["data"]["exception_message"]
            assert client.history(pid)["status"]["status_str"] == "error"
        finally:
            client.close()


def test_stop_leaves_no_thread_and_no_socket(mock_cluster_factory: Factory) -> None:
    import threading as _threading

    cluster = mock_cluster_factory(speeds=(1.0,))
    before = {t.name for t in _threading.enumerate()}
    with gateway_over(cluster) as gw:
        client = ScriptClient(gw.url)
        client.follow(client.run(image_workflow(color=6)))
        client.close()
        gw.stop()
        left = [t.name for t in _threading.enumerate() if t.name.startswith("comfy-cluster-gateway") and t.name not in before]
        assert left == []
        assert gw.running is False
        with pytest.raises(requests.ConnectionError):
            requests.get(gw.url + "/prompt", timeout=2)
        gw.stop()  # twice is fine
