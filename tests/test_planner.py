"""The batch planner and a batch's bookkeeping on the parts themselves (no network): the
plan's time bound, which server the plan lets take a job, counts, fail-fast, waiting, results,
and ``map``'s inputs per job. The same behaviours on mock servers are in test_batch.py."""

from __future__ import annotations

import threading
from typing import Any, List, Tuple

import pytest

from comfy_cluster import ComfyClusterError, JobCancelled, JobFailed, JobResult, ServerConfig
from comfy_cluster.balance import Candidate
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.planner import Batch, inputs_per_job, plan_threshold
from comfy_cluster.status import ServerStatus

HANG = 20.0  # seconds: only rules out a hang, however loaded the machine


# -- the plan's time bound --------------------------------------------------------------------


@pytest.mark.parametrize(
    "backlogs, remaining, threshold",
    [
        # Idle servers of 1, 0.5 and 0.25 s a job: the first job ends at 0.25 s ...
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 1, 0.25),
        # ... the third at 0.5 s (the fast one's second, the middle one's first) ...
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 3, 0.5),
        # ... the seventh at 1 s (4 + 2 + 1).
        ([(0, 1.0), (0, 0.5), (0, 0.25)], 7, 1.0),
        # Backlogs: s0 frees at 1 s and ends jobs at 1.5, 2, 2.5 s; s1 at 2, 4 s: the third at 2 s.
        ([(1.0, 0.5), (0, 2.0)], 3, 2.0),
        # A busy fast server loses the only job to an idle slow one.
        ([(2.0, 0.25), (0, 1.0)], 1, 1.0),
        # One server: its own queue.
        ([(0.5, 2.0)], 4, 8.5),
        # Nothing to plan: no job left, or no server.
        ([(0, 1.0)], 0, 0.0),
        ([(3.0, 1.0)], 0, 0.0),
        ([], 3, 0.0),
    ],
)
def test_plan_threshold_is_when_the_last_remaining_job_ends_at_best(backlogs, remaining, threshold):
    assert plan_threshold(backlogs, remaining) == pytest.approx(threshold, abs=1e-5)


# -- which server the plan lets take a job -------------------------------------------------------


def _server(name: str) -> ServerConfig:
    return ServerConfig(name=name, host="127.0.0.1", port=9000 + int(name[1:]))


def _cand(name: str, *, in_flight: int = 0) -> Candidate:
    srv = _server(name)
    return Candidate(srv, ServerStatus(name=name, url=srv.url, online=True, in_flight=in_flight), int(name[1:]), 1.0)


def test_the_batchs_last_job_waits_for_the_fast_server_that_finishes_it_sooner():
    fast, slow = _server("s0"), _server("s1")
    # s0 (full) frees at 0.5 s and takes 0.5 s a job: it ends one more at 1 s, two at 1.5 s;
    # s1 (room) would end its first at 1.2 s.
    state = [(fast, 0.5, 0.5), (slow, 0.0, 1.2)]
    assert Batch().plan_pick([_cand("s1")], state, remaining=1) is None  # 1 s < 1.2 s: wait
    assert Batch().plan_pick([_cand("s1")], state, remaining=2).name == "s1"  # the second ends there at 1.2 s
    # A job is never counted below one: "none waiting" still plans the job being placed.
    assert Batch().plan_pick([_cand("s1")], state, remaining=0) is None
    # A candidate the plan has no figures for is not given the job.
    assert Batch().plan_pick([_cand("s2")], state, remaining=5) is None


# -- bookkeeping: counts, the end, fail-fast ---------------------------------------------------------


