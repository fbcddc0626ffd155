"""The gateway's job book (``comfy_cluster/gateway/book.py``) alone, with fakes of what it is
handed: a pool that records what it is given and ends jobs when the test says, a relay that
records each frame per socket, a state store whose writes are recorded (and committed when the
test says), an executor that runs at once (tests/book_fakes.py). No server, no socket; the
book's own loop. A user's own prompts (delete, cancel, interrupt, history) and the stop: in
tests/test_book_users.py.

Written against surviving mutants of book.py (docs/TESTING.md): each test checks what a client
of the gateway sees (its frames, its queue, its history, the pool's jobs) or what the store
keeps for a restart, never the text of a line."""

from __future__ import annotations

from typing import Any

import pytest
from book_fakes import ALICE, BOB, PROMPT, Harness, OldPool, h  # noqa: F401 (h: the fixture)
from book_fakes import adopt_copy, remaining as _remaining

from comfy_cluster.errors import ConfigError
from comfy_cluster.gateway.gatewayjob import GatewayJob
from comfy_cluster.reports import JobEvent, JobResult, OutputFile

ALICE_C1 = ("alice", "c1")  # Alice's stream with clientId c1 (the harness posts with it)


# -- fair share and the pool ----------------------------------------------------------------


def test_the_pool_gets_the_least_served_owners_job_within_its_capacity(h: Harness) -> None:
    """README: "the next slot goes to the client served least, not to the oldest job"; a
    prompt posted to the front goes before its owner's others; never more than the pool's
    capacity at once."""
    for pid in ("a1", "a2", "a3"):
        h.post(pid, ALICE)
    h.post("b1", BOB)
    assert h.handed() == ["a1"] and _remaining(h) == 4
    assert [gj.state for gj in h.jobs.values()] == ["submitted", "waiting", "waiting", "waiting"]
    h.end("a1", "succeeded")
    assert h.handed() == ["a1", "b1"]  # bob was served less than alice
    h.post("a4", ALICE, front=True)  # "front": first of alice's
    h.end("b1", "succeeded")
    assert h.handed() == ["a1", "b1", "a4"]
    h.capacity = 2
    h.book.pump()
    h.settle()
    assert h.handed() == ["a1", "b1", "a4", "a2"]
    h.end("a4", "succeeded")
    h.end("a2", "succeeded")
    assert h.handed() == ["a1", "b1", "a4", "a2", "a3"]
    h.end("a3", "succeeded")
    assert h.book.active == {} and _remaining(h) == 0
    # An owner who comes back after going idle starts afresh (not behind his past turns).
    for pid in ("a5", "a6"):
        h.post(pid, ALICE)
    h.post("b2", BOB)
    h.end("a5", "succeeded")
    assert h.handed()[-2:] == ["a6", "b2"]


def test_the_fair_share_counts_each_owners_turns_not_the_post_order() -> None:
    h = Harness(capacity=1)
    try:
        h.post("b1", BOB)
        h.post("a1", ALICE)
        h.post("b2", BOB)
        h.post("b3", BOB)
        h.post("a2", ALICE)
        for pid in ("b1", "a1", "b2", "a2"):
            h.end(pid, "succeeded")
        assert h.handed() == ["b1", "a1", "b2", "a2", "b3"]
    finally:
        h.close()


def test_prompt_numbers_go_on_from_restored_ones_and_front_ones_are_negative(h: Harness) -> None:
    assert [h.book.next_number(False) for _ in range(3)] == [0, 1, 2]
    assert h.book.next_number(True) == -3
    restored = GatewayJob("old", 41.0, "c1", PROMPT, {}, ["1"], user="alice", owner="alice")
    h.book.add(restored)
    assert h.book.next_number(False) == 42
    front = GatewayJob("older", -57.0, "c1", PROMPT, {}, ["1"], user="alice", owner="alice")
    h.book.add(front)
    assert h.book.next_number(False) == 58
    h.book.adopt(GatewayJob("adopted", 99.0, "c1", PROMPT, {}, ["1"], user="alice", owner="alice"), "att", "s1")
    assert h.book.next_number(False) == 100


