"""The dispatcher alone (the pool's local queue: who gets the next free slot, how long a job
waits for a server, what leaves the queue and how), with fakes for its three decisions
(choose, start, end) and a clock that moves only when the test says. The pool-level promises
it keeps are tested over the mock in test_promises*.py; these pin the rules themselves."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from helpers import FakeClock, sleep_workflow, wait_until

from comfy_cluster.dispatcher import Choice, Dispatcher, Verdict
from comfy_cluster.errors import ComfyClusterError, ServerError
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.server_config import ServerConfig

pytestmark = pytest.mark.timeout(60)

SERVER = ServerConfig(name="a", url="http://127.0.0.1:9")
#: Bounds every wait for the dispatcher's thread: a hang only (its work here takes
#: milliseconds), kept short so that a mutant that hangs a test fails it soon.
BOUND = 10.0


@pytest.fixture(autouse=True)
def every_dispatcher_closed() -> Iterator[None]:
    """Each test closes its dispatcher: once it has, the dispatcher's thread ends (nothing of
    it runs after close())."""
    before = set(threading.enumerate())
    yield
    started = [t for t in threading.enumerate() if t not in before and t.name == "comfy-cluster-dispatch"]
    for thread in started:
        thread.join(BOUND)
    assert not [t for t in started if t.is_alive()], "a dispatcher's thread outlived its close()"


class Slots:
    """A cluster of ``free`` slots: choose says GO while one is free (taking it), else
    ``otherwise``; every start and end is recorded in order."""

    def __init__(self, free: int = 0, otherwise: Verdict = Verdict.WAIT, error: Optional[ComfyClusterError] = None) -> None:
        self.free = free
        self.otherwise = otherwise
        self.error = error
        self.lock = threading.Lock()
        self.started: "queue.Queue[str]" = queue.Queue()
        self.ended: "queue.Queue[Tuple[str, Optional[BaseException]]]" = queue.Queue()
        self.asked: List[str] = []
        self.accept = True

    def choose(self, job: JobControl) -> Choice:
        with self.lock:
            self.asked.append(name_of(job))
            if self.free > 0:
                self.free -= 1
                return Choice(Verdict.GO, SERVER)
        return Choice(self.otherwise, error=self.error)

    def start(self, job: JobControl, server: ServerConfig) -> bool:
        self.started.put(name_of(job))
        return self.accept

    def end(self, job: JobControl, error: Optional[ComfyClusterError]) -> None:
        self.ended.put((name_of(job), error))

    def give(self, dispatcher: Dispatcher, n: int = 1) -> None:
        with self.lock:
            self.free += n
        dispatcher.wake()


def name_of(job: JobControl) -> str:
    return str(job.job.index)


def control(name: int, owner: Optional[str] = None, seq: int = 0, batch: Any = None) -> JobControl:
    job = Job(sleep_workflow(), index=name, owner=owner)
    job.batch = batch
    return JobControl(job, seq=seq)


def dispatcher_over(slots: Slots, clock: Callable[[], float] = FakeClock(), wait_for_server: float = 30.0,
                    **kwargs: Any) -> Dispatcher:
    return Dispatcher(slots.choose, slots.start, slots.end, clock=clock, wait_for_server=wait_for_server, **kwargs)


def test_the_next_free_slot_goes_to_the_owner_with_the_fewest_jobs_running() -> None:
    """Fair share: three jobs of one user queued before one of another; each slot that frees
    goes to the oldest job of the user with the fewest jobs on servers, so the second user's
    job runs second, not after the first user's whole queue."""
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        d.add([control(1, "ann", 1), control(2, "ann", 2), control(3, "ann", 3)])
        d.add([control(4, "bob", 4)])
        order = []
        for _ in range(4):
            slots.give(d)
            order.append(slots.started.get(timeout=BOUND))
        assert order == ["1", "4", "2", "3"]
        assert d.pending() == 0
    finally:
        d.close()


