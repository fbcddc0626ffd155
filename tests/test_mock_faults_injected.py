"""The mock faults added for issue 11's fault matrix: each switched on, shown to do what it
says, switched off (like tests/test_mock_faults.py), and reachable from the CLI's stdin."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from typing import Any, Dict, List

import pytest
import requests
import websocket

from comfy_cluster.testing import MockComfyServer, wait_until
from comfy_cluster.testing.cli import apply_command
from comfy_cluster.testing.listener import WsListener
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import image_workflow, load_image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(30)


def submit(server: MockComfyServer, prompt: Dict[str, Any], client_id: str = "", prompt_id: str = "") -> str:
    body: Dict[str, Any] = {"prompt": prompt}
    if client_id:
        body["client_id"] = client_id
    if prompt_id:
        body["prompt_id"] = prompt_id
    r = requests.post(server.url + "/prompt", json=body, timeout=5)
    assert r.status_code == 200, r.text
    answer: str = r.json()["prompt_id"]
    return answer


def works(server: MockComfyServer) -> None:
    """The server answers normally again: JSON, websocket and a job."""
    assert requests.get(server.url + "/history", timeout=2).status_code == 200
    with WsListener(server.url, timeout=2) as listener:
        prompt_id = submit(server, image_workflow(color=uuid.uuid4().int % 1000), listener.client_id)
        assert listener.until_done(prompt_id, timeout=5)[-1]["type"] == "executing"


def upload(server: MockComfyServer, name: str, data: bytes) -> None:
    files = {"image": (name, io.BytesIO(data), "image/png")}
    r = requests.post(server.url + "/upload/image", files=files, data={"overwrite": "true"}, timeout=5)
    assert r.status_code == 200, r.text


def test_burst_of_500s_on_history_then_normal(mock_comfy: MockComfyServer) -> None:
    mock_comfy.fail_route("/history", "500", count=3)
    statuses = [requests.get(mock_comfy.url + path, timeout=2).status_code for path in ("/history", "/api/history/x", "/history")]
    assert statuses == [500, 500, 500]
    assert requests.get(mock_comfy.url + "/queue", timeout=2).status_code == 200  # other routes untouched
    assert requests.get(mock_comfy.url + "/history", timeout=2).status_code == 200  # the burst is over
    assert mock_comfy.route_faults() == []
    works(mock_comfy)


def test_route_hang_times_out_until_cleared(mock_comfy: MockComfyServer) -> None:
    mock_comfy.fail_route("/object_info", "hang")
    for _ in range(2):
        with pytest.raises(requests.ReadTimeout):
            requests.get(mock_comfy.url + "/object_info", timeout=0.3)
    assert requests.get(mock_comfy.url + "/system_stats", timeout=2).status_code == 200
    mock_comfy.clear_route_faults()
    assert requests.get(mock_comfy.url + "/object_info", timeout=5).status_code == 200
    works(mock_comfy)


def test_answered_counts_requests_per_route(mock_comfy: MockComfyServer) -> None:
    before = mock_comfy.answered("/object_info")
    requests.get(mock_comfy.url + "/object_info", timeout=5)
    requests.get(mock_comfy.url + "/api/object_info", timeout=5)
    mock_comfy.fail_route("/object_info", "500", count=1)
    requests.get(mock_comfy.url + "/object_info", timeout=5)  # not answered by its handler
    assert mock_comfy.answered("/object_info") == before + 2
    assert mock_comfy.answered("/history") == 0


def test_route_reset_cuts_the_connection(mock_comfy: MockComfyServer) -> None:
    mock_comfy.fail_route("/history", "reset", count=1, method="GET")
    with pytest.raises(requests.ConnectionError):
        requests.get(mock_comfy.url + "/history", timeout=2)
    assert requests.get(mock_comfy.url + "/history", timeout=2).status_code == 200
    works(mock_comfy)


def test_held_requests_are_answered_when_released(mock_comfy: MockComfyServer) -> None:
    mock_comfy.fail_route("/queue", "hang", method="GET")
    answers: List[int] = []
    thread = threading.Thread(target=lambda: answers.append(requests.get(mock_comfy.url + "/queue", timeout=10).status_code))
    thread.start()
    wait_until(lambda: mock_comfy.held_requests() == 1, message="request held")
    mock_comfy.clear_route_faults()
    thread.join(10)
    assert answers == [200] and mock_comfy.held_requests() == 0


def test_accept_then_stall_on_post_prompt(mock_comfy: MockComfyServer) -> None:
    mock_comfy.stall_prompt()  # the answer never comes
    prompt_id = str(uuid.uuid4())
    with WsListener(mock_comfy.url) as listener:
        with pytest.raises(requests.ReadTimeout):
            requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow(color=11), "prompt_id": prompt_id, "client_id": listener.client_id}, timeout=0.5)
        listener.until_done(prompt_id)  # queued and run although the client saw a time-out
    assert mock_comfy.executed_prompt_ids == [prompt_id]
    assert mock_comfy.execution_counts() == {prompt_id: 1}
    # A late answer: it comes after the delay.
    mock_comfy.clear_route_faults()
    mock_comfy.stall_prompt(delay=0.3, count=1)
    late = str(uuid.uuid4())
    r = requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow(color=12), "prompt_id": late}, timeout=5)
    assert r.json()["prompt_id"] == late
    works(mock_comfy)


def test_refuse_for_a_while_keeps_queue_and_running_job(mock_comfy: MockComfyServer) -> None:
    port = mock_comfy.port
    with WsListener(mock_comfy.url) as listener:
        running = submit(mock_comfy, sleep_workflow(seconds=0.3, steps=3), listener.client_id)
        listener.until(lambda m: m["type"] == "progress")
        mock_comfy.refuse_for(2.0)  # long enough to be seen refusing on a loaded machine
        with pytest.raises(requests.ConnectionError):
            requests.get(mock_comfy.url + "/queue", timeout=1)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            listener.expect_silence(2.0)
    wait_until(lambda: requests_ok(mock_comfy), message="listening again")
    assert mock_comfy.port == port and mock_comfy.fault is None
    wait_until(lambda: running in mock_comfy.executed_prompt_ids, message="the job ran on through the split")
    mock_comfy.refuse_for(0.2, wait=True)
    assert requests_ok(mock_comfy)
    works(mock_comfy)


def requests_ok(server: MockComfyServer) -> bool:
    try:
        return requests.get(server.url + "/queue", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_interrupt_ignoring_the_prompt_id(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        mock_comfy.pause_jobs()
        running = submit(mock_comfy, sleep_workflow(seconds=0.1, steps=1), listener.client_id)
        listener.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": str(uuid.uuid4())}, timeout=2)
        assert mock_comfy.queue_snapshot() == ([running], [])  # a current server: ignored
        mock_comfy.interrupt_ignores_id = True
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": str(uuid.uuid4())}, timeout=2)
        assert listener.until_event(running, timeout=5)[-1]["type"] == "execution_interrupted"
        mock_comfy.resume_jobs()
    assert [r.outcome for r in mock_comfy.executions] == ["interrupted"]
    mock_comfy.clear_faults()
    assert not mock_comfy.interrupt_ignores_id
    works(mock_comfy)


def test_executions_record_the_input_bytes_read(mock_comfy: MockComfyServer) -> None:
    first, second = png_bytes(8, 8, (1, 2, 3)), png_bytes(8, 8, (4, 5, 6))
    upload(mock_comfy, "plate.png", first)
    a = submit(mock_comfy, load_image_workflow("plate.png", prefix="a"))
    assert mock_comfy.wait_idle()
    b = submit(mock_comfy, load_image_workflow("plate.png", prefix="b"))  # cached: same bytes
    assert mock_comfy.wait_idle()
    upload(mock_comfy, "plate.png", second)  # overwritten under the same name
    c = submit(mock_comfy, load_image_workflow("plate.png", prefix="c"))
    assert mock_comfy.wait_idle()
    records = mock_comfy.executions
    assert [r.prompt_id for r in records] == [a, b, c] and [r.outcome for r in records] == ["success"] * 3
    digest = {x: hashlib.sha256(x).hexdigest() for x in (first, second)}
    assert [r.inputs for r in records] == [
        {"1": ("plate.png", digest[first])},
        {"1": ("plate.png", digest[first])},
        {"1": ("plate.png", digest[second])},
    ]
    assert records[0].prompt["3"]["inputs"]["filename_prefix"] == "a"
    assert mock_comfy.execution_counts() == {a: 1, b: 1, c: 1}
    # The same prompt_id posted twice runs twice, and the record says so.
    twice = str(uuid.uuid4())
    submit(mock_comfy, image_workflow(color=1), prompt_id=twice)
    submit(mock_comfy, image_workflow(color=2), prompt_id=twice)
    assert mock_comfy.wait_idle()
    assert mock_comfy.execution_counts()[twice] == 2


def test_restart_marks_the_running_execution_abandoned(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        lost = submit(mock_comfy, sleep_workflow(seconds=10, steps=100), listener.client_id)
        listener.until(lambda m: m["type"] == "progress")
    mock_comfy.restart()
    assert [(r.prompt_id, r.outcome) for r in mock_comfy.executions] == [(lost, "abandoned")]


def test_muted_websocket_loses_frames_but_stays_open(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as deaf, WsListener(mock_comfy.url) as hearing:
        mock_comfy.mute_websockets(deaf.client_id)
        prompt_id = submit(mock_comfy, image_workflow(color=21), deaf.client_id)
        assert mock_comfy.wait_idle()
        hearing_id = submit(mock_comfy, image_workflow(color=22), hearing.client_id)
        hearing.until_done(hearing_id)
        assert deaf.expect_silence(0.3) == []  # nothing came, not even status frames
        mock_comfy.unmute_websockets()
        again = submit(mock_comfy, image_workflow(color=23), deaf.client_id)
        deaf.until_done(again)
    assert prompt_id in mock_comfy.executed_prompt_ids
    mock_comfy.mute_websockets()  # everyone
    mock_comfy.clear_faults()
    works(mock_comfy)


def test_late_noticed_close_drops_the_new_registration(mock_comfy: MockComfyServer) -> None:
    old = WsListener(mock_comfy.url)
    assert mock_comfy.drop_websockets_late() == 1
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        old.expect_silence(1.0)
    with WsListener(mock_comfy.url, client_id=old.client_id) as again:
        # The old socket's close is handled now, and takes the new socket's registration.
        wait_until(lambda: old.client_id not in mock_comfy.connected_clients(), message="registration dropped")
        prompt_id = submit(mock_comfy, image_workflow(color=31), again.client_id)
        assert mock_comfy.wait_idle()
        assert again.expect_silence(0.3) == []  # deaf: no events for its own job
    assert prompt_id in mock_comfy.executed_prompt_ids
    works(mock_comfy)


def test_cli_commands_for_the_new_faults(mock_comfy: MockComfyServer) -> None:
    assert apply_command(mock_comfy, "route /history 500 2") == "route /history: 500 (2)"
    assert requests.get(mock_comfy.url + "/history", timeout=2).status_code == 500
    assert apply_command(mock_comfy, "route off") == "route faults: off"
    assert requests.get(mock_comfy.url + "/history", timeout=2).status_code == 200
    assert "never" in str(apply_command(mock_comfy, "stall-prompt"))
    with pytest.raises(requests.ReadTimeout):
        requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow(color=41)}, timeout=0.3)
    assert apply_command(mock_comfy, "stall-prompt off") == "stall-prompt: off"
    assert apply_command(mock_comfy, "interrupt-ignores-id on") == "interrupt-ignores-id: on"
    assert mock_comfy.interrupt_ignores_id
    apply_command(mock_comfy, "interrupt-ignores-id off")
    assert apply_command(mock_comfy, "mute-ws") == "websockets muted: all"
    assert apply_command(mock_comfy, "mute-ws off") == "websockets: unmuted"
    assert str(apply_command(mock_comfy, "drop-ws-late")).startswith("dropped 0 websocket(s)")
    assert mock_comfy.wait_idle()
    assert "success" in str(apply_command(mock_comfy, "executions"))
    assert apply_command(mock_comfy, "refuse-for 0.3") == "refusing for 0.3s"
    wait_until(lambda: requests_ok(mock_comfy), message="back after the window")
    for bad in ("route /history sideways", "route /x", "refuse-for", "interrupt-ignores-id maybe"):
        with pytest.raises(ValueError):
            apply_command(mock_comfy, bad)
    with pytest.raises(ValueError):
        mock_comfy.fail_route("/history", "500", count=0)
    works(mock_comfy)