def test_the_pool_is_given_the_workflow_its_inputs_and_the_owner(h: Harness) -> None:
    gj = h.post("a1", ALICE, inputs={"1": "/tmp/in.png"})
    call = h.call("a1")
    assert call["workflow"] == PROMPT and call["inputs"] == {"1": "/tmp/in.png"} and call["owner"] == "alice"
    assert gj.job is call["job"]
    h.end("a1", "succeeded")
    other = {"9": {"class_type": "SaveImage", "inputs": {}}}
    h.post("a2", ALICE, workflow=other)
    assert h.call("a2")["workflow"] == other and h.call("a2")["inputs"] is None


def test_an_older_pool_without_fair_share_is_not_given_an_owner() -> None:
    h = Harness(pool=OldPool())
    try:
        assert not h.book.pool_takes_owner and Harness().book.pool_takes_owner
        h.post("a1", ALICE)
        assert h.call("a1")["owner"] == "(not given)"
        h.jobs["a2"] = GatewayJob("a2", 5.0, "c1", PROMPT, {}, ["1"], user="alice", owner="alice")
        h.book.adopt(h.jobs["a2"], "att", "s1")
        h.settle()
        assert h.call("a2")["owner"] == "(not given)" and h.call("a2")["attempt"] == "att"
    finally:
        h.close()


def test_a_prompt_the_pool_refuses_ends_with_its_error_and_the_next_one_goes(h: Harness) -> None:
    h.pool.refuse = ConfigError("no server has node TestSleep")
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    frames = h.frames("a1")
    assert [k for k, _ in frames] == ["execution_error", "executing"]
    assert "no server has node TestSleep" in frames[0][1]["exception_message"] and frames[1][1]["node"] is None
    item = h.loop.run_until_complete(h.book.history_json(ALICE, "a1"))["a1"]
    assert item["status"]["status_str"] == "error" and not item["status"]["completed"]
    assert item["prompt"][1] == "a1" and item["status"]["messages"][-1][1]["prompt_id"] == "a1"
    assert h.handed() == ["a2"]  # its slot is free again, once
    h.post("a3", ALICE)
    assert h.handed() == ["a2"]
    ((args, kwargs),) = h.store.named("finish")
    assert args[:2] == ("a1", "failed") and kwargs["owner"] == "alice"


# -- a job's events and its end ---------------------------------------------------------------


def test_a_jobs_events_reach_its_users_socket_under_the_gateways_prompt_id(h: Harness) -> None:
    gj = h.post("a1", ALICE, keep=True, held=["v1"])
    h.event("a1", "started", raw={"prompt_id": "server-id", "timestamp": 5})
    assert gj.state == "running" and gj.server == "s1"
    ((args, kwargs),) = h.store.named("set_state")
    assert args == ("a1", "running") and kwargs["started"] == gj.started_at is not None
    h.event("a1", "cached", nodes=("1",))
    h.event("a1", "cached", nodes=("1",))  # told once
    h.event("a1", "executing", node="2")
    h.event("a1", "preview", data=b"\x00\x00\x00\x01png")  # a preview is of the node running now
    h.event("a1", "progress", node="2", value=3, max=10)
    h.event("a1", "progress", node="7", value=1, max=10)  # a node inside it reports
    h.event("a1", "preview", data=b"\x00\x00\x00\x01jpg")
    out = OutputFile("x_00001_.png", "sub", "output")
    h.event("a1", "output", node="3", files=(out,))
    assert h.kinds("a1") == ["execution_start", "execution_cached", "executing", "progress", "progress", "executed"]
    assert h.frames("a1")[0][1] == {"prompt_id": "a1", "timestamp": 5}
    assert all(keep for key, _, _, keep in h.relay.frames if key == gj.key)  # kept for the client's next socket
    assert h.relay.previews == [(("alice", "c1"), b"\x00\x00\x00\x01png", "a1", "2"), (("alice", "c1"), b"\x00\x00\x00\x01jpg", "a1", "7")]
    assert h.book.files == {("output", "sub", "x_00001_.png"): "s1"}
    ((args, _),) = h.store.named("note_files")
    assert args == ("a1", [(("output", "sub", "x_00001_.png"), "s1")])
    states = [d for key, kind, d, _ in h.relay.frames if kind == "progress_state"]
    assert states and states[-1]["nodes"]["2"]["value"] == 3
    assert h.book.remaining == 1
    result = JobResult("server-id", "s1", {"3": [out]}, 1, 1.0)
    h.end("a1", "succeeded", result=result)
    ends = [k for k, d in h.frames("a1") if k.startswith("execution_") and k not in ("execution_start", "execution_cached")]
    assert ends == ["execution_success"]
    assert h.frames("a1")[-1] == ("executing", {"node": None, "prompt_id": "a1"})
    last_state = [d for key, kind, d, _ in h.relay.frames if kind == "progress_state"][-1]
    assert last_state["nodes"]["2"]["state"] == "finished"  # the node running last is finished before the success
    assert h.released == [["v1"]] and gj.held == []
    history = h.loop.run_until_complete(h.book.history_json(ALICE, "a1"))
    assert history["a1"]["outputs"] == {"3": {"images": [{"filename": "x_00001_.png", "subfolder": "sub", "type": "output"}]}}
    assert history["a1"]["status"]["status_str"] == "success"
    ((args, kwargs),) = h.store.named("finish")
    assert args[0] == "a1" and args[1] == "succeeded" and args[3] == [(("output", "sub", "x_00001_.png"), "s1")]
    assert args[2] == history["a1"] and kwargs["keep"] == h.book.history.max_items
    assert kwargs["owner"] == "alice" and kwargs["client_id"] == "c1" and kwargs["replica"] == "replica-1"
    assert kwargs["started"] == gj.started_at and kwargs["created"] == gj.created
    assert ("ended", "succeeded") in h.metrics.seen
    assert h.book.remaining == 0 and _remaining(h) == 0
    h.event("a1", "executing", node="3")  # late: nothing more for the client
    assert h.frames("a1")[-1] == ("executing", {"node": None, "prompt_id": "a1"})