def test_fair_share_counts_what_each_owner_has_on_servers_now() -> None:
    """Jobs that ended free their owner's share: after ann's two jobs ended and bob's one still
    runs, ann's next job goes before bob's next, although bob's job is older."""
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        jobs = {n: control(n, owner, n) for n, owner in ((1, "ann"), (2, "ann"), (3, "bob"), (4, "bob"), (5, "ann"))}
        d.add([jobs[1], jobs[2], jobs[3]])
        slots.give(d, 3)
        assert sorted(slots.started.get(timeout=BOUND) for _ in range(3)) == ["1", "2", "3"]
        d.attempt_ended(jobs[1])
        d.attempt_ended(jobs[2])  # ann: 0 on servers; bob: 1
        d.add([jobs[4], jobs[5]])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "5"
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "4"
    finally:
        d.close()


def test_a_moved_job_goes_back_to_the_front_of_its_owners_queue() -> None:
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        d.add([control(1, seq=1), control(2, seq=2)])
        d.add([control(3, seq=3)], front=True)
        slots.give(d, 3)
        assert [slots.started.get(timeout=BOUND) for _ in range(3)] == ["3", "1", "2"]
    finally:
        d.close()


def test_a_job_no_server_can_take_fails_once_wait_for_server_has_passed() -> None:
    """Verdict NONE (no usable server now): the job waits ``wait_for_server`` seconds of the
    pool's clock, counted from when no server could take it, then fails with the reason the
    choice gave; a moment with a usable server (WAIT) starts the count again."""
    clock = FakeClock()
    slots = Slots(otherwise=Verdict.NONE, error=ServerError("every server is offline"))
    d = dispatcher_over(slots, clock=clock, wait_for_server=30.0)
    try:
        job = control(1)
        d.add([job])
        wait_until(lambda: job.no_server_since is not None, timeout=BOUND, what="the outage clock started")
        clock.advance(29.0)
        slots.otherwise = Verdict.WAIT  # a full server is usable: the outage is over
        asked = len(slots.asked)
        d.wake()
        wait_until(lambda: len(slots.asked) > asked, timeout=BOUND, what="the dispatcher looked again")
        wait_until(lambda: job.no_server_since is None, timeout=BOUND, what="the outage clock stopped")
        slots.otherwise = Verdict.NONE
        asked = len(slots.asked)
        d.wake()
        wait_until(lambda: len(slots.asked) > asked and job.no_server_since is not None, timeout=BOUND, what="a new outage")
        clock.advance(29.0)  # 58 s since the first outage began, 29 s into this one
        asked = len(slots.asked)
        d.wake()
        wait_until(lambda: len(slots.asked) > asked, timeout=BOUND, what="the dispatcher looked again")
        assert slots.ended.empty() and d.pending() == 1
        clock.advance(1.0)
        d.wake()
        name, error = slots.ended.get(timeout=BOUND)
        assert name == "1" and isinstance(error, ServerError) and "every server is offline" in str(error)
        assert d.pending() == 0
    finally:
        d.close()


def test_a_job_that_can_never_run_fails_at_once_with_the_reason() -> None:
    slots = Slots(otherwise=Verdict.FAIL, error=ComfyClusterError("no server has node type Foo"))
    d = dispatcher_over(slots)
    try:
        d.add([control(1)])
        name, error = slots.ended.get(timeout=BOUND)
        assert name == "1" and "node type Foo" in str(error)
        assert d.pending() == 0
    finally:
        d.close()


def test_a_failure_deciding_one_job_fails_that_job_only() -> None:
    """A bug in choosing (the strategy raised) fails the job it was deciding, with the error
    named; the jobs behind it are still dispatched."""
    slots = Slots(free=1)
    real = slots.choose

    def choose(job: JobControl) -> Choice:
        if name_of(job) == "1":
            raise KeyError("broken strategy")
        return real(job)

    d = Dispatcher(choose, slots.start, slots.end, clock=FakeClock(), wait_for_server=30.0)
    try:
        d.add([control(1, seq=1), control(2, seq=2)])
        name, error = slots.ended.get(timeout=BOUND)
        assert name == "1" and "internal error choosing a server" in str(error) and "broken strategy" in str(error)
        assert slots.started.get(timeout=BOUND) == "2"
    finally:
        d.close()


