"""Behaviours of the core (attempts, dispatcher, runner, jobs) that the mutation run
(tools/mutate.py, docs/TESTING.md) found unguarded. Each test checks what a user relies on,
over the mock ComfyUI on loopback, and names in its docstring the mutant it was written
against (checked to fail with that mutant in place)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from typing import Any, Dict, List, Sequence

import pytest
from helpers import wait_until

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockComfyServer

pytestmark = pytest.mark.timeout(90)

#: Short knobs so a fault shows within seconds (as in test_promises).
FAST: Dict[str, Any] = dict(ws_connect_timeout=5.0, probe_timeout=(0.5, 1.0), request_timeout=(1.0, 2.0),
                            reconcile_interval=0.5, server_lost_after=2.0, backoff_cap=0.5)


def pool_of(servers: Sequence[Any], extra: Dict[str, Any], **kwargs: Any) -> ServerPool:
    return ServerPool([dict({"name": s.name, "url": s.url}, **extra) for s in servers], **dict(FAST, **kwargs))


def two_saves(seed: int) -> Dict[str, Any]:
    """EmptyImage -> SaveImage "first"; the same image -> TestSleep -> SaveImage "second": the
    mock runs "first" before the sleep, so a paused server holds the job between the two."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 1000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "first"}},
        "3": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 0.05, "steps": 1, "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "second"}},
    }


def saved(server: MockComfyServer, prefix: str) -> bool:
    folder = server.output_dir or ""
    return os.path.isdir(folder) and any(n.startswith(prefix) for n in os.listdir(folder))


# ---------------------------------------------------------------------------------------------
# The failure table's (history, ...) rows: the result read after the job's end was signalled.


def test_a_result_read_that_fails_once_still_gives_every_output_of_the_job(mock_comfy: MockComfyServer) -> None:
    """The table's (history, any other) row: the job ended on its server, and the one read of
    its result (``/history``) answers 500. The read is retried, so the result lists every file
    the job wrote, also those whose websocket event was lost (a half-open socket for a moment)
    (mutant: the row's window 0, so the first failed read gives up and the result is made of
    the events heard only, without "first")."""
    mock_comfy.pause_jobs()
    mock_comfy.mute_websockets()  # "first" is announced to nobody
    try:
        with pool_of([mock_comfy], {}, reconcile_interval=3600.0) as pool:
            job = pool.submit(two_saves(seed=21))
            wait_until(lambda: saved(mock_comfy, "first"), what="the first output written")
            mock_comfy.unmute_websockets()
            mock_comfy.fail_route("/history", "500", method="GET", count=1)
            mock_comfy.resume_jobs()
            result = job.result(timeout=60)
    finally:
        mock_comfy.unmute_websockets()
        mock_comfy.resume_jobs()
    assert not mock_comfy.route_faults(), "the result was never read"
    assert sorted(f.filename.split("_")[0] for f in result.files) == ["first", "second"], result.files
    assert mock_comfy.execution_counts() == {job.prompt_id: 1}