def test_a_jobs_end_is_told_once_its_history_is_committed(h: Harness) -> None:
    h.keeper.hold = True
    h.post("a1", ALICE)
    h.event("a1", "started")
    h.end("a1", "failed", error=RuntimeError("out of memory"))
    assert h.kinds("a1") == ["execution_start"] and "a1" in h.book.active  # not committed yet
    assert h.loop.run_until_complete(h.book.history_json(ALICE, "a1")) == {}
    assert not h.book.cancel_by_id("a1", ALICE)  # ended: nothing to cancel or delete
    h.book.delete_pending(["a1"], ALICE)
    assert h.store.named("request_cancel") == [] and h.store.named("delete_prompt") == []
    h.keeper.commit()
    assert h.kinds("a1") == ["execution_start", "execution_error", "executing"]
    assert h.frames("a1")[1][1]["exception_message"] == "out of memory"
    assert "a1" not in h.book.active and "a1" in h.loop.run_until_complete(h.book.history_json(ALICE))


def test_a_job_whose_server_closing_message_was_seen_keeps_it_in_history(h: Harness) -> None:
    h.post("a1", ALICE)
    h.event("a1", "started", raw={"prompt_id": "srv", "timestamp": 1})
    # Known from the server's message only (a custom node's text list beside an image entry
    # that names its file only): /view finds the file where the job ran.
    h.event("a1", "output", node="3", raw={"node": "3", "output": {"images": [{"filename": "a.png"}], "text": ["hello"]}, "prompt_id": "srv"})
    h.event("a1", "output", node="4", raw={"node": "4", "output": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
                                           "prompt_id": "srv"})  # a preview node's file
    h.event("a1", "failed", raw={"prompt_id": "srv", "exception_message": "boom", "exception_type": "X", "node_id": "3"})
    h.end("a1", "failed", error=RuntimeError("boom"))
    item = h.loop.run_until_complete(h.book.history_json(ALICE, "a1"))["a1"]
    assert item["status"]["messages"][-1][0] == "execution_error" and item["status"]["messages"][-1][1]["prompt_id"] == "a1"
    assert h.book.files == {("output", "", "a.png"): "s1", ("temp", "", "p.png"): "s1"}
    assert item["prompt"][1] == "a1"
    end = [d for k, d in h.frames("a1") if k == "execution_error"]
    assert [e["exception_message"] for e in end] == ["boom"] and end[0]["node_id"] == "3"


