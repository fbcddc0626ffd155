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
    assert ex.submit(record, 4, droppable=True)  # progress after close: dropped
    assert not ex.submit(record, 5)  # after close, the thread gone: the caller runs it
    assert seen == [1, 2, 3]


def test_close_drops_progress_but_keeps_terminal_calls_behind_a_stuck_callback():
    ex = CallbackExecutor()
    release = threading.Event()
    ran: List[int] = []
    ex.submit(release.wait)
    ex.submit(ran.append, 1, droppable=True)  # a progress event
    ex.submit(ran.append, 2)  # a terminal event or a done-callback
    ex.close(drain_seconds=0.2)  # returns although the first callback has not ended
    assert ex.submit(ran.append, 3)  # queued behind it: the thread is still there
    release.set()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "comfy-cluster-callbacks"], what="the thread ends")
    assert ran == [2, 3]


class _Monitor:
    def __init__(self) -> None:
        self.count = 0

    def job_reserved(self, name: str, warmth: Any = None) -> bool:
        self.count += 1
        return False

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


def test_a_job_ends_once_and_is_done_before_its_callbacks_run():
    """A Future's order: state, terminal event and done first, then the callbacks; a second
    end and any event after the end change nothing and report nothing."""
    ex = CallbackExecutor()
    seen: List[Any] = []
    release = threading.Event()
    job = Job(sleep_workflow(), on_event=lambda e: seen.append((e.kind, job.done)))
    job._executor = ex
    ex.submit(release.wait)  # the callback thread is busy with user code
    job._emit("progress", "a", value=1.0, max=2.0)
    job._add_end_listener(lambda j: seen.append(("listener", j.done)))
    assert job._finish("succeeded", "a", result=None) is True
    assert job.done and job.wait(0)  # at once, although no callback has run
    assert job._finish("failed", "a", error=RuntimeError("late")) is False
    job._emit("progress", "a", value=2.0, max=2.0)
    job.add_done_callback(lambda j: seen.append(("done-callback", j.status)))
    assert [e.kind for e in job.events] == ["progress", "succeeded"]
    release.set()
    wait_until(lambda: len(seen) == 4, what="the callbacks")
    assert seen == [("listener", True), ("progress", True), ("succeeded", True), ("done-callback", "succeeded")]
    ex.close()


def test_a_cancelled_job_ends_cancelled_whatever_its_server_says():
    job = Job(sleep_workflow())
    assert job.cancel() is True
    job._finish("succeeded", "a", result=None)
    assert job.status == "cancelled" and "succeeded on a" in (job.events[-1].reason or "")
    assert job.cancel() is False and job.status == "cancelled"


def test_job_events_keep_the_last_preview_only():
    job = Job(sleep_workflow())
    for i in range(50):
        job._emit("preview", "a", data=bytes([i]) * 10)
        job._emit("progress", "a", value=float(i), max=50.0)
    previews = [e for e in job.events if e.kind == "preview"]
    assert len(previews) == 1 and previews[0].data == bytes([49]) * 10
    assert len(job.events) == 51


def test_a_job_is_held_by_a_server_from_its_post_until_it_moves_or_ends():
    """``JobControl.holder`` (what a batch's ``servers_working`` counts): the server that
    took the job's current attempt; none before the POST is taken, after a move, or at the end."""
    control = JobControl(Job(sleep_workflow()))
    assert control.holder is None  # waiting in the pool's queue
    first = Attempt(control, "a", 1)
    assert control.claim(first, ServerConfig(name="a", url="http://127.0.0.1:9001"))
    assert control.holder is None  # being sent
    control.posted(first)
    assert control.holder == "a"
    control.attempt_ended(first, ("a", "stopped answering"))
    assert control.holder is None  # moved: back in the pool's queue, though "a" was its last server
    second = Attempt(control, "b", 2)
    assert control.claim(second, ServerConfig(name="b", url="http://127.0.0.1:9002"))
    control.posted(second)
    assert control.holder == "b"
    control.fail("b", RuntimeError("broke"))
    assert control.holder is None
