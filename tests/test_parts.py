"""Parts of the pool tested alone, each with fakes of the collaborators it is handed: no
server, no socket, no pool. The pool only builds and wires them."""

from __future__ import annotations

import queue
import threading
from typing import Any, Dict, List, Optional, Sequence

from helpers import sleep_workflow

from comfy_cluster.attempt import Attempt, AttemptPhase, Ledger, PostGate
from comfy_cluster.balance import LeastLoaded
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.lifecycle import Runners
from comfy_cluster.policy import Action, Decision
from comfy_cluster.runner import Outcome
from comfy_cluster.scheduling import Scheduler
from comfy_cluster.selection import Capabilities, View
from comfy_cluster.server_config import ServerConfig
from comfy_cluster.status import ServerStatus

SERVERS = [ServerConfig(name=n, url=f"http://127.0.0.1:{9000 + i}", max_queue=1) for i, n in enumerate("abc")]
NODES: Dict[str, Any] = {t: {"input": {"required": {}}} for t in ("EmptyImage", "TestSleep", "SaveImage")}


class FakeMonitor:
    """What the Ledger and the Runners call on the status monitor."""

    def __init__(self) -> None:
        self.in_flight: Dict[str, int] = {s.name: 0 for s in SERVERS}
        self.marked: List[str] = []

    def job_reserved(self, name: str, warmth: Any = None) -> bool:
        self.in_flight[name] += 1
        return False

    def job_released(self, name: str, **_: Any) -> None:
        self.in_flight[name] -= 1

    def mark_failed(self, name: str, reason: str) -> None:
        self.marked.append(name)

    def snapshot(self, name: str) -> ServerStatus:
        return ServerStatus(name=name, url="", online=True)


class FakeView:
    """A StatusView over fixed snapshots (online, in_flight from the fake monitor)."""

    def __init__(self, monitor: FakeMonitor) -> None:
        self.monitor = monitor

    def current(self, *, probe: bool) -> View:
        snaps = [ServerStatus(name=s.name, url=s.url, online=True, last_checked=0.0, next_probe_at=1e9,
                              in_flight=self.monitor.in_flight[s.name]) for s in SERVERS]
        return View(sum(self.monitor.in_flight.values()), snaps, SERVERS)

    def tick(self) -> Optional[float]:
        return None


def _caps(known: Dict[str, Dict[str, Any]]) -> Capabilities:
    caps = Capabilities({}, lambda *a: None, lambda: 0.0, on_change=lambda: None)
    caps.info.update(known)
    return caps


def _scheduler(caps: Capabilities, launched: "queue.Queue[Attempt]") -> "tuple[Scheduler, Ledger, FakeMonitor]":
    monitor = FakeMonitor()
    holder: List[Scheduler] = []
    ledger = Ledger([s.name for s in SERVERS], monitor, on_release=lambda: holder[0].wake())  # type: ignore[arg-type]
    sched = Scheduler(SERVERS, FakeView(monitor), caps, ledger, LeastLoaded(),  # type: ignore[arg-type]
                      launch=launched.put, clock=lambda: 0.0, wait_for_server=30.0)
    holder.append(sched)
    return sched, ledger, monitor


def test_scheduler_places_a_job_only_where_its_nodes_are():
    launched: "queue.Queue[Attempt]" = queue.Queue()
    # Only c offers TestSleep: a and b have other nodes.
    caps = _caps({"a": {"EmptyImage": {}, "SaveImage": {}}, "b": {"SaveImage": {}}, "c": NODES})
    sched, ledger, _ = _scheduler(caps, launched)
    try:
        control = JobControl(Job(sleep_workflow()))
        sched.add([control])
        attempt = launched.get(timeout=30)
        assert attempt.server == "c" and attempt.control is control and attempt.number == 1
        assert ledger.live("c") == [attempt]  # reserved before its runner starts
        assert control.job.attempts == 1
    finally:
        sched.close()


def test_scheduler_holds_jobs_while_every_server_is_full_and_goes_on_a_release():
    launched: "queue.Queue[Attempt]" = queue.Queue()
    sched, ledger, _ = _scheduler(_caps({s.name: NODES for s in SERVERS}), launched)
    try:
        controls = [JobControl(Job(sleep_workflow()), seq=i) for i in range(4)]
        sched.add(controls)
        first = [launched.get(timeout=30) for _ in range(3)]
        assert sorted(a.server for a in first) == ["a", "b", "c"]  # max_queue 1 each
        assert sched.pending() == 1 and launched.empty()
        ledger.release(first[1])  # a slot frees: the fourth job goes there
        fourth = launched.get(timeout=30)
        assert fourth.server == first[1].server and fourth.control is controls[3]
    finally:
        sched.close()


class FakeQueue:
    def __init__(self) -> None:
        self.added: List[JobControl] = []
        self.ended: List[JobControl] = []

    def add(self, controls: Sequence[JobControl], *, front: bool = False) -> None:
        assert front  # a moved job has waited longest
        self.added.extend(controls)

    def attempt_ended(self, control: JobControl) -> None:
        self.ended.append(control)


def _runners(monitor: FakeMonitor, ledger: Ledger, jobs: FakeQueue, cleaned: List[str]) -> Runners:
    return Runners(clients={}, sockets={}, client_id="c", monitor=monitor, ledger=ledger,  # type: ignore[arg-type]
                   post_gate=PostGate(), queue=jobs, cleanup=cleaned.append, clock=lambda: 0.0,
                   reconcile_interval=5.0, server_lost_after=15.0, cut=threading.Event())


def test_runners_settle_a_move_and_a_success_without_a_server():
    monitor, jobs = FakeMonitor(), FakeQueue()
    cleaned: List[str] = []
    ledger = Ledger([s.name for s in SERVERS], monitor, on_release=lambda: None)
    runners = _runners(monitor, ledger, jobs, cleaned)
    control = JobControl(Job(sleep_workflow()))
    first = Attempt(control, "a", 1)
    assert control.claim(first, SERVERS[0])
    ledger.reserve(first)
    # The server stopped answering: kept in the ledger, marked down, cleaned up later, moved.
    down = Decision(Action.MOVE, mark_down=True, maybe_there=True)
    runners.attempt_done(first, Outcome("move", reason="stopped answering", decision=down, confirmed=False))
    assert first.phase is AttemptPhase.UNCONFIRMED and ledger.unconfirmed("a") == [first]
    assert monitor.marked == ["a"] and cleaned == ["a"] and jobs.added == [control] and jobs.ended == [control]
    assert control.job.failures == [("a", "stopped answering")] and not control.final
    second = Attempt(control, "b", 2)
    assert control.claim(second, SERVERS[1])
    ledger.reserve(second)
    runners.attempt_done(second, Outcome("succeeded", outputs={}, exec_seconds=1.0))
    assert control.final and control.job.wait(30)
    assert control.job.result().server == "b" and control.job.result().attempts == 2
    assert ledger.live("b") == [] and monitor.in_flight["b"] == 0


def test_a_cancelled_job_is_never_claimed():
    control = JobControl(Job(sleep_workflow()))
    assert control.job.cancel()  # no pool: nothing to wake, the flag is enough
    assert not control.claim(Attempt(control, "a", 1), SERVERS[0])
    done = threading.Event()
    control.job.add_done_callback(lambda job: done.set())
    control.cancelled(None, "cancelled before it reached a server")
    assert done.wait(30) and control.job.status == "cancelled"
