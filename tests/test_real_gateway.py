"""record.py (the real server's transcripts' recorder) through the gateway over the real ComfyUI
servers named in COMFY_REAL_SERVERS (opt-in, run by .ci/run; see test_real_comfyui.py).

record.py's timing assumes one server at ComfyUI's speed: its first 3-second prompt must still
run when its interrupt comes a second later, and the prompt after it must not end first. So
here the gateway holds one job in the pool at a time (``max_in_pool=1``, prompts run in the
order one server runs them) and the slowest server comes first (``priority``; the others take
over when it is offline). Then every scenario matches compare.py's shape rules but for two
differences of timing, not of shape: ``status`` frames of prompts posted back to back
may come before the first one's ``execution_start`` (README, "Start order"), and a faster
server sends more ``progress`` frames before an interrupt lands. No frame is relayed twice:
each prompt gets one ``execution_start`` and one ``executed`` per output node. (With every
server busy at once, the three prompts record.py posts together run side by side: README,
"Several prompts run at once"; bench/gateway_fidelity.py measures that.)
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest
from test_mock_transcripts import _differences, _load_compare, _spec_dir
from test_real_comfyui import REAL

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway

#: Where status frames may move and progress counts follow the server's speed.
TIMING = {"interrupted_ws", "next_after_interrupt_ws"}


def _shape(compare: Any, msgs: List[Dict[str, Any]]) -> List[Any]:
    """compare.py's signature without status frames and with each run of progress as one."""
    out: List[Any] = []
    for sig in compare.ws_sig(msgs):
        if sig[0] == "status" or (sig[0] == "progress" and out and out[-1][0] == "progress"):
            continue
        out.append(sig)
    return out


@pytest.mark.real_comfyui
@pytest.mark.timeout(900)
def test_record_through_the_gateway_over_real_servers_matches_but_for_parallel_runs(tmp_path: Any) -> None:
    spec = _spec_dir()
    servers = []
    for i, hp in enumerate(REAL):
        host, port = hp.rsplit(":", 1)
        assert host == "127.0.0.1", "tests reach loopback only"
        # .ci/run starts them at speeds 1, 2, 4: the first is the slowest
        servers.append({"name": f"real{i}", "host": host, "port": int(port), "priority": 1 if i == 0 else 2})
    pool = ServerPool(servers, status_ttl=0.5, strategy="priority")
    gateway = Gateway(pool, port=0, max_in_pool=1).start()
    out = tmp_path / "gateway.json"
    try:
        subprocess.run([sys.executable, str(spec / "record.py"), gateway.url, str(out)], check=True, timeout=800, cwd=str(tmp_path))
    finally:
        gateway.stop()
        pool.close()
    with open(spec / "transcripts.json", encoding="utf-8") as fh:
        real: Dict[str, Any] = json.load(fh)
    got: Dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    compare = _load_compare(spec)
    problems = _differences(compare, real, got)
    (tmp_path.parent / "last-gateway-record.json").write_text(json.dumps(got))  # to read after a failure
    assert set(problems) <= TIMING, "\n".join(p for ps in problems.values() for p in ps)
    for key in TIMING:
        assert _shape(compare, got[key]) == _shape(compare, real[key]), key
        count = [sum(1 for m in t[key] if m.get("type") == "status") for t in (real, got)]
        assert count[0] == count[1], (key, count)
        msgs: List[Dict[str, Any]] = [m for m in got[key] if isinstance(m, dict) and "type" in m]
        starts = collections.Counter(m["data"]["prompt_id"] for m in msgs if m["type"] == "execution_start")
        outputs = collections.Counter((m["data"]["prompt_id"], m["data"]["node"]) for m in msgs if m["type"] == "executed")
        assert all(n == 1 for n in starts.values()), starts
        assert all(n == 1 for n in outputs.values()), outputs