def _returns(fn: Any) -> Any:
    """``fn()``'s outcome (its value or its exception), run on a thread so that a wait that
    ignores its timeout fails this test instead of hanging it."""
    box: List[Any] = []

    def run() -> None:
        try:
            box.append(("value", fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    assert box, "the call did not return: its timeout was not kept"
    return box[0]


def _all_ended(batch: Batch) -> bool:
    """``batch.wait(0)``, which must answer at once whether or not every job has ended."""
    kind, value = _returns(lambda: batch.wait(0))
    assert kind == "value"
    return value


def _batch(n: int, **kwargs: Any) -> Tuple[Batch, List[JobControl]]:
    batch = Batch(**kwargs)
    controls = [JobControl(Job({"1": {"class_type": "EmptyImage", "inputs": {"seed": i}}}, index=i), seq=i) for i in range(n)]
    for control in controls:
        control.job.batch = batch
    batch.attach(controls)
    return batch, controls


def _result(i: int) -> JobResult:
    return JobResult(prompt_id=f"p{i}", server="s0", outputs={}, attempts=1, seconds=0.1)


def test_counts_say_how_many_ended_and_failed_and_the_batch_is_done_only_when_all_ended():
    batch, controls = _batch(4)
    assert batch.counts() == (0, 0, 4) and len(batch) == 4
    controls[0].fail("s0", JobFailed("frame 1 broke"))
    assert batch.counts() == (1, 1, 4) and not _all_ended(batch)
    controls[1].succeed("s0", _result(1))
    controls[2].fail("s0", JobFailed("frame 3 broke"))
    assert batch.counts() == (3, 2, 4) and not _all_ended(batch)
    assert not controls[3].cancel_requested  # no fail_fast: the others go on
    controls[3].cancelled(None, "cancelled by the artist")
    assert batch.counts() == (4, 2, 4) and _all_ended(batch)
    out = batch.results(return_exceptions=True)
    assert [type(o) for o in out] == [JobFailed, JobResult, JobFailed, JobCancelled]
    with pytest.raises(JobFailed, match="frame 1 broke"):  # the first error in input order
        batch.results()


def test_a_batch_of_one_job_is_done_when_it_ends():
    batch, (control,) = _batch(1)
    assert not _all_ended(batch)
    control.succeed("s0", _result(0))
    assert batch.wait(HANG) and batch.results() == [_result(0)]


def test_fail_fast_cancels_every_other_job_at_the_first_failure():
    quiet = []
    batch, controls = _batch(4, fail_fast=True, quiet_posts=lambda: quiet.append(1))
    controls[1].succeed("s0", _result(1))
    assert not any(c.cancel_requested for c in controls)  # a success cancels nothing
    controls[0].fail("s0", JobFailed("frame 1 broke"))
    assert controls[2].cancel_requested and controls[3].cancel_requested
    assert quiet == [1]  # the pool's POSTs in flight were waited for first
    # A job that fails before its cancel reaches it ends cancelled (cancel()'s promise).
    controls[2].fail("s0", JobFailed("frame 3 broke"))
    controls[3].cancelled(None, "cancelled by fail_fast")
    assert batch.wait(HANG) and batch.counts() == (4, 1, 4)
    assert [c.job.status for c in controls] == ["failed", "succeeded", "cancelled", "cancelled"]


# -- waiting and results with a timeout ---------------------------------------------------------------


def test_waiting_on_an_unfinished_batch_returns_when_the_timeout_is_up():
    batch, controls = _batch(3)
    controls[0].succeed("s0", _result(0))
    assert _returns(lambda: batch.wait(0.01)) == ("value", False)
    kind, error = _returns(lambda: batch.results(timeout=0.01))
    assert kind == "error" and isinstance(error, TimeoutError)
    assert str(error) == "batch not finished after 0.01 s (1 of 3 ended)"
    assert not any(c.cancel_requested for c in controls)  # results() leaves the batch running


def test_results_or_cancel_cancels_the_batch_when_the_timeout_is_up():
    batch, controls = _batch(3)
    controls[0].fail("s0", JobFailed("frame 1 broke"))
    kind, error = _returns(lambda: batch.results_or_cancel(0.01))
    assert kind == "error" and isinstance(error, TimeoutError)
    assert str(error) == "batch not finished after 0.01 s (1 of 3 ended); the batch was cancelled"
    assert controls[1].cancel_requested and controls[2].cancel_requested
    # In time, it is results(): the first error raised unless asked to return them.
    batch, controls = _batch(2)
    controls[0].fail("s0", JobFailed("frame 1 broke"))
    controls[1].succeed("s0", _result(1))
    with pytest.raises(JobFailed, match="frame 1 broke"):
        batch.results_or_cancel(HANG)
    out = batch.results_or_cancel(HANG, return_exceptions=True)
    assert isinstance(out[0], JobFailed) and out[1] == _result(1)


# -- map's inputs per job ------------------------------------------------------------------------------


def test_maps_inputs_become_one_mapping_per_job():
    plate = {"10.image": "/shots/plate.png"}
    assert inputs_per_job(None, 3) == [None, None, None]
    assert inputs_per_job(plate, 3) == [plate, plate, plate]
    per_frame = [{"10.image": f"/shots/plate.{i}.png"} for i in range(3)]
    assert inputs_per_job(iter(per_frame), 3) == per_frame
    with pytest.raises(ComfyClusterError) as err:
        inputs_per_job(per_frame[:2], 3)
    assert str(err.value) == "inputs: 2 entries for 3 workflows"
