"""The gateway's job book alone (see tests/test_book.py): a user's prompts are theirs to
delete, cancel, interrupt and read back, and stopping the gateway tells each client each end
once. Written against surviving mutants of book.py (docs/TESTING.md)."""

from __future__ import annotations

from typing import List

from book_fakes import ADMIN, ALICE, BOB, Harness, h  # noqa: F401 (h: the fixture)
from book_fakes import remaining as _remaining

from comfy_cluster.gateway.auth import User
from comfy_cluster.reports import JobResult


# -- a user's jobs are theirs: delete, cancel, interrupt, history -------------------------------


def test_deleting_a_waiting_prompt_leaves_no_trace_and_tells_its_client_nothing(h: Harness) -> None:
    h.post("a1", ALICE, held=["v"])
    h.post("a2", ALICE)
    h.post("a3", ALICE)
    h.book.delete_pending([12, ["x"], "nope", "a2"], ALICE)
    assert h.kinds("a2") == [] and "a2" not in h.book.active and _remaining(h) == 2
    assert h.store.named("delete_prompt") == [(("a2",), {})] and h.store.named("finish") == []
    h.end("a1", "succeeded")
    assert h.handed() == ["a1", "a3"]  # never handed to the pool
    assert "a2" not in h.loop.run_until_complete(h.book.history_json(ALICE))
    broadcasts = len(h.relay.broadcasts)
    h.book.delete_pending(["a3"], ALICE)  # running in the pool (submitted): dropped from the queue, cancelled
    assert "a3" not in h.book.active and h.jobs["a3"].job.cancels == 1  # type: ignore[union-attr]
    assert len(h.relay.broadcasts) == broadcasts + 1
    h.book.delete_pending(["a3", "a1"], ALICE)  # gone, ended: nothing changes, nothing told
    assert len(h.relay.broadcasts) == broadcasts + 1
    h.end("a3", "cancelled")
    assert h.kinds("a3") == [] and "a3" not in h.loop.run_until_complete(h.book.history_json(ALICE))
    assert h.store.named("delete_prompt") == [(("a2",), {}), (("a3",), {})] and h.store.named("finish") == [(("a1",) + h.store.named("finish")[0][0][1:], h.store.named("finish")[0][1])]


def test_a_deleted_prompt_whose_job_ends_later_leaves_its_owner_free_to_post_again(h: Harness) -> None:
    h.post("a1", ALICE)
    h.book.delete_pending(["a1"], ALICE)
    h.end("a1", "cancelled")
    h.post("b1", BOB)
    h.post("a2", ALICE)
    h.end("b1", "succeeded")
    assert h.handed() == ["a1", "b1", "a2"]


def test_a_running_prompt_is_not_deleted_only_cancelled(h: Harness) -> None:
    h.post("a1", ALICE)
    h.event("a1", "started")
    h.book.delete_pending(["a1"], ALICE)
    h.book.clear_pending(ALICE)
    assert "a1" in h.book.active and h.jobs["a1"].job.cancels == 0  # type: ignore[union-attr]


def _alice_running_one_of_three_bob_waiting(h: Harness) -> None:
    """Room for two in the pool: Alice's a1 runs, a2 is handed to the pool, a3 waits; Bob's b1
    waits."""
    h.capacity = 2
    for pid in ("a1", "a2", "a3"):
        h.post(pid, ALICE)
    h.post("b1", BOB)
    h.event("a1", "started")


def test_one_user_cannot_delete_cancel_or_interrupt_anothers_prompts(h: Harness) -> None:
    _alice_running_one_of_three_bob_waiting(h)
    h.book.delete_pending(["a2", "a3", "a1"], BOB)
    h.book.clear_pending(BOB)
    assert not h.book.cancel_by_id("a1", BOB) and not h.book.cancel_by_id("a3", BOB)
    h.book.interrupt({}, BOB)
    h.book.interrupt({"prompt_id": "a1"}, BOB)
    h.book.interrupt({"delete": ["a1"]}, BOB)
    h.book.interrupt({"client_id": "c1"}, BOB)
    assert set(h.book.active) == {"a1", "a2", "a3"} and h.jobs["a1"].job.cancels == 0  # type: ignore[union-attr]
    assert h.store.named("request_cancel") == [] and h.store.named("delete_prompt") == [(("b1",), {})]  # bob's own: his to clear
    # An admin may manage anyone's.
    assert h.book.cancel_by_id("a3", ADMIN) and "a3" not in h.book.active


