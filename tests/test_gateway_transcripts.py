"""record.py's 25 scenarios against the gateway over one mock server match the real server's
transcripts by compare.py's shape rules, except for one documented difference.

The difference (README, "Use it with any ComfyUI client"): a prompt reaches a server a few
milliseconds after the gateway accepted it (the pool picks the server, then posts), so when
a client posts several prompts at once, the ``status`` frames of those posts can arrive
before the first prompt's ``execution_start`` rather than after it. Every frame is there, in
the same number; only status frames move. The test checks exactly that for the one scenario
that posts prompts back to back while another starts (``interrupted_ws``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Dict, List

import pytest
from test_mock_transcripts import _differences, _load_compare, _spec_dir

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.transcripts import record

pytestmark = pytest.mark.timeout(90)
STATUS_MAY_MOVE = {"interrupted_ws"}


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    return _load_compare(_spec_dir())


@pytest.fixture(scope="module")
def reference() -> Dict[str, Any]:
    import json

    with open(_spec_dir() / "transcripts.json", encoding="utf-8") as handle:
        data: Dict[str, Any] = json.load(handle)
    return data


@pytest.fixture(scope="module")
def through_gateway() -> Dict[str, Any]:
    with MockComfyServer(name="behind-gateway") as server:
        # max_queue 1: record() posts its busy jobs back to back and expects them to start in
        # that order; the pool posts the jobs it gives one server at once from parallel
        # threads, so with room for two they may reach the server in either order.
        pool = ServerPool([{"url": server.url, "name": "only", "max_queue": 1}], status_ttl=0.5)
        gw = Gateway(pool, port=0).start()
        try:
            return record(gw.url, next_seconds=0.3, timeout=30, pause=server.pause_jobs, resume=server.resume_jobs)
        finally:
            gw.stop()
            pool.close()


def _types(compare: ModuleType, msgs: List[Dict[str, Any]]) -> List[Any]:
    return list(compare.ws_sig(msgs))


def test_the_gateway_answers_like_the_real_server(compare: ModuleType, reference: Dict[str, Any], through_gateway: Dict[str, Any]) -> None:
    problems = _differences(compare, reference, through_gateway)
    assert set(problems) <= STATUS_MAY_MOVE, "\n".join(p for ps in problems.values() for p in ps)
    for key in STATUS_MAY_MOVE:
        real, got = _types(compare, reference[key]), _types(compare, through_gateway[key])
        assert [t for t in got if t[0] != "status"] == [t for t in real if t[0] != "status"]
        assert got.count(("status", ("status",))) == real.count(("status", ("status",)))


def test_prompt_ids_through_the_gateway_are_the_clients_own(through_gateway: Dict[str, Any]) -> None:
    # record() sends its own uuids for the busy jobs: the same ids come back everywhere.
    running = through_gateway["queue_busy"]["body"]["queue_running"][0][1]
    interrupted = [m for m in through_gateway["interrupted_ws"] if m.get("type") == "execution_interrupted"][0]
    assert interrupted["data"]["prompt_id"] == running
    assert list(through_gateway["interrupted_history"]["body"]) == [running]
    assert through_gateway["deleted_history"]["body"] == {}