def test_a_job_moved_to_another_server_is_one_job_to_its_client(h: Harness) -> None:
    gj = h.post("a1", ALICE)
    h.event("a1", "started", raw={"prompt_id": "p1", "timestamp": 1})
    h.event("a1", "cached", nodes=("1",), raw={"nodes": ["1"], "prompt_id": "p1", "timestamp": 1})
    h.event("a1", "retrying", server="s1", from_server="s1", to_server="s2", reason="lost")
    assert gj.server == "s2" and ("moved", "s1") in h.metrics.seen
    h.event("a1", "started", server="s2", raw={"prompt_id": "p2", "timestamp": 2})
    h.event("a1", "succeeded", server="s2", raw={"prompt_id": "p2", "timestamp": 3})
    h.end("a1", "succeeded", server="s2", result=JobResult("p2", "s2", {}, 2, 1.0))
    assert h.kinds("a1") == ["execution_start", "execution_cached", "execution_success", "executing"]
    item = h.loop.run_until_complete(h.book.history_json(ALICE, "a1"))["a1"]
    # The history is the last attempt's: its start, its end (not the first server's cached).
    assert [m[0] for m in item["status"]["messages"]] == ["execution_start", "execution_success"]
    assert item["status"]["status_str"] == "success" and item["status"]["completed"]
    assert item["status"]["messages"][0][1] == {"prompt_id": "a1", "timestamp": 2}


def test_a_job_starting_where_our_previous_job_still_shows_running_waits_for_its_end(h: Harness) -> None:
    """Clients see jobs end and start in the order the server ran them: a job started on a
    server where another of ours still shows running is held until that one's end is told,
    its own end too if it comes first."""
    h.capacity = 2
    h.post("a1", ALICE)
    h.post("b1", BOB, client="c2")
    h.event("a1", "started", server="s1")
    h.event("b1", "started", server="s1")
    h.event("b1", "executing", server="s1", node="2")
    assert h.kinds("b1") == []
    b_out = OutputFile("b.png", "", "output")
    h.end("b1", "succeeded", result=JobResult("x", "s1", {"9": [b_out]}, 1, 1.0))
    assert h.kinds("b1") == [] and "b1" in h.book.active
    h.end("a1", "succeeded", result=JobResult("y", "s1", {}, 1, 1.0))
    order = [(data["prompt_id"], kind) for _, kind, data, _ in h.relay.frames if kind != "progress_state"]
    assert order == [("a1", "execution_start"), ("a1", "execution_success"), ("a1", "executing"),
                     ("b1", "execution_start"), ("b1", "executing"), ("b1", "execution_success"), ("b1", "executing")]
    assert h.book.active == {} and len(h.store.named("finish")) == 2
    b_item = h.loop.run_until_complete(h.book.history_json(BOB, "b1"))["b1"]
    assert b_item["outputs"] == {"9": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]}}
    assert h.book.files[("output", "", "b.png")] == "s1"
    # A job on another server is not held.
    h.post("a2", ALICE)
    h.post("a3", ALICE)
    h.event("a2", "started", server="s1")
    h.event("a3", "started", server="s2")
    assert h.kinds("a3") == ["execution_start"]


def _a2_started_while_a1s_end_waits_for_its_commit(h: Harness, status: str, **end: Any) -> None:
    """a1 ended ``status`` on s1 and its history item is not committed yet; a2 started there."""
    h.capacity = 2
    h.keeper.hold = True
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    h.event("a1", "started", server="s1")
    h.end("a1", status, **end)
    h.event("a2", "started", server="s1")


def test_a_job_starting_where_ours_ended_is_told_after_that_end_which_waits_for_its_commit(h: Harness) -> None:
    """As ComfyUI tells them (transcripts.json: the interrupted prompt's end, then the next
    prompt's start): an end is told once its history is committed, and the next job on that
    server must not overtake it meanwhile."""
    _a2_started_while_a1s_end_waits_for_its_commit(h, "cancelled")
    h.event("a2", "executing", server="s1", node="2")
    assert h.kinds("a2") == []
    h.keeper.commit()
    order = [(data["prompt_id"], kind) for _, kind, data, _ in h.relay.frames if kind != "progress_state"]
    assert order == [("a1", "execution_start"), ("a1", "execution_interrupted"), ("a1", "executing"),
                     ("a2", "execution_start"), ("a2", "executing")]


