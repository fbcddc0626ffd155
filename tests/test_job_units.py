"""A job as its caller and the library's parts see it, on its own (no pool, no server).

``Job`` is the Future the caller holds and ``JobControl`` the library's side of it. These
tests drive the control the way the dispatcher and the runners do (claim, posted, started,
attempt_ended, emit, succeed/fail/cancelled) with a fake executor that records what is
queued for the callback thread, and check what the caller reads: state, counts, events, the
error raised, and the order and place user code runs in. Written against the surviving
mutants of ``comfy_cluster/jobs.py`` (docs/TESTING.md); no threads, no network, no sleeps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest
from helpers import sleep_workflow

from comfy_cluster.attempt import Attempt
from comfy_cluster.errors import ComfyClusterError, JobCancelled
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.reports import JobResult, OutputFile
from comfy_cluster.server_config import ServerConfig
from comfy_cluster.warm import warmth_of


class Executor:
    """The callback thread, recorded: ``accept`` False plays a closed executor."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.calls: List[Tuple[Callable[..., Any], Any, bool]] = []

    def submit(self, fn: Callable[..., Any], arg: Any, droppable: bool = False) -> bool:
        if not self.accept:
            return False
        self.calls.append((fn, arg, droppable))
        return True

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for fn, arg, _ in calls:
            fn(arg)


def _server(name: str) -> ServerConfig:
    return ServerConfig(name=name, url="http://127.0.0.1:9")


def _result(prompt_id: str = "p" * 36, server: str = "a") -> JobResult:
    files = [OutputFile("x.png", "", "output", "9"), OutputFile("y.png", "sub", "temp", "7")]
    return JobResult(prompt_id=prompt_id, server=server, outputs={"9": files[:1], "7": files[1:]}, attempts=1, seconds=1.0)


def _posted(control: JobControl, server: str, number: int = 1, prompt_id: Optional[str] = None) -> Attempt:
    attempt = Attempt(control, server, number, prompt_id)
    assert control.claim(attempt, _server(server))
    control.posted(attempt)
    return attempt


def test_a_new_job_is_queued_with_nothing_tried_and_its_own_copy_of_the_inputs():
    inputs = {"10": "/tmp/in.png"}
    before = time.monotonic()
    job = Job(sleep_workflow(), inputs=inputs, retries=4, index=3, owner="ann")
    inputs["11"] = "/tmp/other.png"  # the caller's dict changing later does not change the job
    assert job.inputs == {"10": "/tmp/in.png"}
    assert (job.status, job.done, job.cancel_requested) == ("queued", False, False)
    assert (job.prompt_id, job.server, job.attempts, job.tried, job.failures, job.events) == (None, None, 0, [], [], [])
    assert (job.retries, job.index, job.owner, job.batch) == (4, 3, "ann", None)
    assert before <= job.created <= time.monotonic()
    assert Job(sleep_workflow()).inputs == {} and Job(sleep_workflow()).retries == 2
    control = JobControl(job, seq=7)
    assert (control.seq, control.owner, control.batch, control.final, control.holder) == (7, "ann", None, False, None)
    assert (control.incapable, control.last_error, control.no_server_since, control.key_memo) == (set(), None, None, None)
    assert control.caps == (-1, {}) and control.last_exec_start is None and not control.cancel_requested
    job.batch = "the batch"
    assert control.batch == "the batch"


def test_a_jobs_attempts_are_counted_and_its_servers_named_once_each_in_order():
    control = JobControl(Job(sleep_workflow()))
    job = control.job
    first = _posted(control, "a", 1, "1" * 36)
    assert (job.attempts, job.tried, job.prompt_id, job.server.name) == (1, ["a"], "1" * 36, "a")
    assert not control.claim(Attempt(control, "b", 9), _server("b"))  # one attempt at a time
    assert job.server.name == "a"
    control.attempt_ended(first, ("a", "connection refused"))
    assert (job.status, job.attempts, job.tried, job.failures) == ("queued", 1, ["a"], [("a", "connection refused")])
    second = _posted(control, "b", 2)
    control.attempt_ended(second)  # ended without a failure to record (a cancelled copy)
    third = _posted(control, "a", 3)
    assert (job.attempts, job.tried, job.failures) == (3, ["a", "b"], [("a", "connection refused")])
    assert job.prompt_id == third.prompt_id and job.server.name == "a"
    control.succeed("a", _result(third.prompt_id))
    # The attempt that ended the job stays counted (a job ended by close() while its runner
    # still held it too), and its runner reporting it over afterwards counts it once.
    assert (job.attempts, job.tried) == (3, ["a", "b"])
    control.attempt_ended(third)
    assert (job.attempts, job.tried, job.failures) == (3, ["a", "b"], [("a", "connection refused")])