def test_a_cancelled_job_leaves_the_queue_ended_without_error() -> None:
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        job = control(1)
        d.add([job])
        assert job.mark_cancel()
        d.wake()
        assert slots.ended.get(timeout=BOUND) == ("1", None)
        assert d.pending() == 0 and slots.started.empty()
    finally:
        d.close()


def test_a_job_cancelled_as_it_is_started_is_ended_and_frees_its_owners_share() -> None:
    """``start`` says no (the job was cancelled meanwhile): the job is ended (cancelled), and
    its owner's share counts it no more, so the owner's next job is not held back."""
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        bobs = control(0, "bob", 0)
        d.add([bobs])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "0"
        d.attempt_ended(bobs)  # bob: none running, one served
        slots.accept = False
        d.add([control(1, "ann", 1)])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "1"
        assert slots.ended.get(timeout=BOUND) == ("1", None)  # ann: none running, one served
        slots.accept = True
        d.add([control(2, "ann", 2), control(3, "bob", 3)])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "2"  # a tie: the older job goes
    finally:
        d.close()


def test_jobs_with_the_same_key_are_not_asked_again_once_one_must_wait() -> None:
    slots = Slots()
    d = dispatcher_over(slots, key_of=lambda job: "same")
    try:
        d.add([control(1, seq=1), control(2, seq=2), control(3, seq=3)])
        wait_until(lambda: slots.asked, timeout=BOUND, what="a pass")
        d.wake()
        wait_until(lambda: len(slots.asked) >= 2, timeout=BOUND, what="a second pass")
        assert set(slots.asked) == {"1"}
    finally:
        d.close()


def test_pending_counts_waiting_jobs_per_batch_and_close_hands_them_back() -> None:
    slots = Slots()
    d = dispatcher_over(slots)
    b1, b2 = object(), object()
    jobs = [control(1, seq=1, batch=b1), control(2, seq=2, batch=b1), control(3, seq=3, batch=b2)]
    d.add(jobs)
    assert (d.pending(), d.pending(b1), d.pending(b2), d.pending(object())) == (3, 2, 1, 0)
    assert d.remove(jobs[0]) and not d.remove(jobs[0])
    assert not d.remove(control(9, "zed"))  # an owner with nothing queued
    assert (d.pending(), d.pending(b1)) == (2, 1)
    assert d.remove(jobs[2]) and d.pending(b2) == 0  # its last job gone: none of the batch waits
    d.add([jobs[2]])
    left = d.close()
    assert sorted(name_of(j) for j in left) == ["2", "3"]
    assert d.pending() == 0 and d.pending(b1) == 0
    with pytest.raises(ComfyClusterError) as raised:
        d.add([control(4)])
    assert str(raised.value) == "the pool is closed"
    assert slots.started.empty() and slots.ended.empty()


def test_a_job_adopted_on_a_server_counts_in_its_owners_share() -> None:
    """A job followed on a server without being dispatched (a gateway that restarted adopts
    its jobs) counts for its owner as one dispatched: the other owner's job goes first."""
    slots = Slots()
    d = dispatcher_over(slots)
    try:
        d.adopted(control(0, "ann", 0))
        d.add([control(1, "ann", 1), control(2, "bob", 2)])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "2"
    finally:
        d.close()


def test_a_failing_look_at_the_queue_does_not_stop_the_dispatcher() -> None:
    """A bug in the background work of a pass (``tick``) is logged and the dispatcher looks
    again: the jobs waiting are still dispatched."""
    slots = Slots()
    failures = [1]

    def tick() -> Optional[float]:
        if failures:
            failures.pop()
            raise RuntimeError("a bug in the status view")
        return None

    d = dispatcher_over(slots, tick=tick)
    try:
        d.add([control(1)])
        wait_until(lambda: not failures, timeout=BOUND, what="the failing pass")
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "1"
    finally:
        d.close()


