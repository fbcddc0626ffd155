"""The mock runs a job's blocking node work on a worker thread, as ComfyUI runs prompts on its
``prompt_worker`` thread: while a node's disk write or read stalls, the HTTP routes and the
websocket keep answering, and the job's events and their order are those of an unstalled run.

A stall is a node's file function replaced by one that blocks until the test releases it
(events, no sleeps). Before the worker thread existed, a stall froze the server's event loop
and every request below timed out.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests

from comfy_cluster.testing import MockComfyServer, wait_until
from comfy_cluster.testing import nodes as mock_nodes
from comfy_cluster.testing.listener import WsListener, types_of
from comfy_cluster.testing.png import png_bytes
from comfy_cluster.testing.workflows import image_workflow, load_image_workflow

pytestmark = pytest.mark.timeout(60)

#: How long a request may take while a node stalls: only a bound on a loaded machine; an
#: unstalled mock answers in milliseconds, a frozen one never.
ANSWER_SECONDS = 5.0
#: How long a stall holds at most if the test never releases it (a failed assertion releases it).
STALL_BOUND = 30.0


class Stall:
    """Stands in for a module function: once armed, the next call signals ``entered`` and
    blocks until ``release`` is set, then does the real work. Calls while disarmed pass through."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.thread: Optional[str] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed.is_set():
            self.armed.clear()
            self.thread = threading.current_thread().name
            self.entered.set()
            if not self.release.wait(STALL_BOUND):
                raise TimeoutError("the test never released the stall")
        return self.real(*args, **kwargs)


@pytest.fixture
def server() -> Iterator[MockComfyServer]:
    with MockComfyServer(name="stall") as mock:
        yield mock


def submit(server: MockComfyServer, prompt: Dict[str, Any], client_id: str) -> str:
    r = requests.post(server.url + "/prompt", json={"prompt": prompt, "client_id": client_id}, timeout=ANSWER_SECONDS)
    assert r.status_code == 200, r.text
    return str(r.json()["prompt_id"])


def get(server: MockComfyServer, path: str) -> Any:
    """GET ``path`` and its JSON, failing with a clear message when the mock does not answer."""
    try:
        r = requests.get(server.url + path, timeout=ANSWER_SECONDS)
    except requests.Timeout:
        pytest.fail(f"GET {path} got no answer within {ANSWER_SECONDS}s while a node's work stalled")
    assert r.status_code == 200, r.text
    return r.json()


def upload(server: MockComfyServer, name: str, rgb: tuple) -> str:
    data = png_bytes(16, 16, rgb)
    r = requests.post(server.url + "/upload/image", files={"image": (name, data, "image/png")}, timeout=ANSWER_SECONDS)
    assert r.status_code == 200, r.text
    return str(r.json()["name"])


def run_to_end(server: MockComfyServer, listener: WsListener, prompt: Dict[str, Any]) -> List[Dict[str, Any]]:
    prompt_id = submit(server, prompt, listener.client_id)
    return [m for m in listener.until_done(prompt_id) if m.get("data", {}).get("prompt_id") in (prompt_id, None)]


# (what stalls, the module function that does it, a workflow needing it) for each case.
def _save_case(server: MockComfyServer, first: bool) -> Dict[str, Any]:
    return image_workflow(color=1 if first else 2, prefix="stalled")


def _load_case(server: MockComfyServer, first: bool) -> Dict[str, Any]:
    name = upload(server, f"plate_{int(first)}.png", (10, 20, 30) if first else (40, 50, 60))
    return load_image_workflow(name)


CASES = {
    "SaveImage write": ("write_png", _save_case),
    "LoadImage read": ("file_hash", _load_case),
}