def test_clear_drops_the_viewers_prompts_not_yet_running(h: Harness) -> None:
    _alice_running_one_of_three_bob_waiting(h)
    h.book.clear_pending(ALICE)
    assert set(h.book.active) == {"a1", "b1"}
    assert sorted(a[0] for a, _ in h.store.named("delete_prompt")) == ["a3"]
    # a1 runs: left alone; a2 was handed to the pool: its job is cancelled there.
    assert h.store.named("request_cancel") == [(("a2",), {})]
    assert h.jobs["a1"].job.cancels == 0 and h.jobs["a2"].job.cancels == 1  # type: ignore[union-attr]
    h.book.clear_pending(ALICE)
    assert _remaining(h) == 2


def test_cancel_stops_a_running_prompt_where_it_runs_once(h: Harness) -> None:
    h.post("a1", ALICE)
    h.event("a1", "started")
    assert not h.book.cancel_by_id("zzz", ALICE)
    assert h.book.cancel_by_id("a1", ALICE)
    assert h.jobs["a1"].job.cancels == 1 and h.store.named("request_cancel") == [(("a1",), {})]  # type: ignore[union-attr]
    assert not h.book.cancel_by_id("a1", ALICE)  # asked already
    h.end("a1", "cancelled")
    assert [k for k in h.kinds("a1") if k.startswith("execution_") and k != "execution_start"] == ["execution_interrupted"]
    assert not h.book.cancel_by_id("a1", ALICE)  # ended


def test_cancel_of_a_prompt_between_a_moved_attempts_stops_it(h: Harness) -> None:
    """A prompt that started once and moved (waiting for its next server) is cancelled, not
    deleted: it has a history."""
    h.post("a1", ALICE)
    h.event("a1", "started")
    h.event("a1", "retrying", from_server="s1", to_server="s2", reason="lost")
    h.jobs["a1"].state = "submitted"
    assert h.book.cancel_by_id("a1", ALICE) and h.jobs["a1"].job.cancels == 1  # type: ignore[union-attr]
    assert "a1" in h.book.active


def test_cancel_of_a_waiting_prompt_removes_it(h: Harness) -> None:
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    assert h.book.cancel_by_id("a2", ALICE)
    assert "a2" not in h.book.active and h.store.named("delete_prompt") == [(("a2",), {})]
    assert not h.book.cancel_by_id("a2", ALICE)


def test_a_cancel_asked_before_the_pool_took_the_prompt_reaches_its_job(h: Harness) -> None:
    h.executor.deferred = []
    gj = h.post("a1", ALICE)
    gj.started = True  # as a restored prompt that had started
    assert h.book.cancel_by_id("a1", ALICE)
    h.executor.run_deferred()
    h.settle()
    assert gj.job is not None and gj.job.cancels == 1
    h.end("a1", "cancelled", server=None)  # it never reached a server
    assert h.kinds("a1") == ["execution_interrupted", "executing"] and h.book.active == {}


def test_interrupt_stops_the_named_or_the_clients_running_prompts_of_the_viewer(h: Harness) -> None:
    h.capacity = 6
    clients = {"a1": "c2", "a2": "c1", "a3": "c1", "a4": "c1", "a5": "c2", "a6": "c2"}
    for pid, client in clients.items():
        h.post(pid, ALICE, client=client)
        if pid != "a4":
            h.event(pid, "started", server=pid)

    def cancelled() -> List[str]:
        return [p for p in clients if h.jobs[p].job.cancels]  # type: ignore[union-attr]

    h.book.interrupt({"prompt_id": "nothing", "client_id": "c1"}, ALICE)  # names none: stops none
    assert cancelled() == []
    h.book.interrupt({"prompt_id": "a5"}, ALICE)
    assert cancelled() == ["a5"]
    h.book.interrupt({"delete": [5, "a6"]}, ALICE)
    assert cancelled() == ["a5", "a6"]
    h.book.interrupt({"client_id": "c1"}, ALICE)
    assert cancelled() == ["a2", "a3", "a5", "a6"]  # a4 does not run yet
    assert sorted(a[0] for a, _ in h.store.named("request_cancel")) == ["a2", "a3", "a5", "a6"]