@pytest.mark.parametrize("ann, bob, first", [
    # (dispatched, adopted, ended) per owner before each queues one more job (ann's is older)
    ((0, 2, 0), (2, 0, 1), "bob"),  # ann has 2 running, bob 1
    ((0, 1, 0), (1, 0, 0), "ann"),  # 1 running each, 1 served each: the older job
    ((0, 2, 2), (1, 0, 1), "bob"),  # none running; ann served 2, bob 1
    ((0, 1, 1), (1, 0, 1), "ann"),  # none running, 1 served each: the older job
    ((2, 0, 1), (1, 0, 0), "bob"),  # 1 running each; ann served 2, bob 1
])
def test_fair_share_weighs_jobs_running_then_jobs_served(ann: Tuple[int, int, int], bob: Tuple[int, int, int], first: str) -> None:
    """The next slot goes to the owner with the fewest jobs on servers now, then the fewest
    dispatched ever (adopted jobs count as dispatched), then the older job: each count as
    exact as the user's share (mutants: a count set instead of added to, by 2, or down)."""
    slots = Slots()
    d = dispatcher_over(slots)
    seq = iter(range(1000))
    try:
        for owner, (dispatched, adopted, ended) in (("ann", ann), ("bob", bob)):
            mine = [control(next(seq), owner, next(seq)) for _ in range(dispatched)]
            if mine:
                d.add(mine)
                slots.give(d, dispatched)
                for _ in mine:
                    slots.started.get(timeout=BOUND)
            for _ in range(adopted):
                held = control(next(seq), owner, next(seq))
                d.adopted(held)
                mine.append(held)
            for job in mine[:ended]:
                d.attempt_ended(job)
        wanted = {"ann": control(900, "ann", 900), "bob": control(901, "bob", 901)}
        d.add([wanted["ann"], wanted["bob"]])
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == str(wanted[first].job.index)
    finally:
        d.close()


def test_a_job_queued_while_the_dispatcher_is_busy_is_not_forgotten() -> None:
    """A job arrives while the dispatcher's thread is in a pass over an empty queue (here held
    in its background work): the thread looks again at once when the pass ends, although
    nothing else wakes it (mutants: the wake-up flag not set by ``add``)."""
    slots = Slots(free=1)
    in_tick, release = threading.Event(), threading.Event()

    def tick() -> Optional[float]:
        if not release.is_set():
            in_tick.set()
            release.wait(BOUND)
        return None

    d = dispatcher_over(slots, tick=tick)
    try:
        d.add([])  # the thread starts, finds nothing to do, and holds in tick()
        assert in_tick.wait(BOUND)
        d.add([control(1)])
        release.set()
        assert slots.started.get(timeout=BOUND) == "1"
    finally:
        release.set()
        d.close()


def test_a_job_back_from_a_server_gets_the_whole_wait_for_server_again() -> None:
    """A job that waited through part of an outage, then went to a server and came back
    (moved) waits ``wait_for_server`` from its return, not from the old outage; and the error
    without a reason from the choice says no server is available."""
    clock = FakeClock()
    slots = Slots(otherwise=Verdict.NONE)
    d = dispatcher_over(slots, clock=clock, wait_for_server=30.0)
    try:
        job = control(1)
        d.add([job])
        wait_until(lambda: job.no_server_since is not None, timeout=BOUND, what="the outage clock started")
        clock.advance(20.0)
        slots.give(d)
        assert slots.started.get(timeout=BOUND) == "1"
        d.attempt_ended(job)
        clock.advance(20.0)  # 40 s since the first outage began
        d.add([job], front=True)
        wait_until(lambda: job.no_server_since is not None, timeout=BOUND, what="a new outage clock")
        asked = len(slots.asked)
        d.wake()
        wait_until(lambda: len(slots.asked) > asked, timeout=BOUND, what="the dispatcher looked again")
        assert slots.ended.empty() and d.pending() == 1
        clock.advance(30.0)
        d.wake()
        name, error = slots.ended.get(timeout=BOUND)
        assert name == "1" and isinstance(error, ServerError) and str(error) == "no server available"
    finally:
        d.close()