@pytest.mark.parametrize("case", list(CASES))
def test_http_and_websocket_answer_while_a_node_stalls_on_disk(
    server: MockComfyServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    function, make_prompt = CASES[case]
    stall = Stall(getattr(mock_nodes, function))
    monkeypatch.setattr(mock_nodes, function, stall)
    with WsListener(server.url, timeout=ANSWER_SECONDS * 4) as listener:
        # The same workflow unstalled first: the stalled run must send the same events in order.
        reference = run_to_end(server, listener, make_prompt(server, True))
        prompt = make_prompt(server, False)
        stall.armed.set()
        prompt_id = submit(server, prompt, listener.client_id)
        try:
            assert stall.entered.wait(STALL_BOUND), "the job never reached the stalled work"
            queue = get(server, "/queue")
            assert [item[1] for item in queue["queue_running"]] == [prompt_id] and queue["queue_pending"] == []
            assert get(server, "/system_stats")["system"]["comfyui_version"] == server.version
            assert get(server, "/prompt") == {"exec_info": {"queue_remaining": 1}}
            assert get(server, f"/history/{prompt_id}") == {}  # running: no history item yet
            # A websocket connects and gets its first frame while the node still works.
            try:
                other = WsListener(server.url, client_id=str(uuid.uuid4()), timeout=ANSWER_SECONDS)
            except Exception as ex:  # noqa: BLE001 - the failure this test exists to show
                pytest.fail(f"no websocket within {ANSWER_SECONDS}s while a node's work stalled: {ex!r}")
            with other:
                assert other.first is not None and other.first["type"] == "status"
                assert other.first["data"]["status"]["exec_info"]["queue_remaining"] == 1
            assert not stall.release.is_set() and server.queue_snapshot() == ([prompt_id], [])
            # The stall ran on the server's worker thread, not on its event loop's thread.
            assert stall.thread is not None and stall.thread.startswith("mock-comfy-stall-worker"), stall.thread
        finally:
            stall.release.set()  # also unfreezes a server whose loop the stall blocked
        events = [m for m in listener.until_done(prompt_id) if m.get("data", {}).get("prompt_id") in (prompt_id, None)]
    assert types_of(events) == types_of(reference)
    item = get(server, f"/history/{prompt_id}")[prompt_id]
    assert item["status"]["status_str"] == "success"
    assert item["outputs"]["3"]["images"][0]["filename"].startswith("stalled_" if case == "SaveImage write" else "loaded_")


def test_stop_waits_for_a_stalled_node_and_leaves_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    stall = Stall(mock_nodes.write_png)
    monkeypatch.setattr(mock_nodes, "write_png", stall)
    server = MockComfyServer(name="stallstop").start()
    stopped = threading.Event()

    def stop() -> None:
        server.stop()
        stopped.set()

    stopper = threading.Thread(target=stop, name="test-stopper")
    try:
        # The worker thread exists from start on, so a test comparing thread sets around a job
        # sees no new thread while the server runs.
        assert [t.name for t in threading.enumerate() if t.name.startswith("mock-comfy-stallstop-worker")]
        stall.armed.set()
        submit(server, image_workflow(color=3), "stopper")
        assert stall.entered.wait(STALL_BOUND)
        stopper.start()
        # stop() abandons the job at once, then waits for the node's work before it returns.
        wait_until(lambda: not server.running, message="stop() began")
        assert not stopped.is_set()
    finally:
        stall.release.set()
        if stopper.is_alive():
            stopper.join(STALL_BOUND)
        server.stop()
    assert stopped.is_set()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("mock-comfy-stallstop")]


def test_no_message_comes_between_execution_start_and_execution_cached(
    server: MockComfyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's plan (IS_CHANGED hashes, input lists) is worked out on the worker thread before
    its ``execution_start``: in ComfyUI the two messages leave the prompt worker microseconds
    apart, so a status for a prompt posted meanwhile comes before or after the pair, never
    between them (the recorded transcripts: tests/test_mock_transcripts.py, which failed once
    in CI on this). Here the plan's hash is held while another prompt is posted."""
    stall = Stall(mock_nodes.file_hash)
    monkeypatch.setattr(mock_nodes, "file_hash", stall)
    with WsListener(server.url, timeout=ANSWER_SECONDS * 4) as listener:
        prompt = _load_case(server, False)
        stall.armed.set()
        first = submit(server, prompt, listener.client_id)
        try:
            assert stall.entered.wait(STALL_BOUND), "the job never reached its plan"
            second = submit(server, image_workflow(color=5), listener.client_id)  # a status for every socket
        finally:
            stall.release.set()
        frames = listener.until_done(second)
    kinds = [m["type"] for m in frames]
    start = next(i for i, m in enumerate(frames) if m["type"] == "execution_start" and m["data"]["prompt_id"] == first)
    assert kinds[start + 1] == "execution_cached", kinds
