"""The record of every copy of a job put on a server (``comfy_cluster/attempt.py``), on its own.

The ledger is what keeps "runs at least once" and "nothing left behind" honest: a copy is
counted on its server from before its POST until its end there is confirmed, and only the
copies whose server went out of reach are handed to the clean-up. These tests drive it with
a recording status monitor and fake submit functions (no server, no sleeps); written
against the mutants of ``attempt.py`` the pool-level tests never reached (docs/TESTING.md).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from helpers import sleep_workflow

from comfy_cluster.attempt import Attempt, AttemptPhase, CopyRemover, Ledger, PostGate, cancel_on_server, remove_copies
from comfy_cluster.errors import ServerError
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.policy import follow_timeout
from comfy_cluster.warm import Warmth


class Monitor:
    """Records what the ledger tells the status monitor; ``cold`` is its answer to a reservation."""

    def __init__(self, cold: bool = False) -> None:
        self.cold = cold
        self.reserved: List[Tuple[str, Any]] = []
        self.released: List[Tuple[str, Dict[str, Any]]] = []

    def job_reserved(self, name: str, warmth: Any = None) -> bool:
        self.reserved.append((name, warmth))
        return self.cold

    def job_released(self, name: str, **kw: Any) -> None:
        self.released.append((name, kw))


def _attempt(server: str, number: int = 1, workflow: Optional[Dict[str, Any]] = None, **kw: Any) -> Attempt:
    return Attempt(JobControl(Job(workflow or sleep_workflow())), server, number, **kw)


def test_an_attempt_starts_reserved_with_a_fresh_prompt_id_of_its_own():
    control = JobControl(Job(sleep_workflow()))
    first, second = Attempt(control, "a", 1), Attempt(control, "b", 2)
    assert first.prompt_id != second.prompt_id and len(first.prompt_id) == len(second.prompt_id) == 36
    assert (first.control, first.job, first.server, first.number) == (control, control.job, "a", 1)
    assert (first.phase, first.lost_at, first.posted, first.cold, first.client_id) == (AttemptPhase.RESERVED, None, False, False, None)
    given = "0123456789abcdef0123456789abcdef0123"
    adopted = Attempt(control, "c", 3, given, "their-client")  # one recorded by a process that died
    assert (adopted.prompt_id, adopted.client_id, adopted.number) == (given, "their-client", 3)
    assert repr(adopted) == "<Attempt 01234567 #3 on c reserved>"


def test_the_ledger_counts_each_copy_on_its_server_and_learns_whether_it_is_cold():
    monitor = Monitor(cold=True)
    ledger = Ledger(["a", "b"], monitor, lambda: None)  # type: ignore[arg-type]
    loader = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}}}
    on_a, on_b, also_a = _attempt("a", workflow=loader), _attempt("b"), _attempt("a")
    for attempt in (on_a, on_b, also_a):
        ledger.reserve(attempt)
    assert (ledger.count("a"), ledger.count("b")) == (2, 1)
    assert monitor.reserved[0] == ("a", on_a.control.warmth) and isinstance(monitor.reserved[0][1], Warmth)
    assert on_a.control.warmth.models  # what the job loads reaches the monitor, not an empty warmth
    assert [name for name, _ in monitor.reserved] == ["a", "b", "a"]
    assert on_a.cold and on_b.cold  # the monitor's answer is kept on the copy
    warm = Ledger(["a"], Monitor(cold=False), lambda: None)  # type: ignore[arg-type]
    kept = _attempt("a")
    kept.cold = True
    warm.reserve(kept)
    assert kept.cold is False
    assert set(map(id, ledger.live())) == {id(on_a), id(on_b), id(also_a)}
    assert set(map(id, ledger.live("a"))) == {id(on_a), id(also_a)} and ledger.live("b") == [on_b]
    assert ledger.unconfirmed("a") == [] and ledger.unconfirmed("b") == []


def test_only_copies_out_of_reach_are_left_to_the_clean_up_and_a_release_is_told_once():
    monitor = Monitor(cold=True)
    woken: List[int] = []
    ledger = Ledger(["a", "b"], monitor, lambda: woken.append(1))  # type: ignore[arg-type]
    lost, running, elsewhere = _attempt("a"), _attempt("a"), _attempt("b")
    for attempt in (lost, running, elsewhere):
        ledger.reserve(attempt)
    ledger.lose(lost, 7.5)
    ledger.lose(elsewhere, 8.0)
    assert ledger.unconfirmed("a") == [lost] and ledger.unconfirmed("b") == [elsewhere]
    assert (lost.phase, lost.lost_at, running.phase) == (AttemptPhase.UNCONFIRMED, 7.5, AttemptPhase.RESERVED)
    heard: List[Tuple[str, str]] = []
    lost.control.job._on_attempt = lambda pid, server, phase: heard.append((server, phase))
    assert ledger.release(lost, seconds=3.0, ok=True) is True
    assert monitor.released == [("a", {"seconds": 3.0, "ok": True, "cold": True})]
    assert heard == [("a", "ended")] and woken == [1]
    assert ledger.release(lost) is False and woken == [1] and len(monitor.released) == 1
    ledger.lose(lost, 9.0)  # released already: nothing to lose
    assert ledger.unconfirmed("a") == [] and lost.lost_at == 7.5 and ledger.live("a") == [running]


def test_a_batch_cancel_waits_for_posts_on_their_way_and_not_once_they_landed():
    gate = PostGate(patience=60.0)
    done = threading.Event()

    def cancel() -> None:
        gate.quiet()
        done.set()

    quiet_now = threading.Thread(target=cancel, daemon=True)
    quiet_now.start()
    quiet_now.join(10)  # no POST on its way: returns at once (the bound only rules out a hang)
    assert done.is_set()
    done.clear()
    with gate:
        with gate:  # two POSTs on their way
            waiting = threading.Thread(target=cancel, daemon=True)
            waiting.start()
        assert not done.wait(0.05)  # one still on its way
    waiting.join(10)  # woken by the last POST landing, not by the 60 s patience
    assert done.is_set()


def test_a_batch_cancel_gives_up_waiting_for_a_post_after_its_patience():
    gate = PostGate(patience=0.01)
    done = threading.Event()
    with gate:
        waiting = threading.Thread(target=lambda: (gate.quiet(), done.set()), daemon=True)
        waiting.start()
        waiting.join(10)  # the bound only rules out waiting for ever
        assert done.is_set()


class Submit:
    """The probe executor, recorded; ``refuse`` plays one shut down by close()."""

    def __init__(self) -> None:
        self.jobs: List[Callable[[], None]] = []
        self.refuse = False

    def __call__(self, fn: Callable[[], None]) -> None:
        if self.refuse:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.jobs.append(fn)


class Client:
    """What remove_copies asks of a server: this one shows an empty queue."""

    timeout = (1.0, 1.0)

    def __init__(self) -> None:
        self.deleted: List[List[str]] = []

    def delete_pending(self, ids: List[str], timeout: Any = None) -> None:
        self.deleted.append(list(ids))

    def queue(self, timeout: Any = None) -> Tuple[List[str], List[str]]:
        return [], []

    def interrupt(self, prompt_id: str, timeout: Any = None) -> None:
        raise AssertionError("nothing runs")


def test_copies_are_removed_by_one_clean_up_per_server_at_a_time_and_none_after_close():
    monitor = Monitor()
    ledger = Ledger(["a", "b"], monitor, lambda: None)  # type: ignore[arg-type]
    clients = {"a": Client(), "b": Client()}
    submit, closed = Submit(), threading.Event()
    remover = CopyRemover(clients, ledger, submit, lambda: 100.0, closed)  # type: ignore[arg-type]
    lost = _attempt("a")
    ledger.reserve(lost)
    ledger.lose(lost, 1.0)
    remover.schedule("a")
    remover.schedule("a")  # one runs already for a
    remover.schedule("b")
    assert len(submit.jobs) == 2
    submit.jobs[0]()  # the clean-up of a: its queue no longer holds the copy
    assert clients["a"].deleted == [[lost.prompt_id]] and ledger.live() == [] and monitor.released[0][0] == "a"
    assert clients["b"].deleted == []
    remover.schedule("a")  # done: a new outage gets a new clean-up
    assert len(submit.jobs) == 3
    submit.refuse = True
    remover.schedule("b")  # b's first clean-up has not run yet: no second one
    submit.jobs[1]()
    remover.schedule("b")  # the executor is shut down: nothing scheduled, and it says so by raising
    submit.refuse = False
    remover.schedule("b")  # a refused schedule does not leave the server marked as being cleaned
    assert len(submit.jobs) == 4
    closed.set()
    submit.jobs[2]()
    remover.schedule("a")
    assert len(submit.jobs) == 4


class Server:
    """A server as the clean-up sees it: it lists ``pending``/``running`` ids until told to
    drop them (``obeys``), answers with ``fail`` raised when set, and counts each request
    with the read timeout it was given."""

    timeout = (3.05, 300.0)  # the pool's request_timeout: a 300 s read

    def __init__(self, pending: List[str] = (), running: List[str] = (), obeys: bool = True) -> None:  # type: ignore[assignment]
        self.pending, self.running, self.obeys = list(pending), list(running), obeys
        self.fail: Optional[Exception] = None
        self.requests: List[Tuple[str, Any]] = []
        self.on_request: Callable[[], None] = lambda: None

    def _ask(self, what: str, timeout: Any) -> None:
        self.requests.append((what, timeout))
        self.on_request()
        if self.fail is not None:
            raise self.fail

    def delete_pending(self, ids: List[str], timeout: Any = None) -> None:
        self._ask("delete", timeout)
        if self.obeys:
            self.pending = [i for i in self.pending if i not in ids]

    def queue(self, timeout: Any = None) -> Tuple[List[str], List[str]]:
        self._ask("queue", timeout)
        return list(self.running), list(self.pending)

    def interrupt(self, prompt_id: str, timeout: Any = None) -> None:
        self._ask("interrupt:" + prompt_id, timeout)
        if self.obeys:
            self.running = [i for i in self.running if i != prompt_id]


def _lost_copies(server: str, n: int) -> Tuple[Ledger, List[Attempt]]:
    ledger = Ledger([server], Monitor(), lambda: None)  # type: ignore[arg-type]
    copies = [_attempt(server, i + 1) for i in range(n)]
    for a in copies:
        ledger.reserve(a)
        ledger.lose(a, 0.0)
    return ledger, copies


def test_a_copy_the_server_still_lists_stays_counted_until_it_is_gone():
    """Copies left by an outage are released only once the server's queue no longer lists
    them: one the server keeps (a delete or interrupt it did not act on) stays counted, in
    the pending list or the running one, and is tried again by the next clean-up."""

    ledger, (waiting, running) = _lost_copies("a", 2)
    deaf = Server(pending=[waiting.prompt_id], running=[running.prompt_id], obeys=False)
    assert _in_time(lambda: remove_copies(deaf, ledger, "a", lambda: 100.0, patience=0.3)) == 0  # type: ignore[arg-type]
    assert {a.prompt_id for a in ledger.unconfirmed("a")} == {waiting.prompt_id, running.prompt_id}
    assert ("interrupt:" + running.prompt_id) in [w for w, _ in deaf.requests]  # running: interrupted
    assert ("interrupt:" + waiting.prompt_id) not in [w for w, _ in deaf.requests]  # queued: deleted only
    deaf.obeys = True
    assert _in_time(lambda: remove_copies(deaf, ledger, "a", lambda: 100.0, patience=0.3)) == 2  # type: ignore[arg-type]
    assert ledger.live() == []


def test_the_clean_up_reads_are_bounded_like_a_followed_jobs_not_by_the_pools_request_timeout():
    """A server that takes connections but never answers holds a clean-up (a probe thread)
    for the follow timeout's read at most, never the pool's 300 s request timeout."""

    ledger, (copy,) = _lost_copies("a", 1)
    server = Server(running=[copy.prompt_id])
    assert remove_copies(server, ledger, "a", lambda: 100.0, patience=5.0) == 1  # type: ignore[arg-type]
    assert [w for w, _ in server.requests] == ["delete", "queue", "interrupt:" + copy.prompt_id, "queue"]
    assert {t for _, t in server.requests} == {follow_timeout(300.0)} and follow_timeout(300.0)[1] < 300.0
    server = Server(pending=["x"])
    assert cancel_on_server(server, "x") is True  # type: ignore[arg-type]
    assert {t for _, t in server.requests} == {follow_timeout(300.0)}


def test_a_clean_up_stops_at_close_whether_its_requests_fail_or_the_copy_stays():
    """Nothing reaches a server after close(): a clean-up that is retrying (its requests
    fail, or the copy is still listed) returns at its next pause once the pool closes,
    instead of trying again until its patience is over."""

    for failing in (True, False):
        ledger, (copy,) = _lost_copies("a", 1)
        server = Server(pending=[copy.prompt_id], obeys=False)
        if failing:
            server.fail = ServerError("a: 500", server="a", status=500)
        closed = threading.Event()
        server.on_request = closed.set  # the pool closes while the first request is under way
        assert remove_copies(server, ledger, "a", lambda: 100.0, closed=closed, patience=5.0) == 0  # type: ignore[arg-type]
        asked = [w for w, _ in server.requests]
        assert asked == (["delete"] if failing else ["delete", "queue", "queue"])
        assert ledger.unconfirmed("a") == [copy]  # left counted: not confirmed gone


def test_a_scheduled_clean_up_stops_retrying_when_the_pool_closes():
    ledger, (copy,) = _lost_copies("a", 1)
    server = Server(pending=[copy.prompt_id])
    server.fail = ServerError("a: 500", server="a", status=500)
    closed, submit = threading.Event(), Submit()
    server.on_request = closed.set  # the pool closes while the first try is under way
    CopyRemover({"a": server}, ledger, submit, lambda: 100.0, closed).schedule("a")  # type: ignore[arg-type]
    submit.jobs[0]()
    assert [w for w, _ in server.requests] == ["delete"] and ledger.unconfirmed("a") == [copy]


def _in_time(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread, its value handed back: a clean-up that waits for ever fails the
    test within the bound (which only rules out a hang) instead of hanging it."""
    out: List[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(8)
    assert out, "the clean-up did not return"
    return out[0]


def test_cancel_interrupts_only_a_running_copy_with_a_bounded_request():
    running = Server(running=["x"])
    assert cancel_on_server(running, "x", also_delete=["y", "x"]) is False  # type: ignore[arg-type]
    assert running.requests == [("delete", follow_timeout(300.0)), ("queue", follow_timeout(300.0)),
                                ("interrupt:x", follow_timeout(300.0))]


def test_a_clean_up_tries_again_after_a_failed_request_and_waits_for_an_interrupted_copy_to_leave():
    """Within one clean-up: a request that fails is tried again, and a copy interrupted while
    running is looked for again until it has left the queue (it takes a moment on a server)."""
    ledger, (copy,) = _lost_copies("a", 1)
    server = Server(running=[copy.prompt_id], obeys=False)
    tries: List[int] = []

    def first_fails_then_leaves() -> None:
        tries.append(1)
        server.fail = ServerError("a: 500", server="a", status=500) if len(tries) == 1 else None
        if len(tries) == 6:  # the interrupt takes effect between two looks
            server.running = []

    server.on_request = first_fails_then_leaves
    assert _in_time(lambda: remove_copies(server, ledger, "a", lambda: 100.0, patience=5.0)) == 1  # type: ignore[arg-type]
    assert ledger.live() == [] and [w for w, _ in server.requests][:2] == ["delete", "delete"]


def test_a_post_that_may_still_land_is_waited_for_on_the_pools_clock_and_an_unsent_copy_is_not():
    """A copy lost while its POST was on its way may reach the server's queue late: it is
    released only once POST_GRACE (2 s) has passed on the pool's clock since it was lost. A
    copy whose POST was never sent is released as soon as the queue does not list it."""
    ledger = Ledger(["a"], Monitor(), lambda: None)  # type: ignore[arg-type]
    posted, unsent = _attempt("a", 1), _attempt("a", 2)
    posted.posted = True
    for a in (posted, unsent):
        ledger.reserve(a)
        ledger.lose(a, 100.0)
    now = [101.0]
    server = Server()
    assert _in_time(lambda: remove_copies(server, ledger, "a", lambda: now[0], patience=0.3)) == 1  # type: ignore[arg-type]
    assert ledger.unconfirmed("a") == [posted]  # 1 s after: its POST may still land
    now[0] = 102.5
    assert _in_time(lambda: remove_copies(server, ledger, "a", lambda: now[0], patience=0.3)) == 1  # type: ignore[arg-type]
    assert ledger.live() == []