def test_an_attempt_ending_after_the_job_did_leaves_its_status_final():
    control = JobControl(Job(sleep_workflow()))
    attempt = _posted(control, "a")
    control.started(12.5)
    assert control.job.status == "running" and control.last_exec_start == 12.5
    control.fail("a", RuntimeError("broke"))
    control.attempt_ended(attempt, ("a", "late"))
    control.started(13.0)
    assert control.job.status == "failed"
    assert control.last_exec_start == 13.0  # the runner's clock reading is kept whatever the state


def test_a_job_is_claimed_only_while_it_waits_and_nobody_cancelled_it():
    control = JobControl(Job(sleep_workflow()))
    control.job.cancel()
    assert not control.claim(Attempt(control, "a", 1), _server("a"))
    assert control.job.server is None and control.job.attempts == 0
    ended = JobControl(Job(sleep_workflow()))
    ended.fail(None, RuntimeError("no"))
    assert not ended.claim(Attempt(ended, "a", 1), _server("a"))
    assert ended.job.server is None


def _on_a_thread(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value or error, asked on a thread: a wait that ignores its timeout fails
    the test within the bound (which only rules out a hang) instead of hanging it."""
    out: List[Any] = []

    def run() -> None:
        try:
            out.append(("value", fn()))
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert out, "still waiting: the timeout was not kept"
    return out[0]


def test_wait_result_and_exception_give_the_end_or_say_what_was_not_finished():
    job = Job(sleep_workflow())
    assert _on_a_thread(lambda: job.wait(0.01)) == ("value", False)
    kind, error = _on_a_thread(lambda: job.result(0.01))
    assert kind == "error" and isinstance(error, TimeoutError) and str(error) == "job None not finished after 0.01 s"
    kind, error = _on_a_thread(lambda: job.exception(0.02))
    assert kind == "error" and isinstance(error, TimeoutError) and "not finished after 0.02 s" in str(error)
    control = JobControl(job)
    result = _result()
    assert control.succeed("a", result, raw={"k": 1}) is True
    assert job.wait(0) is True and job.done
    assert job.result(0) is result and job.exception(0) is None
    event = job.events[-1]
    assert (event.kind, event.server, event.reason, event.raw) == ("succeeded", "a", None, {"k": 1})


def test_a_failed_job_raises_its_error_and_its_last_event_says_why():
    control = JobControl(Job(sleep_workflow(), index=2))
    attempt = _posted(control, "b")
    error = ComfyClusterError("node 2 (TestFail): boom")
    assert control.fail("b", error, raw={"exception_message": "boom"}) is True
    job = control.job
    assert job.status == "failed" and job.exception() is error
    with pytest.raises(ComfyClusterError) as raised:
        job.result()
    assert raised.value is error
    event = job.events[-1]
    assert (event.kind, event.server, event.prompt_id, event.index) == ("failed", "b", attempt.prompt_id, 2)
    assert event.reason == "node 2 (TestFail): boom" and event.raw == {"exception_message": "boom"}


def test_a_cancelled_job_raises_job_cancelled_naming_the_job_and_its_server():
    control = JobControl(Job(sleep_workflow(), index=0))
    attempt = _posted(control, "a")
    assert control.job.cancel() is True
    assert control.cancelled("a", "cancelled on a", raw={"node": "2"}) is True
    job = control.job
    error = job.exception()
    assert isinstance(error, JobCancelled)
    assert str(error) == f"job {attempt.prompt_id} cancelled on a"
    assert (error.prompt_id, error.server) == (attempt.prompt_id, "a")
    event = job.events[-1]
    assert (event.kind, event.server, event.prompt_id, event.reason, event.raw, event.index) == (
        "cancelled", "a", attempt.prompt_id, "cancelled on a", {"node": "2"}, 0)
    # Never sent anywhere: no prompt id yet, and a reason from the part that ended it.
    waiting = JobControl(Job(sleep_workflow()))
    waiting.cancelled(None, "")
    error = waiting.job.exception()
    assert str(error) == "job (not submitted) cancelled" and error.prompt_id == "" and error.server is None


def test_a_job_cancelled_after_its_server_finished_or_failed_it_ends_cancelled_saying_so():
    done_first = JobControl(Job(sleep_workflow()))
    _posted(done_first, "a")
    done_first.mark_cancel()
    assert done_first.succeed("a", _result()) is True
    job = done_first.job
    assert job.status == "cancelled" and isinstance(job.exception(), JobCancelled)
    assert job.events[-1].reason == "cancelled (it had succeeded on a first; its outputs are not used)"
    with pytest.raises(JobCancelled):
        job.result()
    failed_first = JobControl(Job(sleep_workflow()))
    _posted(failed_first, "a")
    failed_first.mark_cancel()
    failed_first.fail("a", RuntimeError("boom"))
    assert failed_first.job.status == "cancelled"
    assert failed_first.job.events[-1].reason == "cancelled (it had failed first: boom; its outputs are not used)"
    assert "its outputs are not used" in str(failed_first.job.exception())


def test_a_job_ends_once_whoever_reports_its_end_next():
    control = JobControl(Job(sleep_workflow()))
    assert control.fail("a", RuntimeError("first"))
    assert control.succeed("a", _result()) is False
    assert control.cancelled("a", "closing") is False
    assert control.fail("a", RuntimeError("second")) is False
    assert control.mark_cancel() is False and control.job.cancel() is False
    assert [e.kind for e in control.job.events] == ["failed"] and control.job.status == "failed"
    assert str(control.job.exception()) == "first" and control.final and not control.cancel_requested


def test_cancel_wakes_the_runner_following_the_job_and_the_pool():
    woken: List[int] = []
    control = JobControl(Job(sleep_workflow()), on_cancel=lambda: woken.append(1))
    inbox: "queue.Queue[Any]" = queue.Queue()
    control.attach_inbox(inbox)
    assert control.job.cancel() is True
    assert control.cancel_requested and control.job.cancel_requested
    assert inbox.qsize() == 1 and woken == [1]  # the runner is woken (its loop reads cancel_requested, not the item)
    inbox.get_nowait()
    control.attach_inbox(None)  # the runner stopped following it: nothing to wake there
    control.notify_cancel()
    assert woken == [1, 1] and inbox.empty()
    # Phase one alone flags the job and wakes nobody (a batch wakes after flagging them all).
    other = JobControl(Job(sleep_workflow()), on_cancel=lambda: woken.append(2))
    assert other.mark_cancel() is True and other.cancel_requested and woken == [1, 1]
    Job(sleep_workflow()).cancel()  # outside a pool: no inbox, no pool to wake


def test_events_reach_on_event_in_order_then_the_end_then_the_done_callbacks():
    ex = Executor()
    seen: List[Any] = []
    job = Job(sleep_workflow(), on_event=lambda e: seen.append(e.kind), index=5)
    control = JobControl(job, executor=ex)
    job.add_done_callback(lambda j: seen.append(("done", j.status)))
    job.add_done_callback(lambda j: seen.append(("done2", j.done)))
    attempt = _posted(control, "a")
    control.emit("progress", "a", value=1.0, max=2.0)
    assert [c[2] for c in ex.calls] == [True]  # progress may be dropped when closing; the end may not
    assert seen == []  # queued for the callback thread, not run on the library's thread
    control.succeed("a", _result(attempt.prompt_id))
    assert [c[2] for c in ex.calls] == [True, False, False, False]
    ex.run()
    assert seen == ["progress", "succeeded", ("done", "succeeded"), ("done2", True)]
    event = job.events[0]
    assert (event.kind, event.server, event.prompt_id, event.index, event.value) == ("progress", "a", attempt.prompt_id, 5, 1.0)
    control.emit("progress", "a", value=2.0, max=2.0)  # after the end: dropped
    assert [e.kind for e in job.events] == ["progress", "succeeded"] and ex.calls == []
    job.add_done_callback(lambda j: seen.append("late"))  # after the end: queued at once
    ex.run()
    assert seen[-1] == "late"


def test_user_code_the_callback_thread_cannot_take_runs_on_the_reporting_thread_unless_droppable(caplog):
    ex = Executor(accept=False)  # closed: the pool is gone
    seen: List[Any] = []
    job = Job(sleep_workflow(), on_event=lambda e: seen.append((e.kind, threading.current_thread())))
    control = JobControl(job, executor=ex)
    control.emit("progress", "a", value=1.0, max=2.0)
    control.emit("executing", "a", node="2")
    assert seen == []  # progress after close is dropped, as any droppable call
    job.add_done_callback(lambda j: seen.append(("done", j.status)))
    job.add_done_callback(lambda j: 1 / 0)  # raising user code is logged, never raised here
    job.add_done_callback(lambda j: seen.append(("after", j.status)))
    with caplog.at_level(logging.ERROR, logger="comfy_cluster.jobs"):
        assert control.cancelled(None, "closing") is True
    assert seen == [("cancelled", threading.current_thread()), ("done", "cancelled"), ("after", "cancelled")]
    raised = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    # The log names the callback that raised (by its qualified name, not a repr with an address).
    assert [r.getMessage() for r in raised] == [
        "callback test_user_code_the_callback_thread_cannot_take_runs_on_the_reporting_thread_unless_droppable.<locals>.<lambda> raised"]
    job.add_done_callback(lambda j: seen.append(("late", j.status)))
    assert seen[-1] == ("late", "cancelled")

    class Writer:  # a callable object (no __qualname__): the log shows its repr
        def __call__(self, job: Job) -> None:
            raise OSError("disk full")

        def __repr__(self) -> str:
            return "<writer of shot 010>"

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="comfy_cluster.jobs"):
        job.add_done_callback(Writer())
    assert [r.getMessage() for r in caplog.records if r.exc_info] == ["callback <writer of shot 010> raised"]
    # A job outside a pool (no executor) runs everything on the reporting thread, progress too.
    alone: List[str] = []
    bare = Job(sleep_workflow(), on_event=lambda e: alone.append(e.kind))
    bare._emit("progress", "a", value=1.0, max=1.0)
    bare._finish("failed", "a", error=RuntimeError("x"))
    assert alone == ["progress", "failed"]


def test_the_end_listeners_run_once_inline_and_one_that_raises_stops_nothing(caplog):
    ex = Executor()
    control = JobControl(Job(sleep_workflow()), executor=ex)
    attempt = _posted(control, "a")
    heard: List[Tuple[str, bool]] = []
    control.add_end_listener(lambda j: heard.append(("first", j.done)))
    control.add_end_listener(lambda j: 1 / 0)
    control.add_end_listener(lambda j: heard.append(("third", j.done)))
    with caplog.at_level(logging.ERROR, logger="comfy_cluster.jobs"):
        control.fail("a", RuntimeError("x"))
    assert heard == [("first", True), ("third", True)]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [r.getMessage() for r in failed] == [f"end listener failed for job {attempt.prompt_id}"]
    assert ex.calls == []  # no on_event, no done-callback: nothing queued
    control.cancelled("a", "again")
    assert len(heard) == 2
    control.add_end_listener(lambda j: heard.append(("late", j.done)))  # already final: at once
    assert heard[-1] == ("late", True)


def test_on_attempt_hears_each_copy_and_only_a_failed_reservation_stops_the_post(caplog):
    heard: List[Tuple[str, str, str]] = []
    control = JobControl(Job(sleep_workflow()))
    attempt = Attempt(control, "a", 1)
    control.note_attempt(attempt, "reserved")  # nobody listening: nothing happens
    control.job._on_attempt = lambda pid, server, phase: heard.append((pid, server, phase))
    control.note_attempt(attempt, "reserved")
    control.note_attempt(attempt, "ended")
    assert heard == [(attempt.prompt_id, "a", "reserved"), (attempt.prompt_id, "a", "ended")]

    def refuse(pid: str, server: str, phase: str) -> None:
        raise RuntimeError(f"no record for {phase}")

    control.job._on_attempt = refuse
    with pytest.raises(RuntimeError, match="reserved"):
        control.note_attempt(attempt, "reserved")
    with caplog.at_level(logging.ERROR, logger="comfy_cluster.jobs"):
        control.note_attempt(attempt, "ended")  # the copy's end stands: logged, not raised
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert [r.getMessage() for r in failed] == [f"on_attempt failed for {attempt.prompt_id} on a"]


def test_a_job_keeps_its_last_preview_only_when_previews_come_in_a_row():
    seen: List[bytes] = []
    job = Job(sleep_workflow(), on_event=lambda e: seen.append(e.data))
    job._emit("executing", "a", node="2")
    for i in range(3):
        job._emit("preview", "a", data=bytes([i]))
    assert [(e.kind, e.data) for e in job.events] == [("executing", None), ("preview", bytes([2]))]
    assert seen == [None, bytes([0]), bytes([1]), bytes([2])]  # every frame still reaches on_event


def test_download_keeps_the_result_order_filters_by_type_and_names_files_by_the_job():
    calls: List[Any] = []

    def downloader(server: str, files: Any, dest: str, tag: str) -> List[str]:
        calls.append((server, list(files), dest, tag))
        return [f"{dest}/{f.filename}" for f in files]

    control = JobControl(Job(sleep_workflow()), download=downloader)
    result = _result("abcdef0123" + "x" * 26, "b")
    control.succeed("b", result)
    assert control.job.download("/out") == ["/out/x.png", "/out/y.png"]
    assert calls[-1] == ("b", result.files, "/out", "abcdef01")
    assert control.job.download("/out", types=("output",)) == ["/out/x.png"]
    named = [OutputFile("z.exr", "", "output")]
    assert control.job.download("/o", files=named) == ["/o/z.exr"] and calls[-1][1] == named
    assert control.job.download("/o", files=named, types=("temp",)) == []
    alone = Job(sleep_workflow())
    alone._finish("succeeded", "b", result=result)
    with pytest.raises(ComfyClusterError, match="abcdef0123x+ belongs to no pool"):
        alone.download("/out")
    failed = JobControl(Job(sleep_workflow()), download=downloader)
    failed.fail("b", RuntimeError("broke"))
    with pytest.raises(RuntimeError, match="broke"):
        failed.job.download("/out")
    assert len(calls) == 4


def test_a_jobs_repr_says_where_it_is():
    control = JobControl(Job(sleep_workflow(), retries=1))
    assert repr(control.job) == "<Job - queued>"
    attempt = _posted(control, "gpu1", 1, "0123456789" + "a" * 26)
    control.started(1.0)
    assert repr(control.job) == "<Job 01234567 running attempt 1/2 on gpu1>"
    assert repr(control) == "<JobControl <Job 01234567 running attempt 1/2 on gpu1>>"
    control.attempt_ended(attempt, ("gpu1", "lost"))
    assert repr(control.job) == "<Job 01234567 queued attempt 1/2 on gpu1>"
    control.fail("gpu1", RuntimeError("x"))
    assert repr(control.job) == "<Job 01234567 failed attempt 1/2>"


def test_warmth_is_worked_out_from_the_workflow_once_unless_given():
    control = JobControl(Job({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}}}))
    first = control.warmth
    assert first == warmth_of(control.job.workflow) and first.models and control.warmth is first
    given = JobControl(Job(sleep_workflow()), warmth=first)
    assert given.warmth is first
