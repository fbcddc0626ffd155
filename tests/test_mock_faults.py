"""Each fault of the mock server: switched on, shown to do what it says, switched off."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Dict

import pytest
import requests
import websocket
from helpers import CLOCK_TICK

from comfy_cluster.testing import Fault, MockComfyServer, wait_until
from comfy_cluster.testing.listener import WsListener
from comfy_cluster.testing.workflows import image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(30)


def submit(server: MockComfyServer, prompt: Dict[str, Any], client_id: str = "") -> str:
    body: Dict[str, Any] = {"prompt": prompt}
    if client_id:
        body["client_id"] = client_id
    r = requests.post(server.url + "/prompt", json=body, timeout=5)
    assert r.status_code == 200, r.text
    prompt_id: str = r.json()["prompt_id"]
    return prompt_id


def works(server: MockComfyServer) -> None:
    """The server answers normally again: JSON, websocket and a job."""
    assert requests.get(server.url + "/queue", timeout=2).json().keys() == {"queue_running", "queue_pending"}
    with WsListener(server.url, timeout=2) as listener:
        prompt_id = submit(server, image_workflow(color=int(time.time_ns() % 1000)), listener.client_id)
        assert listener.until_done(prompt_id, timeout=5)[-1]["type"] == "executing"


def refused(server: MockComfyServer) -> bool:
    try:
        requests.get(server.url + "/prompt", timeout=1)
    except requests.ConnectionError:
        return True
    return False


def test_refuse_closes_the_port_but_keeps_the_work(mock_comfy: MockComfyServer) -> None:
    port = mock_comfy.port
    listener = WsListener(mock_comfy.url)
    running = submit(mock_comfy, sleep_workflow(seconds=0.4, steps=4), listener.client_id)
    pending = submit(mock_comfy, image_workflow(color=5))
    listener.until(lambda m: m["type"] == "progress")
    mock_comfy.set_fault(Fault.REFUSE)
    with pytest.raises(requests.ConnectionError):
        requests.get(mock_comfy.url + "/prompt", timeout=1)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        listener.expect_silence(1.0)  # the open websocket was cut
    with pytest.raises((ConnectionError, OSError)):
        WsListener(mock_comfy.url, timeout=1)
    # The machine is unreachable, not restarted: the jobs carry on.
    wait_until(lambda: mock_comfy.executed_prompt_ids == [running, pending], message="jobs done while refusing")
    mock_comfy.set_fault(None)
    assert mock_comfy.port == port
    assert set(requests.get(mock_comfy.url + "/history", timeout=2).json()) == {running, pending}
    works(mock_comfy)


def test_hang_accepts_and_never_answers(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault("hang")
    assert mock_comfy.fault is Fault.HANG
    with pytest.raises(requests.ReadTimeout):
        requests.get(mock_comfy.url + "/queue", timeout=0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        websocket.create_connection(mock_comfy.ws_url, timeout=0.3)
    # A request still waiting when the fault is cleared is then answered.
    answers: Dict[str, Any] = {}
    waiting = threading.Thread(target=lambda: answers.update(r=requests.get(mock_comfy.url + "/prompt", timeout=5)))
    waiting.start()
    wait_until(lambda: len(mock_comfy._hung) >= 1, message="request held")  # noqa: SLF001 - white-box check
    mock_comfy.set_fault(None)
    waiting.join(5)
    assert answers["r"].json() == {"exec_info": {"queue_remaining": 0}}
    works(mock_comfy)


def test_stop_while_requests_hang_is_quick_and_leaks_nothing() -> None:
    server = MockComfyServer(name="hangstop").start()
    server.set_fault(Fault.HANG)
    errors = []

    def call() -> None:
        try:
            requests.get(server.url + "/queue", timeout=60)
        except requests.RequestException as ex:
            errors.append(ex)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(server._hung) == 3, message="three requests held")  # noqa: SLF001
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 10.0  # without waiting for the held requests (60 s)
    for thread in threads:
        thread.join(5)
    assert len(errors) == 3  # the connections were cut, not answered
    assert not any(t.name == "mock-comfy-hangstop" for t in threading.enumerate())


def test_error_500_on_every_route(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault(Fault.ERROR_500)
    for method, path in (("GET", "/queue"), ("GET", "/api/system_stats"), ("GET", "/view?filename=x.png"), ("POST", "/interrupt")):
        r = requests.request(method, mock_comfy.url + path, timeout=2)
        assert r.status_code == 500 and r.headers["Content-Type"].startswith("text/plain"), path
        assert "500 Internal Server Error" in r.text
    r = requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow()}, timeout=2)
    assert r.status_code == 500 and mock_comfy.received_prompts == []  # nothing was queued
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(mock_comfy.ws_url, timeout=2)
    mock_comfy.set_fault(None)
    works(mock_comfy)


def test_malformed_json_answers(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault(Fault.MALFORMED)
    r = requests.get(mock_comfy.url + "/queue", timeout=2)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.text.startswith('{"queue_running": [')
    with pytest.raises(ValueError):
        r.json()
    # The handler still ran: the job is queued although its answer cannot be read.
    r = requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow()}, timeout=2)
    with pytest.raises(ValueError):
        r.json()
    assert len(mock_comfy.received_prompts) == 1
    assert requests.post(mock_comfy.url + "/queue", json={"clear": True}, timeout=2).status_code == 200  # not JSON: as is
    mock_comfy.set_fault(None)
    works(mock_comfy)


def test_truncated_answers(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault(Fault.TRUNCATED)
    for path in ("/queue", "/system_stats", "/object_info"):
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
            requests.get(mock_comfy.url + path, timeout=2)
    # Reading the raw stream shows the promise and what was kept of it.
    r = requests.get(mock_comfy.url + "/system_stats", timeout=2, stream=True)
    announced = int(r.headers["Content-Length"])
    received = b""
    with pytest.raises(Exception):
        for chunk in r.raw.stream(1024, decode_content=False):
            received += chunk
    assert 0 < len(received) < announced
    with pytest.raises((websocket.WebSocketException, ConnectionError)):
        websocket.create_connection(mock_comfy.ws_url, timeout=2)
    mock_comfy.set_fault(None)
    works(mock_comfy)


def test_huge_answers(mock_comfy: MockComfyServer) -> None:
    mock_comfy.huge_ws_bytes = 4 * 1024 * 1024  # websocket-client validates UTF-8 slowly
    listener = websocket.create_connection(mock_comfy.ws_url + "?clientId=big", timeout=5, skip_utf8_validation=True)
    assert json.loads(listener.recv())["type"] == "status"
    mock_comfy.set_fault(Fault.HUGE)
    frame = listener.recv()  # an open socket gets one huge frame when the fault starts
    assert len(frame) > 4 * 1024 * 1024
    listener.close()
    r = requests.get(mock_comfy.url + "/queue", timeout=5, stream=True)
    assert r.status_code == 200 and "Content-Length" not in r.headers
    read = 0
    for chunk in r.iter_content(1 << 16):
        read += len(chunk)
        if read > 8 * 1024 * 1024:
            break
    r.close()
    assert read > 8 * 1024 * 1024  # a client without a cap would read 64 MiB
    fresh = websocket.create_connection(mock_comfy.ws_url, timeout=5, skip_utf8_validation=True)
    assert json.loads(fresh.recv())["type"] == "status"
    assert len(fresh.recv()) > 4 * 1024 * 1024  # and a new one gets it after its first status
    fresh.close()
    assert requests.get(mock_comfy.url + "/view", params={"filename": "x.png"}, timeout=2).status_code == 404
    mock_comfy.set_fault(None)
    works(mock_comfy)


def test_huge_http_body_ends_when_complete() -> None:
    with MockComfyServer(name="huge") as server:
        server.huge_http_bytes = 1024 * 1024
        server.set_fault(Fault.HUGE)
        body = requests.get(server.url + "/prompt", timeout=5).json()  # valid JSON, just big
        assert len(body["padding"]) >= 1024 * 1024


def test_latency(mock_comfy: MockComfyServer) -> None:
    latency = 1.0  # works() meets it at least 3 times (queue, websocket, prompt): >= 3 s
    mock_comfy.set_latency(latency)
    started = time.monotonic()
    requests.get(mock_comfy.url + "/prompt", timeout=5)
    assert time.monotonic() - started >= latency - CLOCK_TICK
    started = time.monotonic()
    WsListener(mock_comfy.url, timeout=5).close()
    assert time.monotonic() - started >= latency - CLOCK_TICK
    with pytest.raises(requests.ReadTimeout):
        requests.get(mock_comfy.url + "/prompt", timeout=0.1)
    mock_comfy.set_latency(0)
    started = time.monotonic()
    works(mock_comfy)
    assert time.monotonic() - started < 2.5 * latency  # no latency left (with it: >= 3 s)


def test_drop_websockets(mock_comfy: MockComfyServer) -> None:
    first, second = WsListener(mock_comfy.url), WsListener(mock_comfy.url)
    wait_until(lambda: len(mock_comfy.connected_clients()) == 2, message="two clients")
    assert mock_comfy.drop_websockets() == 2
    for listener in (first, second):
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            listener.expect_silence(1.0)
    assert mock_comfy.connected_clients() == []
    # The server keeps running and the client may reconnect with its id.
    with WsListener(mock_comfy.url, client_id=first.client_id) as again:
        prompt_id = submit(mock_comfy, image_workflow(color=77), again.client_id)
        again.until_done(prompt_id)
    works(mock_comfy)


def test_restart_mid_job_comes_back_empty(mock_comfy: MockComfyServer) -> None:
    port = mock_comfy.port
    done_before = submit(mock_comfy, image_workflow(color=1))
    assert mock_comfy.wait_idle()
    listener = WsListener(mock_comfy.url)
    lost = submit(mock_comfy, sleep_workflow(seconds=10, steps=100), listener.client_id)
    lost_pending = submit(mock_comfy, image_workflow(color=2), listener.client_id)
    listener.until(lambda m: m["type"] == "progress")
    mock_comfy.restart(down_for=2.0, wait=False)  # long enough to be seen down on a loaded machine
    with pytest.raises(requests.ConnectionError):
        requests.get(mock_comfy.url + "/prompt", timeout=1)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        listener.expect_silence(1.0)
    assert not [m for m in listener.messages if m.get("data", {}).get("prompt_id") == lost and m["type"].startswith("execution_") and m["type"] not in ("execution_start", "execution_cached")]
    wait_until(lambda: not refused(mock_comfy), timeout=30, message="server back")
    assert mock_comfy.port == port
    assert requests.get(mock_comfy.url + "/queue", timeout=2).json() == {"queue_running": [], "queue_pending": []}
    assert requests.get(mock_comfy.url + "/history", timeout=2).json() == {}
    assert requests.get(f"{mock_comfy.url}/history/{lost}", timeout=2).json() == {}
    # Reconnecting with the same id: no word about the lost jobs, ever.
    with WsListener(mock_comfy.url, client_id=listener.client_id) as again:
        assert again.first is not None and again.first["data"]["status"]["exec_info"]["queue_remaining"] == 0
        assert again.expect_silence(0.2) == []
    assert mock_comfy.executed_prompt_ids == [done_before]  # kept across restarts
    assert lost not in mock_comfy.history_ids() and lost_pending not in mock_comfy.history_ids()
    # Queue numbers start again at 0 and the cache is gone (a fresh run, not cached).
    r = requests.post(mock_comfy.url + "/prompt", json={"prompt": image_workflow(color=1)}, timeout=2).json()
    assert r["number"] == 0
    with WsListener(mock_comfy.url) as check:
        again_id = submit(mock_comfy, image_workflow(color=1), check.client_id)
        messages = check.until_done(again_id)
    assert [m["data"]["nodes"] for m in messages if m["type"] == "execution_cached"] == [["1", "2", "3"]]
    works(mock_comfy)


def test_restart_waits_until_back_by_default(mock_comfy: MockComfyServer) -> None:
    started = time.monotonic()
    mock_comfy.restart(down_for=0.2)
    assert time.monotonic() - started >= 0.2 - CLOCK_TICK
    assert not refused(mock_comfy)
    works(mock_comfy)


def test_restart_while_refusing_stays_down_until_cleared(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault(Fault.REFUSE)
    mock_comfy.restart()
    assert refused(mock_comfy)
    mock_comfy.set_fault(None)
    works(mock_comfy)


def test_fail_next_job(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        running = submit(mock_comfy, sleep_workflow(seconds=0.3, steps=3), listener.client_id)
        listener.until(lambda m: m["type"] == "progress")
        mock_comfy.fail_next_job("injected GPU failure")  # not the running one: the next
        failing = submit(mock_comfy, image_workflow(color=3), listener.client_id)
        fine = submit(mock_comfy, image_workflow(color=4), listener.client_id)
        listener.until_done(fine)
    assert mock_comfy.executed_prompt_ids == [running, fine]
    errors = [m["data"] for m in listener.messages if m["type"] == "execution_error"]
    assert len(errors) == 1
    error = errors[0]
    assert error["prompt_id"] == failing and error["exception_message"] == "injected GPU failure\n"
    assert error["exception_type"] == "RuntimeError" and error["node_id"] == "1" and error["node_type"] == "EmptyImage"
    assert sorted(error) == sorted(
        ["prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp"]
    )
    item = requests.get(f"{mock_comfy.url}/history/{failing}", timeout=2).json()[failing]
    assert item["status"]["status_str"] == "error"
    # Switched off before any job ran: nothing fails.
    mock_comfy.fail_next_job()
    mock_comfy.clear_faults()
    works(mock_comfy)


def test_fail_next_job_also_hits_a_fully_cached_prompt(mock_comfy: MockComfyServer) -> None:
    prompt = image_workflow(color=9)
    submit(mock_comfy, prompt)
    assert mock_comfy.wait_idle()
    mock_comfy.fail_next_job("no cache can save you")
    with WsListener(mock_comfy.url) as listener:
        prompt_id = submit(mock_comfy, prompt, listener.client_id)
        messages = listener.until_done(prompt_id)
    assert [m["data"]["exception_message"] for m in messages if m["type"] == "execution_error"] == ["no cache can save you\n"]


def test_clear_faults_switches_everything_off(mock_comfy: MockComfyServer) -> None:
    mock_comfy.set_fault(Fault.ERROR_500)
    mock_comfy.set_latency(5)
    mock_comfy.fail_next_job()
    mock_comfy.clear_faults()
    assert mock_comfy.fault is None and mock_comfy.latency == 0
    works(mock_comfy)
    assert mock_comfy.executed_prompt_ids  # the injected failure was cleared too


def test_faults_by_name_and_unknown_names(mock_comfy: MockComfyServer) -> None:
    for name, fault in (("refuse", Fault.REFUSE), ("500", Fault.ERROR_500), ("malformed", Fault.MALFORMED), ("truncated", Fault.TRUNCATED), ("huge", Fault.HUGE), ("hang", Fault.HANG)):
        mock_comfy.set_fault(name)
        assert mock_comfy.fault is fault
        mock_comfy.set_fault("off")
        assert mock_comfy.fault is None
    with pytest.raises(ValueError):
        mock_comfy.set_fault("sideways")
    works(mock_comfy)


def test_faults_are_per_server(mock_cluster_factory: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1, 1))
    cluster[0].set_fault(Fault.ERROR_500)
    assert requests.get(cluster[0].url + "/prompt", timeout=2).status_code == 500
    assert requests.get(cluster[1].url + "/prompt", timeout=2).status_code == 200
    cluster.clear_faults()
    works(cluster[0])


def test_request_count(mock_comfy: MockComfyServer) -> None:
    before = mock_comfy.request_count
    for _ in range(3):
        requests.get(mock_comfy.url + "/prompt", timeout=2)
    assert mock_comfy.request_count == before + 3
    unique = str(uuid.uuid4())
    assert unique not in mock_comfy.connected_clients()


def test_paused_jobs_stall_until_resumed(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        mock_comfy.pause_jobs()
        assert mock_comfy.jobs_paused
        prompt_id = submit(mock_comfy, sleep_workflow(seconds=0.1, steps=2), listener.client_id)
        listener.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        assert [m for m in listener.expect_silence(0.4) if m["type"] == "progress"] == []  # stalled
        assert mock_comfy.queue_snapshot() == ([prompt_id], [])
        assert requests.get(mock_comfy.url + "/prompt", timeout=2).ok  # the server itself answers
        mock_comfy.resume_jobs()
        messages = listener.until_done(prompt_id, timeout=5)
        assert [m["data"]["value"] for m in messages if m["type"] == "progress"] == [1, 2]
        # An interrupt still stops a paused job at once.
        mock_comfy.pause_jobs()
        stalled = submit(mock_comfy, sleep_workflow(seconds=0.1, steps=2, seed=1), listener.client_id)
        listener.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": stalled}, timeout=2)
        assert listener.until_event(stalled, timeout=5)[-1]["type"] == "execution_interrupted"
    mock_comfy.resume_jobs()
    works(mock_comfy)


def test_speed_change_applies_to_a_step_already_sleeping(mock_comfy: MockComfyServer) -> None:
    with WsListener(mock_comfy.url) as listener:
        started = time.monotonic()
        prompt_id = submit(mock_comfy, sleep_workflow(seconds=20, steps=1), listener.client_id)
        listener.until(lambda m: m["type"] == "executing" and m["data"]["node"] == "2")
        mock_comfy.speed = 1000.0  # the single 20 s step now ends within 20 ms
        listener.until_done(prompt_id, timeout=15)
        assert time.monotonic() - started < 10.0  # not the 20 s step