def test_close_of_an_unused_dispatcher_returns_nothing() -> None:
    """A pool closed before any job was submitted: no thread was started, none is waited for."""
    d = dispatcher_over(Slots())
    assert d.close() == [] and d.pending() == 0


def test_close_returns_once_the_dispatchers_thread_has_ended() -> None:
    """Nothing of the dispatcher outlives close(): its thread has ended when close returns."""
    before = set(threading.enumerate())
    d = dispatcher_over(Slots())
    d.add([control(1)])
    (thread,) = [t for t in threading.enumerate() if t not in before]
    assert thread.daemon  # a pool its user forgot to close never keeps Nuke or a script from exiting
    # Named as the library's: how a user (and the suite's leak checks) tell its threads apart.
    assert thread.name.startswith("comfy-cluster-")
    assert [name_of(j) for j in d.close()] == ["1"]
    assert not thread.is_alive()


def test_close_from_the_dispatchers_own_thread_returns() -> None:
    """A job's end (run on the dispatcher's thread) that closes the pool, as a done callback
    may: close returns the jobs still queued, without waiting for its own thread."""
    slots = Slots(otherwise=Verdict.FAIL, error=ComfyClusterError("no server has node type Foo"))
    closed: "queue.Queue[Any]" = queue.Queue()
    d: List[Dispatcher] = []

    def end(job: JobControl, error: Optional[ComfyClusterError]) -> None:
        try:
            closed.put([name_of(j) for j in d[0].close()])
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            closed.put(exc)

    d.append(Dispatcher(slots.choose, slots.start, end, clock=FakeClock(), wait_for_server=30.0))
    d[0].add([control(1, seq=1), control(2, seq=2)])
    assert closed.get(timeout=BOUND) == ["2"]


def test_a_job_no_server_can_take_fails_in_time_with_nothing_else_happening() -> None:
    """Nothing wakes the dispatcher (no submission, no server change): a job no server can
    take still fails once ``wait_for_server`` has passed, on the real clock."""
    slots = Slots(otherwise=Verdict.NONE, error=ServerError("every server is offline"))
    d = dispatcher_over(slots, clock=time.monotonic, wait_for_server=0.05)
    try:
        d.add([control(1)])
        name, error = slots.ended.get(timeout=BOUND)
        assert name == "1" and "every server is offline" in str(error)
    finally:
        d.close()


def test_a_pass_that_fails_before_any_job_is_looked_at_is_tried_again() -> None:
    """A bug in a pass (here the clock raising once) leaves the jobs waiting: the dispatcher
    looks again by itself, and the job goes."""
    slots = Slots(free=1)
    failures = [1]

    def clock() -> float:
        if failures:
            failures.pop()
            raise RuntimeError("a bug in the clock")
        return 0.0

    d = dispatcher_over(slots, clock=clock)
    try:
        d.add([control(1)])
        assert slots.started.get(timeout=BOUND) == "1"
    finally:
        d.close()


