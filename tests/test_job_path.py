"""Issue 20 (latency): what one job costs on the wire, against a real mock ComfyUI on loopback.

A job whose socket carried it whole (its ``execution_start``, ``executed`` frames,
``execution_success`` and the closing ``executing`` null, with no drop in between) has its
result from those frames: no ``GET /history`` per job. Whenever the socket may have missed
something (it dropped, or the server sends no ``execution_success``), the result is read from
``/history`` as before.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import requests
from test_fault_matrix import pool_of

from comfy_cluster.answers import iter_output_files
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.workflows import image_workflow

pytestmark = pytest.mark.timeout(120)

Files = List[Tuple[str, str, str, str]]


def result_files(result: Any) -> Files:
    return [(f.node, f.filename, f.subfolder, f.type) for f in result.files]


def history_files(server: MockComfyServer, prompt_id: str) -> Files:
    item: Dict[str, Any] = requests.get(f"{server.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return [(node, f["filename"], f["subfolder"], f["type"]) for node, f in iter_output_files(item["outputs"])]


def two_output_workflow(color: int, prefix: str) -> Dict[str, Any]:
    """Two SaveImage nodes, the later one first in the prompt: outputs are listed in the
    prompt's order, as a history item lists them."""
    wf = image_workflow(color=color, prefix=prefix)
    return {"0": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix + "-raw"}}, **wf}


def test_a_job_heard_whole_on_its_socket_has_its_result_without_a_history_read(mock_comfy: MockComfyServer) -> None:
    """Seen before: every job read GET /history/<id> after its end (one more round trip per
    job, on the answer's path). The result must still equal the history item's outputs, a
    fully cached rerun's too (cached output nodes send their ``executed`` again)."""
    with pool_of([mock_comfy], reconcile_interval=60.0) as pool:
        first = pool.submit(two_output_workflow(7, "sock")).result(timeout=30)
        again = pool.submit(two_output_workflow(7, "sock")).result(timeout=30)  # every node cached
        reads = [mock_comfy.answered(f"/history/{r.prompt_id}") for r in (first, again)]
    assert reads == [0, 0]
    assert first.prompt_id != again.prompt_id
    for result in (first, again):
        assert len(result.files) == 2
        assert result_files(result) == history_files(mock_comfy, result.prompt_id)


def test_a_server_without_execution_success_has_its_result_read_from_history(mock_comfy: MockComfyServer) -> None:
    """ComfyUI before ``execution_success``: ``executing`` null alone ends the job; the
    frames heard do not say it succeeded, so the result is read from /history, once."""
    mock_comfy.sends_execution_success = False
    with pool_of([mock_comfy], reconcile_interval=60.0) as pool:
        result = pool.submit(two_output_workflow(9, "old")).result(timeout=30)
    assert mock_comfy.answered(f"/history/{result.prompt_id}") == 1
    assert len(result.files) == 2 and result_files(result) == history_files(mock_comfy, result.prompt_id)


def test_jobs_one_after_another_reuse_one_runner_thread_and_close_ends_it(mock_comfy: MockComfyServer) -> None:
    """Seen before: a thread was started for every attempt (on the job's path, before its
    POST). A runner whose attempt ended now takes the next one; close() ends the waiting ones."""
    import threading

    runners: List[threading.Thread] = []

    def on_attempt(prompt_id: str, server: str, phase: str) -> None:
        if phase == "reserved":
            runners.append(threading.current_thread())  # inline, on the attempt's runner thread

    before = {t for t in threading.enumerate() if t.name.startswith("comfy-cluster-job")}
    pool = pool_of([mock_comfy], reconcile_interval=60.0)
    try:
        for i in range(3):
            pool.submit(image_workflow(color=i, prefix="reuse"), on_attempt=on_attempt).result(timeout=30)
    finally:
        pool.close()
    assert len(runners) == 3 and runners[1] is runners[0] and runners[2] is runners[0]
    assert not runners[0].is_alive()
    assert {t for t in threading.enumerate() if t.name.startswith("comfy-cluster-job")} <= before