def test_a_job_held_behind_an_end_whose_commit_failed_goes_on(h: Harness) -> None:
    _a2_started_while_a1s_end_waits_for_its_commit(h, "failed", error=RuntimeError("boom"))
    assert h.kinds("a2") == []
    h.keeper.fail()  # the database refused the write (logged by the keeper)
    assert h.kinds("a2") == ["execution_start"]
    assert h.kinds("a1") == ["execution_start"] and "a1" in h.book.active  # unfinished: taken up after a restart


def test_an_end_goes_to_the_socket_its_client_had_when_the_job_ended(h: Harness) -> None:
    """ComfyUI-for-Nuke closes its socket right after a cancel and opens a new one, with the
    same clientId, for its next run: the cancelled run's end, told after its commit, must not
    reach that new socket (CfN would take it for the new run's end)."""
    h.keeper.hold = True
    h.relay.sockets[ALICE_C1] = "first socket"
    h.post("a1", ALICE)
    h.event("a1", "started")
    h.relay.sockets[ALICE_C1] = None  # closed after the cancel
    h.end("a1", "cancelled")
    h.relay.sockets[ALICE_C1] = "second socket"  # opened before the commit
    h.keeper.commit()
    assert h.kinds("a1") == ["execution_start"]
    h.post("a2", ALICE)
    h.event("a2", "started")
    h.end("a2", "succeeded", result=JobResult("x", "s1", {}, 1, 1.0))
    h.keeper.commit()
    assert h.kinds("a2") == ["execution_start", "execution_success", "executing"]
    # A prompt posted with no socket open: its end goes to whichever socket opens.
    h.relay.sockets[ALICE_C1] = None
    h.post("a3", ALICE, keep=True)
    h.end("a3", "failed", error=RuntimeError("boom"))
    h.relay.sockets[ALICE_C1] = "third socket"
    h.keeper.commit()
    assert h.kinds("a3") == ["execution_error", "executing"]


def test_jobs_held_behind_ours_on_a_server_go_on_one_after_another(h: Harness) -> None:
    h.capacity = 3
    for pid in ("a1", "a2", "a3"):
        h.post(pid, ALICE)
        h.event(pid, "started", server="s1")
    assert h.kinds("a2") == [] and h.kinds("a3") == []
    h.end("a1", "succeeded")
    assert h.kinds("a2") == ["execution_start"] and h.kinds("a3") == []  # a3 now waits for a2's end
    h.end("a2", "succeeded")
    assert h.kinds("a3") == ["execution_start"]


def test_a_job_queued_behind_ours_that_moves_to_another_server_is_not_held(h: Harness) -> None:
    h.capacity = 2
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    h.event("a1", "started", server="s1")
    h.event("a2", "queued", server="s1", position=1)
    h.event("a2", "retrying", server="s1", from_server="s1", to_server="s2", reason="lost")
    h.event("a2", "started", server="s2")
    assert h.kinds("a2") == ["execution_start"]


def test_a_job_held_behind_one_that_moves_goes_on_at_once(h: Harness) -> None:
    h.capacity = 2
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    h.event("a1", "started", server="s1")
    h.event("a2", "started", server="s1")
    assert h.kinds("a2") == []
    h.event("a1", "retrying", server="s1", from_server="s1", to_server="s2", reason="lost")
    assert h.kinds("a2") == ["execution_start"]


def test_each_attempt_is_recorded_in_the_store_before_its_post(h: Harness) -> None:
    h.post("a1", ALICE)
    record = h.call("a1")["on_attempt"]
    record("att-1", "s1", "reserved")
    record("att-1", "s1", "ended")
    assert h.store.named("reserve_attempt") == [(("att-1", "a1", "s1", "replica-1"), {})]
    assert h.store.named("end_attempt") == [(("att-1",), {})]
    assert h.metrics.seen == [("attempt", "s1")]