def test_interrupt_without_a_body_stops_every_running_prompt_of_the_viewer(h: Harness) -> None:
    h.capacity = 3
    h.post("b1", BOB)
    h.post("a1", ALICE)
    h.post("a2", ALICE, client="c2")
    for pid in ("b1", "a1", "a2"):
        h.event(pid, "started", server=pid)
    h.book.interrupt(["not", "a", "dict"], ALICE)
    assert [h.jobs[p].job.cancels for p in ("b1", "a1", "a2")] == [0, 1, 1]  # type: ignore[union-attr]


def test_history_is_the_viewers_own(h: Harness) -> None:
    h.capacity = 2
    h.post("a1", ALICE)
    h.post("b1", BOB)
    h.end("a1", "succeeded", result=JobResult("x", "s1", {}, 1, 1.0))
    h.end("b1", "succeeded", result=JobResult("y", "s1", {}, 1, 1.0))
    run = h.loop.run_until_complete
    assert list(run(h.book.history_json(ALICE))) == ["a1"] and list(run(h.book.history_json(ADMIN))) == ["a1", "b1"]
    assert run(h.book.history_json(BOB, "a1")) == {} and list(run(h.book.history_json(BOB, max_items=5))) == ["b1"]
    # An item another replica ended: read from the store, shown to its owner only.
    h.store.rows["z1"] = {"owner": "alice", "item": {"outputs": {}}}
    h.store.rows["z2"] = {"owner": None, "item": {"outputs": {}}}
    assert run(h.book.history_json(ALICE, "z1")) == {"z1": {"outputs": {}}} and run(h.book.history_json(BOB, "z1")) == {}
    assert run(h.book.history_json(User("default"), "z2")) == {"z2": {"outputs": {}}}
    assert run(h.book.history_json(ALICE, "nothing")) == {}
    count, rows = run(h.book.history_rows(limit=3))
    assert count == 2 and rows[0]["kwargs"] == {"limit": 3}
    assert run(h.book.history_row("z1")) == h.store.rows["z1"]
    run(h.book.post_history({"delete": ["a1"]}, BOB))
    run(h.book.post_history({"clear": True}, BOB))
    assert list(run(h.book.history_json(ADMIN))) == ["a1"] and h.store.named("delete_history") == [((["b1"],), {})]
    run(h.book.post_history({"delete": ["a1", 3]}, ALICE))
    assert run(h.book.history_json(ADMIN)) == {} and h.store.named("delete_history")[-1] == ((["a1"],), {})
    run(h.book.post_history({"clear": True}, ALICE))
    assert len(h.store.named("delete_history")) == 2  # nothing gone: nothing written


# -- stopping ---------------------------------------------------------------------------------


def test_stopping_tells_each_client_the_end_of_each_prompt_once_and_cancels_them(h: Harness) -> None:
    h.post("a1", ALICE)
    h.post("a2", ALICE)
    h.post("b1", BOB, client="c2")
    h.book.delete_pending(["b1"], BOB)
    h.event("a1", "started")
    h.book.stop_all("the gateway is stopping")
    h.event("a1", "executing", node="2")  # the pool's last words: the client was told the end
    h.book.delete_pending(["a1", "a2"], ALICE)
    for pid in ("a1", "a2"):
        frames = h.frames(pid)
        ends = [d for k, d in frames if k == "execution_error"]
        assert len(ends) == 1 and ends[0]["exception_type"] == "GatewayStopped"
        assert ends[0]["exception_message"] == "the gateway is stopping" and frames[-1] == ("executing", {"node": None, "prompt_id": pid})
    assert h.kinds("b1") == []  # deleted before: nothing to tell
    assert h.jobs["a1"].job.cancels == 1 and h.handed() == ["a1"]  # type: ignore[union-attr]
    h.end("a1", "cancelled")  # the pool confirms: the client was told already
    assert [k for k in h.kinds("a1") if k.startswith("execution_") and k != "execution_start"] == ["execution_error"]
    assert h.book.active == {} and sorted(a[:2] for a, _ in h.store.named("finish")) == [("a1", "cancelled"), ("a2", "cancelled")]
