"""Small parts of the core on their own: the callback thread, the ledger, cancel on a server."""

from __future__ import annotations

import threading
from typing import Any, List

from helpers import sleep_workflow, wait_until

from comfy_cluster import ServerPool
from comfy_cluster.attempt import Attempt, AttemptPhase, Ledger, cancel_on_server
from comfy_cluster.callbacks import CallbackExecutor
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.jobs import Job, JobControl


def test_callbacks_run_in_order_on_one_thread_and_survive_anything():
    ex = CallbackExecutor()
    seen: List[Any] = []
    threads = set()
    done = threading.Event()

    def record(x: Any) -> None:
        threads.add(threading.current_thread().name)
        seen.append(x)

    def explode(kind: type) -> None:
        raise kind("from user code")

    ex.submit(record, 1)
    ex.submit(explode, SystemExit)
    ex.submit(record, 2)
    ex.submit(explode, KeyboardInterrupt)
    ex.submit(explode, ValueError)
    ex.submit(record, 3)
    ex.submit(done.set)
    assert done.wait(10)
    ex.close()
    assert seen == [1, 2, 3]
    assert threads == {"comfy-cluster-callbacks"}
    ex.submit(record, 4)  # after close: run at once on the caller's thread
    assert seen[-1] == 4


def test_close_drops_what_a_stuck_callback_holds_back():
    ex = CallbackExecutor()
    release = threading.Event()
    ran: List[int] = []
    ex.submit(release.wait)
    ex.submit(ran.append, 1)
    ex.close(drain_seconds=0.2)  # returns although the first callback never ends
    release.set()
    assert ran == []


class _Monitor:
    def __init__(self) -> None:
        self.count = 0

    def job_reserved(self, name: str) -> None:
        self.count += 1

    def job_released(self, name: str, **kw: Any) -> None:
        self.count -= 1


def test_ledger_keeps_an_unconfirmed_attempt_counted_until_released():
    mon = _Monitor()
    woken: List[int] = []
    ledger = Ledger(["a"], mon, lambda: woken.append(1))  # type: ignore[arg-type]
    job = Job(sleep_workflow())
    attempt = Attempt(JobControl(job), "a", 1)
    assert attempt.phase is AttemptPhase.RESERVED and len(attempt.prompt_id) == 36
    ledger.reserve(attempt)
    ledger.lose(attempt, now=5.0)
    assert ledger.unconfirmed("a") == [attempt] and mon.count == 1
    assert ledger.release(attempt) and not ledger.release(attempt)
    assert mon.count == 0 and woken == [1] and attempt.phase is AttemptPhase.ENDED
    assert ledger.live() == []


def test_cancel_on_server_interrupts_only_what_runs_now(mock_comfy):
    mock_comfy.pause_jobs()
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 2}]) as pool:
        pool.submit(sleep_workflow(1.0))
        pool.submit(sleep_workflow(1.0))
        wait_until(lambda: [len(q) for q in mock_comfy.queue_snapshot()] == [1, 1], what="one running, one pending")
        (running,), (pending,) = mock_comfy.queue_snapshot()  # the two POSTs race: ask the server
        client = ComfyClient(ServerConfig(name="m", url=mock_comfy.url))
        try:
            assert cancel_on_server(client, pending) is True
            assert mock_comfy.interrupt_requests == []  # a pending job is only deleted
            assert cancel_on_server(client, running) is False
            assert mock_comfy.interrupt_requests == [{"prompt_id": running}]
        finally:
            client.close()
            mock_comfy.resume_jobs()