def test_an_adopted_copy_is_followed_where_it_runs_not_posted_again(h: Harness) -> None:
    gj = GatewayJob("a1", 7.0, "c1", PROMPT, {}, ["1"], user="alice", owner="alice", inputs={"1": "/in.png"})
    h.jobs["a1"] = gj
    h.book.adopt(gj, "att-1", "s2", client_id="dead-replica")
    h.settle()
    (call,) = h.pool.calls
    assert call["kind"] == "adopt" and call["server"] == "s2" and call["attempt"] == "att-1"
    assert call["client_id"] == "dead-replica" and call["owner"] == "alice" and call["workflow"] == PROMPT
    assert call["inputs"] == {"1": "/in.png"} and gj.job is call["job"] and gj.server == "s2" and gj.state == "submitted"
    call["on_attempt"]("att-2", "s3", "reserved")
    assert h.store.named("reserve_attempt") == [(("att-2", "a1", "s3", "replica-1"), {})]
    h.post("a2", ALICE)  # the adopted copy holds the one slot
    assert [c["kind"] for c in h.pool.calls] == ["adopt"]
    h.event("a1", "started", server="s2")
    h.end("a1", "succeeded", server="s2", result=JobResult("att-1", "s2", {}, 1, 1.0))
    assert h.kinds("a1") == ["execution_start", "execution_success", "executing"]
    assert [c["kind"] for c in h.pool.calls] == ["adopt", "submit"]
    h.book.adopt(GatewayJob("a3", 8.0, "c1", PROMPT, {}, ["1"], user="bob", owner="bob"), "att-3", "s1")
    assert h.pool.calls[-1]["client_id"] is None  # this pool's own client id
    h.pool.refuse = RuntimeError("server gone")
    h.jobs["a4"] = GatewayJob("a4", 9.0, "c9", PROMPT, {}, ["1"], user="bob", owner="bob")
    h.book.adopt(h.jobs["a4"], "att-4", "s1")
    h.settle()
    assert h.kinds("a4") == ["execution_error", "executing"] and h.frames("a4")[0][1]["exception_message"] == "server gone"




def test_adopted_copies_count_as_their_owners_turns(h: Harness) -> None:
    h.capacity = 3
    adopt_copy(h, "a0", ALICE)
    adopt_copy(h, "a00", ALICE)
    h.post("b1", BOB)  # the third slot
    h.post("a1", ALICE)
    h.post("b2", BOB)
    assert h.handed() == ["a0", "a00", "b1"]
    h.end("a0", "succeeded")
    assert h.handed()[-1] == "b2"  # alice has had two turns, bob one


def test_an_adopted_copy_is_one_turn(h: Harness) -> None:
    h.capacity = 2
    adopt_copy(h, "a0", ALICE)
    h.post("b1", BOB)
    h.post("a1", ALICE)
    h.post("b2", BOB)
    h.end("a0", "succeeded")
    assert h.handed()[-1] == "a1"  # one turn each: the older prompt goes first


@pytest.mark.parametrize("first, second", [("posted", "posted"), ("adopted", "posted"), ("posted", "adopted")])
def test_an_owners_turns_count_while_any_of_her_prompts_is_unfinished(h: Harness, first: str, second: str) -> None:
    h.capacity = 2
    for pid, how in (("a0", first), ("a1", second)):
        if how == "adopted":
            adopt_copy(h, pid, ALICE)
        else:
            h.post(pid, ALICE)
    h.end("a1", "succeeded")  # a0 still runs: alice is not idle
    h.post("b0", BOB)
    h.post("a2", ALICE)
    h.post("b1", BOB)
    h.end("b0", "succeeded")
    assert h.handed()[-1] == "b1"


@pytest.mark.parametrize("first", ["posted", "adopted"])
def test_an_owner_back_after_being_idle_is_not_held_back_by_past_turns(h: Harness, first: str) -> None:
    if first == "adopted":
        adopt_copy(h, "a0", ALICE)
    else:
        h.post("a0", ALICE)
    h.end("a0", "succeeded")  # alice idle: her turns are forgotten
    h.post("b1", BOB)
    h.post("b2", BOB)
    h.post("a1", ALICE)
    h.end("b1", "succeeded")
    assert h.handed()[-1] == "a1"


