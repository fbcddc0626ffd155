"""What the gateway relies on: fair share between owners, JobEvent.raw, binary preview frames."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, List

from comfy_cluster import JobEvent, ServerPool

from helpers import sleep_workflow, wait_until


def _pool(server: Any, **kw: Any) -> ServerPool:
    return ServerPool([{"name": "m", "url": server.url, "max_queue": 1}], **kw)


def test_next_free_slot_goes_to_the_owner_served_least(mock_comfy):
    """Owner a queues 5 jobs, then owner b 2: b's jobs must not wait behind all of a's."""
    mock_comfy.pause_jobs()  # the first job stays running until every job is submitted
    with _pool(mock_comfy) as pool:
        jobs = [pool.submit(sleep_workflow(0.01, seed=100 + i), owner="a") for i in range(5)]
        jobs += [pool.submit(sleep_workflow(0.01, seed=200 + i), owner="b") for i in range(2)]
        wait_until(lambda: mock_comfy.queue_snapshot()[0], what="first job running")
        mock_comfy.resume_jobs()
        for j in jobs:
            j.result(timeout=30)
        seeds = {p[0]: p[1]["2"]["inputs"]["seed"] for p in mock_comfy.received_prompts}
        order = [seeds[pid] for pid in mock_comfy.executed_prompt_ids]
    assert order == [100, 200, 101, 201, 102, 103, 104], order


def test_owner_must_be_a_string(mock_comfy):
    with _pool(mock_comfy) as pool:
        try:
            pool.submit(sleep_workflow(0.01), owner=3)  # type: ignore[arg-type]
        except ValueError as exc:
            assert "owner" in str(exc)
        else:
            raise AssertionError("owner=3 accepted")


def test_events_carry_the_servers_message_data(mock_comfy):
    events: List[JobEvent] = []
    with _pool(mock_comfy) as pool:
        job = pool.submit(sleep_workflow(0.05, steps=2), on_event=events.append)
        job.result(timeout=30)
        wait_until(lambda: any(e.kind == "succeeded" for e in events), what="succeeded event")
    progress = [e for e in events if e.kind == "progress"]
    assert progress and all(e.raw is not None and e.raw["prompt_id"] == job.prompt_id for e in progress)
    assert progress[0].raw is not None and {"value", "max", "node"} <= set(progress[0].raw)
    started = next(e for e in events if e.kind == "started")
    assert started.raw is not None and started.raw["prompt_id"] == job.prompt_id
    done = next(e for e in events if e.kind == "succeeded")
    assert done.raw == {"prompt_id": job.prompt_id, "timestamp": done.raw["timestamp"]}


def _send_frame(server: Any, frame: bytes, sid: str) -> None:
    """Queue a binary frame to ``sid``'s socket on the mock's own loop."""

    async def send() -> None:
        server._send_ws(frame, sid)

    asyncio.run_coroutine_threadsafe(send(), server._loop).result(timeout=10)


def test_binary_frames_reach_the_running_job_as_previews(mock_comfy):
    events: List[JobEvent] = []
    got = threading.Event()

    def on_event(e: JobEvent) -> None:
        events.append(e)
        if e.kind == "preview":
            got.set()

    mock_comfy.pause_jobs()
    with _pool(mock_comfy) as pool:
        job = pool.submit(sleep_workflow(0.05), on_event=on_event)
        wait_until(lambda: any(e.kind == "started" for e in events), what="job started")
        frame = (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + b"\x89PNG fake"
        _send_frame(mock_comfy, frame, pool.client_id)
        # A type-4 frame names its prompt: routed by that id.
        meta = json.dumps({"node_id": "2", "prompt_id": job.prompt_id, "image_type": "image/png"}).encode()
        frame4 = (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + b"img"
        _send_frame(mock_comfy, frame4, pool.client_id)
        wait_until(lambda: sum(e.kind == "preview" for e in events) == 2, what="two previews")
        mock_comfy.resume_jobs()
        job.result(timeout=30)
    previews = [e for e in events if e.kind == "preview"]
    assert [e.data for e in previews] == [frame, frame4]
    assert all(e.server == "m" and e.prompt_id == job.prompt_id for e in previews)
    assert "PNG" not in repr(previews[0])  # the bytes stay out of the repr
