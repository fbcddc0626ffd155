"""Security and hostile input: tokens never shown, TLS verified, server JSON never crashes a
library thread, server-given file names never lead outside the target folder.

Related checks elsewhere: ``NUKE_COMFYUI_SERVERS`` fuzzing and tokens in config errors are in
tests/test_config.py; refused workflows and missing input files in tests/test_jobs.py.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import ssl
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

import pytest
from helpers import sleep_workflow, symlink_dir, symlink_file, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_util import RawServer

from comfy_cluster import ComfyClusterError, NoServerAvailable, ServerError, ServerPool, UnsafePathError, WorkflowError
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.events import ServerSocket
from comfy_cluster.wsframes import decode as _decode
from comfy_cluster.attempt import Attempt
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.follow import Follower, Outcome, RunnerContext
from comfy_cluster.paths import safe_join
from comfy_cluster.status import StatusMonitor
from comfy_cluster.testing import Fault, MockComfyServer

SECRET = "s3cr3t-T0KEN-do-not-print"
HEADERS = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET + "-2"}
FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0)


# ---------------------------------------------------------------------------------------------
# Tokens appear nowhere.


def test_tokens_in_no_log_record_repr_or_error(mock_cluster_factory, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and websocket included
    cluster = mock_cluster_factory(speeds=(1, 1))
    good, bad = cluster.servers
    servers = [{"name": s.name, "url": s.url, "headers": HEADERS, "priority": i} for i, s in enumerate(cluster.servers)]
    texts: List[str] = []
    with ServerPool(servers, strategy="priority", request_timeout=(5.0, 5.0), **FAST) as pool:
        texts += [repr(pool), str(pool), repr(pool._clients["mock1"]), repr(pool._sockets["mock1"])]
        texts += [repr(s) + str(s) for s in pool.servers]
        job = pool.submit(sleep_workflow())
        res = job.result(timeout=10)
        texts += [repr(job), repr(res), repr(job.events)]
        texts += [repr(st) + json.dumps(st.to_dict()) for st in pool.status(refresh=True)]
        # Failures: a 500, a refused server, a workflow error, no server at all.
        bad.set_fault(Fault.ERROR_500)
        with pytest.raises(ServerError) as e500:
            pool._clients[bad.name].queue()
        texts.append(str(e500.value) + repr(e500.value))
        wf = sleep_workflow()
        wf["2"]["inputs"]["steps"] = "many"
        with pytest.raises(WorkflowError) as ewf:
            pool.submit(wf).result(timeout=10)
        texts.append(str(ewf.value) + repr(ewf.value))
        for s in cluster.servers:
            s.set_fault(Fault.REFUSE)
        pool.status(refresh=True)
        with pytest.raises(NoServerAvailable) as enone:
            pool.submit(sleep_workflow())
        texts.append(str(enone.value) + repr(enone.value) + repr(enone.value.reasons))
        for s in cluster.servers:
            s.set_fault(None)
    texts.append(caplog.text)
    texts += [repr(r.__dict__) for r in caplog.records]
    assert len(caplog.records) > 10  # the run did log (debug included)
    for text in texts:
        assert SECRET not in text


def test_tokens_are_sent_but_never_printed_by_the_cli(mock_comfy):
    """The headers really go out (so the test above could fail), and the CLI never prints them."""
    seen: List[Dict[str, str]] = []
    with RawServer(lambda path, wfile: wfile.write(b"HTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n")) as raw:
        client = ComfyClient(ServerConfig(name="raw", url=raw.url, headers=HEADERS), timeout=(0.5, 1.0))
        with pytest.raises(ServerError) as info:
            client.queue()
        client.close()
        seen = raw.headers_seen
        assert SECRET not in str(info.value)
        env_servers = json.dumps([
            {"name": "live", "url": mock_comfy.url, "headers": HEADERS},
            {"name": "broken", "url": raw.url, "headers": HEADERS},
            {"name": "dead", "url": "http://127.0.0.1:9", "headers": HEADERS},
        ])
        env = dict(os.environ, NUKE_COMFYUI_SERVERS=env_servers, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
        outputs = []
        for args in (["status"], ["status", "--json"], ["submit", "/no/such/workflow.json"]):
            proc = subprocess.run([sys.executable, "-m", "comfy_cluster", *args], env=env, capture_output=True, text=True, timeout=60)
            outputs.append(proc.stdout + proc.stderr)
    assert seen and seen[0].get("Authorization") == f"Bearer {SECRET}"
    assert "live" in outputs[0] and "broken" in outputs[0]
    for out in outputs:
        assert SECRET not in out


# ---------------------------------------------------------------------------------------------
# TLS: verification is on by default; a given CA file is honoured, on https and wss alike.


@pytest.fixture(scope="module")
def self_signed():
    """(CA file, server certificate, key) from tests/data/tls: no openssl command needed."""
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tls")
    return os.path.join(d, "ca.pem"), os.path.join(d, "server.pem"), os.path.join(d, "server.key")


@pytest.fixture
def https_mock(self_signed):
    _, cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = MockComfyServer(name="tls", ssl_context=ctx).start()
    try:
        yield server
    finally:
        server.stop()


def test_tls_self_signed_is_refused_by_default(https_mock):
    assert https_mock.url.startswith("https://")
    cfg = ServerConfig(name="tls", url=https_mock.url)
    assert cfg.verify_tls is True and cfg.ws_url.startswith("wss://")
    with ServerPool([cfg], **FAST) as pool:
        st = pool.status(refresh=True)[0]
        assert not st.online and "TLS" in st.error and "certificate verify failed" in st.error
        with pytest.raises(NoServerAvailable, match="certificate verify failed"):
            pool.submit(sleep_workflow())
    sock = ServerSocket(cfg, "00000000-0000-4000-8000-00000000aaaa", connect_timeout=2.0)
    try:
        with pytest.raises(ServerError, match="(?i)certificate|TLS"):
            sock.ensure_connected()
    finally:
        sock.close()
    assert https_mock.received_prompts == []


def test_tls_accepted_with_verify_tls_pointing_to_the_certificate(https_mock, self_signed):
    cert, _, _ = self_signed
    cfg = ServerConfig(name="tls", url=https_mock.url, verify_tls=cert)
    with ServerPool([cfg], **FAST) as pool:
        job = pool.submit(sleep_workflow(0.2, steps=3))
        res = job.result(timeout=15)
        assert res.server == "tls"
        # Progress and the done signal came over the websocket (wss), not only from /history.
        assert "progress" in [e.kind for e in job.events] and "started" in [e.kind for e in job.events]
        assert pool._sockets["tls"].connected
    assert https_mock.executed_prompt_ids == [res.prompt_id]


def test_wss_uses_the_same_verification(https_mock, self_signed):
    cert, _, _ = self_signed
    ok = ServerSocket(ServerConfig(name="tls", url=https_mock.url, verify_tls=cert), "00000000-0000-4000-8000-00000000bbbb")
    try:
        ok.ensure_connected()
        assert ok.connected
        wait_until(lambda: "00000000-0000-4000-8000-00000000bbbb" in https_mock.connected_clients(), what="wss client")
    finally:
        ok.close()


# ---------------------------------------------------------------------------------------------
# Server-given file names: nothing is written outside the target folder.

_path_alphabet = st.sampled_from(["a", "b", ".", "..", "/", "\\", ":", "C:", "\x00", "~", " ", "link", "é", "%2e"])
path_text = st.lists(_path_alphabet, max_size=8).map("".join) | st.text(max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subfolder=path_text, filename=path_text)
def test_safe_join_never_leads_outside(subfolder, filename):
    sandbox = tempfile.mkdtemp(prefix="safe-join-")
    try:
        root = os.path.join(sandbox, "out")
        outside = os.path.join(sandbox, "outside")
        os.makedirs(root)
        os.makedirs(outside)
        symlink_dir(outside, os.path.join(root, "link"))  # a symlinked subfolder inside the target
        symlink_file(os.path.join(outside, "f"), os.path.join(root, "a"))  # a symlinked file name
        try:
            target = safe_join(root, subfolder, filename)
        except UnsafePathError:
            return
        real_root = os.path.realpath(root)
        assert os.path.realpath(target).startswith(real_root + os.sep)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fh:
            fh.write(b"x")
        assert os.listdir(outside) == []
        assert sorted(os.listdir(sandbox)) == ["out", "outside"]
    finally:
        shutil.rmtree(sandbox, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Any JSON a server sends gives a clean error or is ignored; no library thread crashes.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
PID = "11111111-2222-4333-8444-555555555555"
# Shapes close to the real ones, with odd values inside, reach deeper than random JSON.
queue_like = st.fixed_dictionaries({}, optional={"queue_running": json_values, "queue_pending": st.lists(
    st.lists(json_values | st.just(PID), max_size=6), max_size=3) | json_values})
history_like = st.fixed_dictionaries({PID: st.fixed_dictionaries({}, optional={
    "outputs": st.dictionaries(st.text(max_size=3), st.dictionaries(st.sampled_from(["images", "x"]), st.lists(
        st.fixed_dictionaries({}, optional={"filename": json_values, "subfolder": json_values, "type": json_values}), max_size=2) | json_values, max_size=2) | json_values, max_size=2),
    "status": st.fixed_dictionaries({}, optional={"status_str": st.sampled_from(["success", "error"]) | json_values,
                                                   "messages": st.lists(st.lists(st.sampled_from(["execution_error", "execution_interrupted"]) | json_values, max_size=2), max_size=3) | json_values}),
}) | json_values})
# Raw bodies json.loads accepts that serialisers rarely produce.
SPECIAL_BODIES = [
    b"Infinity", b"NaN", b"-Infinity", b"1e400", b"1" + b"0" * 400, b"[" * 50000 + b"]" * 50000,
    b'{"queue_running": [[1e400, "' + PID.encode() + b'"]], "queue_pending": []}',
    b'{"queue_running": [], "queue_pending": [[' + b"9" * 400 + b', "x"]]}',
    b'{"system": {"comfyui_version": 1}, "devices": [{"name": 3, "vram_total": Infinity, "vram_free": NaN}]}',
    b'{"devices": [{"vram_total": 1e400}]}', b'{"' + PID.encode() + b'": ' + b"[" * 50000 + b"]" * 50000 + b"}",
    b"\xff\xfe garbage", b"", b"null", b"[]", b'"text"',
]


class _BodyServer:
    """A RawServer answering ``self.bodies[path]`` (or ``self.default``) to every request."""

    def __init__(self) -> None:
        self.default = b"{}"
        self.bodies: Dict[str, bytes] = {}
        self.status = 200
        self.raw = RawServer(self._handle)

    def _handle(self, path: str, wfile: Any) -> None:
        body = self.bodies.get(path.split("?")[0], self.default)
        head = f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        wfile.write(head.encode() + body)


@pytest.fixture(scope="module")
def body_server():
    srv = _BodyServer()
    with srv.raw:
        yield srv


def _api_calls(client: ComfyClient) -> Dict[str, Any]:
    return {
        "/queue": client.queue,
        f"/history/{PID}": lambda: client.history(PID),
        "/system_stats": client.system_stats,
        "/object_info": client.object_info,
        "/prompt": lambda: client.post_prompt({"prompt": {}, "client_id": "x"}),
    }


def _every_call_is_clean(srv: _BodyServer, body: bytes, status: int = 200) -> None:
    client = ComfyClient(ServerConfig(name="odd", url=srv.raw.url), timeout=(1.0, 3.0))
    srv.default, srv.status = body, status
    try:
        for path, call in _api_calls(client).items():
            try:
                value = call()
            except (ServerError, WorkflowError) as exc:
                assert str(exc).startswith("odd")
                continue
            if path == "/queue":
                running, pending = value
                assert all(isinstance(p, str) for p in running + pending)
            elif path.startswith("/history"):
                assert value is None or isinstance(value, dict)
            else:
                assert isinstance(value, dict)
        # The status monitor's probe (queue + system_stats) must finish and leave a snapshot.
        cfg = client.server
        mon = StatusMonitor([cfg], {cfg.name: client}, background=False, probe_timeout=(1.0, 3.0))
        srv.status = 200
        try:
            srv.bodies = {"/queue": b'{"queue_running": [], "queue_pending": []}', "/system_stats": body}
            mon._probe_one(cfg)
            assert mon.snapshot(cfg.name).online
            mon._fetch_stats(cfg)  # runs on a probe thread: raises here if odd stats could crash it
            srv.bodies = {}
            mon._probe_one(cfg)
            assert mon.snapshot(cfg.name).checked
        finally:
            srv.bodies = {}
            mon.close()
    finally:
        client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values | queue_like | history_like, status=st.sampled_from([200, 200, 200, 400, 404, 500]))
def test_any_server_json_gives_a_clean_error_or_a_value(body_server, value, status):
    _every_call_is_clean(body_server, json.dumps(value).encode(), status)


@pytest.mark.parametrize("body", SPECIAL_BODIES, ids=range(len(SPECIAL_BODIES)))
def test_special_json_bodies_give_a_clean_error_or_a_value(body_server, body):
    _every_call_is_clean(body_server, body)


ws_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["status", "executing", "executed", "progress", "execution_start", "execution_cached",
                              "execution_success", "execution_error", "execution_interrupted", "_disconnected",
                              "_reconnected", "_cancel", "custom"]) | st.text(max_size=5)},
    optional={"data": st.fixed_dictionaries({}, optional={
        "prompt_id": st.just(PID) | json_values, "node": json_values, "output": json_values, "value": json_values,
        "max": json_values, "nodes": json_values, "node_id": json_values, "exception_message": json_values,
        "traceback": json_values, "status": json_values}) | json_values},
)


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(ws_messages | json_values, max_size=6))
def test_any_websocket_message_is_handled_or_ignored(messages):
    """The reader thread's handling (decode, route) and a job's handling of what is routed
    to it never raise; the job ends in a clean Outcome."""
    routed: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    sock = ServerSocket(ServerConfig(name="ws", url="http://127.0.0.1:9"), "c", on_status=lambda n: None)
    sock.register(PID, routed.put)
    for m in messages:
        decoded = _decode(json.dumps(m))
        if decoded is not None:
            sock._handle(decoded)
    routed.put({"type": "executing", "data": {"node": None, "prompt_id": PID}})

    class History:
        server = ServerConfig(name="ws", url="http://127.0.0.1:9")
        timeout = (1.0, 1.0)

        def history(self, pid, timeout=None):
            return {"status": {"status_str": "success"}, "outputs": {}}

        def queue(self, timeout=None):
            return [], []

    job = Job(sleep_workflow())
    attempt = Attempt(JobControl(job), "ws", 1)
    attempt.prompt_id = PID
    ctx = RunnerContext(client=History(), socket=sock, client_id="c", position=lambda: 0,  # type: ignore[arg-type]
                        uploads=lambda c: job.workflow, reconcile_interval=0.05, server_lost_after=0.2)
    out = Follower(attempt, ctx, routed).run()
    assert isinstance(out, Outcome) and out.kind in ("succeeded", "failed", "cancelled", "move")
    if out.error is not None:
        assert isinstance(out.error, ComfyClusterError)


@pytest.mark.parametrize("frame", [b"[" * 100000 + b"]" * 100000, b"1e400", b"NaN", b'{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1e400}}}}'])
def test_websocket_reader_survives_odd_frames(frame):
    """A frame json.loads cannot decode without a RecursionError must not kill the reader."""
    msg = _decode(frame.decode())
    assert msg is None or isinstance(msg, dict)