def test_history_keeps_the_newest_items_within_its_bounds() -> None:
    for bounds, kept in (({"history_items": 2}, ["a2", "a3"]), ({"history_bytes": 1}, ["a3"])):
        h = Harness(**bounds)
        try:
            for pid in ("a1", "a2", "a3"):
                h.post(pid, ALICE)
                h.end(pid, "succeeded", result=JobResult(pid, "s1", {"9": [OutputFile(pid + ".png", "", "output")]}, 1, 1.0))
            assert list(h.loop.run_until_complete(h.book.history_json(ALICE))) == kept
            assert sorted(h.book.files) == [("output", "", pid + ".png") for pid in kept]  # /view: the evicted ones' files gone
            assert h.store.named("finish")[-1][1]["keep"] == bounds.get("history_items", h.book.history.max_items)
        finally:
            h.close()


def test_history_pages_as_comfyui_does(h: Harness) -> None:
    for pid in ("a1", "a2", "a3"):
        h.post(pid, ALICE)
        h.end(pid, "succeeded")
    run = h.loop.run_until_complete
    assert list(run(h.book.history_json(ALICE, max_items=1))) == ["a3"]
    assert list(run(h.book.history_json(ALICE, max_items=1, offset=1))) == ["a2"]
    assert list(run(h.book.history_json(ALICE, offset=1))) == ["a2", "a3"]


def test_a_prompt_deleted_in_the_pool_leaves_no_file_to_view(h: Harness) -> None:
    h.post("a1", ALICE)
    h.event("a1", "output", node="3", files=(OutputFile("gone.png", "", "output"),))
    h.book.delete_pending(["a1"], ALICE)
    h.end("a1", "cancelled")
    assert h.book.files == {} and h.kinds("a1") == ["executed"]


def test_a_socket_opened_takes_over_only_its_own_prompts_kept_events(h: Harness) -> None:
    h.capacity = 3
    mine = h.post("a1", ALICE, keep=True)
    other_client = h.post("a2", ALICE, client="c2", keep=True)
    other_user = h.post("b1", BOB, keep=True)
    h.book.socket_opened(("alice", "c1"))
    assert (mine.keep, other_client.keep, other_user.keep) == (False, True, True)
    h.event("a1", "started")
    assert [keep for key, kind, _, keep in h.relay.frames if key == ("alice", "c1")] == [False]


def test_a_prompt_whose_client_opened_a_socket_before_the_book_took_it_is_live_only(h: Harness) -> None:
    """The POST decides ``keep`` (no socket yet), then awaits the store's commit; a socket the
    client opened meanwhile must count as opened after the post (``socket_opened`` found no
    such prompt then): its events are live, and a later socket never gets them."""
    h.capacity = 2
    h.relay.sockets[ALICE_C1] = "opened during the commit"
    early = h.post("a1", ALICE, keep=True)
    assert early.keep is False
    h.relay.sockets[ALICE_C1] = None
    late = h.post("a2", ALICE, keep=True)  # no socket when the book takes it: kept
    assert late.keep is True
    h.event("a1", "started")
    h.event("a2", "started", server="s2")
    assert [(d["prompt_id"], keep) for key, _, d, keep in h.relay.frames if key == ALICE_C1] == [("a1", False), ("a2", True)]


def test_events_that_come_after_the_gateway_loop_closed_are_dropped_quietly(h: Harness) -> None:
    h.post("a1", ALICE)
    on_event = h.call("a1")["on_event"]
    h.loop.close()
    on_event(JobEvent("started", "s1"))  # the pool's thread must not crash
    h.jobs["a1"].job.end("succeeded", "s1")  # type: ignore[union-attr]


def test_queue_remaining_is_told_to_every_socket_and_counts_the_whole_service(h: Harness) -> None:
    h.post("a1", ALICE)
    assert h.relay.broadcasts[-1] == ("status", {"status": {"exec_info": {"queue_remaining": 1}}})
    assert h.book.status_data() == {"status": {"exec_info": {"queue_remaining": 1}}}
    before = h.book.changes
    h.book.shared_remaining = 7
    h.book.queue_changed()
    assert h.relay.broadcasts[-1][1]["status"]["exec_info"]["queue_remaining"] == 7 and h.book.changes == before + 1