def test_jobs_no_server_can_take_do_not_hold_back_the_jobs_behind_them() -> None:
    """Two jobs that no server can take now (they wait for ``wait_for_server``) ahead of one
    that a free server can take: that one goes at once (mutants: the pass failing on the
    second waiting job's deadline, so nothing behind it is ever looked at)."""
    slots = Slots(free=1)
    verdicts = {"1": Verdict.NONE, "2": Verdict.NONE}
    real = slots.choose

    def choose(job: JobControl) -> Choice:
        verdict = verdicts.get(name_of(job))
        return Choice(verdict, error=ServerError("no server has its model")) if verdict else real(job)

    d = Dispatcher(choose, slots.start, slots.end, clock=FakeClock(), wait_for_server=30.0)
    try:
        d.add([control(1, seq=1), control(2, seq=2), control(3, seq=3)])
        assert slots.started.get(timeout=BOUND) == "3"
        assert d.pending() == 2 and slots.ended.empty()
    finally:
        d.close()


def test_jobs_of_another_key_behind_a_waiting_key_are_still_asked() -> None:
    """Jobs 1 and 2 share a key (1 must wait, so 2 is not asked); job 3, of another key
    behind them, is asked and goes."""
    keys = {"1": "k", "2": "k", "3": "j"}
    slots = Slots()
    real = slots.choose

    def choose(job: JobControl) -> Choice:
        if name_of(job) == "3":
            return Choice(Verdict.GO, SERVER)
        return real(job)

    d = Dispatcher(choose, slots.start, slots.end, clock=FakeClock(), wait_for_server=30.0,
                   key_of=lambda job: keys[name_of(job)])
    try:
        d.add([control(1, seq=1), control(2, seq=2), control(3, seq=3)])
        assert slots.started.get(timeout=BOUND) == "3"
        assert set(slots.asked) == {"1"}
    finally:
        d.close()


@pytest.mark.parametrize("before, queued, slots_given, order", [
    # ann has 2 jobs running; ann's next job is older than bob's three: bob's first two go
    # before it (fewer running), then the tie on running and served goes to the older job.
    (dict(ann=(2, 0)), ["ann", "bob", "bob", "bob"], 4, ["bob1", "bob2", "ann0", "bob3"]),
    # ann has 1 running; bob, never served, has the older jobs: bob's first, then a tie goes to
    # bob's older second job before ann's.
    (dict(ann=(1, 0)), ["bob", "bob", "ann", "ann"], 4, ["bob0", "bob1", "ann2", "ann3"]),
    # ann's one job ended (none running, one served); bob was never served: bob goes first
    # although ann's job is older.
    (dict(ann=(1, 1)), ["ann", "bob"], 1, ["bob1"]),
])
def test_slots_freed_at_once_go_in_fair_share_order(before: Dict[str, Tuple[int, int]], queued: List[str], slots_given: int,
                                                   order: List[str]) -> None:
    """Several slots free in one look: each goes in turn to the owner with the fewest jobs on
    servers, counting the ones just given out in this look, then the fewest served, then the
    older job (mutants: the counts of one look taken wrong, an owner never served counted as
    one, the queues read one job deep)."""
    slots = Slots()
    pending_free: List[int] = []

    def clock() -> float:  # read at the start and the end of each look, never in between
        with slots.lock:
            while pending_free:
                slots.free += pending_free.pop()
        return 0.0

    d = Dispatcher(slots.choose, slots.start, slots.end, clock=clock, wait_for_server=30.0)
    seq = iter(range(100, 1000))
    try:
        for owner, (dispatched, ended) in before.items():
            mine = [control(next(seq), owner, next(seq)) for _ in range(dispatched)]
            d.add(mine)
            slots.give(d, dispatched)
            for _ in mine:
                slots.started.get(timeout=BOUND)
            for job in mine[:ended]:
                d.attempt_ended(job)
        names = {}
        jobs = []
        for i, owner in enumerate(queued):
            job = control(i, owner, i)
            names[name_of(job)] = f"{owner}{i}"
            jobs.append(job)
        asked = len(slots.asked)
        d.add(jobs)
        wait_until(lambda: len(slots.asked) >= asked + len(jobs), timeout=BOUND, what="a look at every queued job")
        pending_free.append(slots_given)
        d.wake()
        assert [names[slots.started.get(timeout=BOUND)] for _ in range(slots_given)] == order
    finally:
        d.close()
