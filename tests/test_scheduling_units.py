"""The scheduler alone (``comfy_cluster/scheduling.py``), with fakes of what it is handed: where
a job goes, when it fails or waits instead, how a moved job is placed and reported, what a
placing strategy is shown. No server, no socket: a ledger over a fake status monitor, node lists
set by the test, a clock the test moves. Written against surviving mutants (docs/TESTING.md)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Dict, List, Optional, Set

import pytest
from helpers import sleep_workflow, wait_until

from comfy_cluster.attempt import Attempt, Ledger
from comfy_cluster.balance import LeastLoaded
from comfy_cluster.errors import ComfyClusterError, ConfigError, NoServerAvailable
from comfy_cluster.jobs import Job, JobControl
from comfy_cluster.planner import Batch
from comfy_cluster.scheduling import Scheduler
from comfy_cluster.selection import Capabilities, View
from comfy_cluster.server_config import ServerConfig
from comfy_cluster.status import ServerStatus
from comfy_cluster.testing.workflows import txt2img_workflow

# Bounds that only rule out a hang: each step here takes milliseconds (no I/O, fakes only).
WAIT = 10.0
SERVERS = [ServerConfig(name=n, url=f"http://127.0.0.1:{9100 + i}", max_queue=1) for i, n in enumerate("abc")]
NODES: Dict[str, Any] = {t: {"input": {"required": {}}} for t in ("EmptyImage", "TestSleep", "SaveImage")}
SD_NODES: Dict[str, Any] = {
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors", "c.safetensors"], {}]}}},
    **{t: {"input": {"required": {}}} for t in ("CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage")},
}


class Monitor:
    def __init__(self) -> None:
        self.in_flight: Dict[str, int] = {s.name: 0 for s in SERVERS}

    def job_reserved(self, name: str, warmth: Any = None) -> bool:
        self.in_flight[name] += 1
        return False

    def job_released(self, name: str, **_: Any) -> None:
        self.in_flight[name] -= 1


class Statuses:
    """A StatusView over fixed snapshots: ``offline`` servers down, in_flight from the ledger."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.offline: Set[str] = set()
        self.back: Set[str] = set()  # offline servers a re-probe finds online
        self.extra: Dict[str, Dict[str, Any]] = {}  # more snapshot fields per server (queue readings, speeds)
        self.reads = 0

    def current(self, *, probe: bool) -> View:
        self.reads += 1
        snaps = [ServerStatus(name=s.name, url=s.url, online=s.name not in self.offline, last_checked=0.0, next_probe_at=1e9,
                              in_flight=self.monitor.in_flight[s.name], error="refused" if s.name in self.offline else None,
                              **self.extra.get(s.name, {}))
                 for s in SERVERS]
        return View(sum(self.monitor.in_flight.values()), snaps, SERVERS)

    def tick(self) -> Optional[float]:
        """What StatusView.tick does without the background monitor: re-probe offline servers
        that are due (here: those in ``back``, found online again)."""
        self.offline -= self.back
        return None


class Rig:
    def __init__(self, known: Dict[str, Dict[str, Any]], strategy: Any = None, wait_for_server: float = 30.0,
                 clients: Optional[Dict[str, Any]] = None) -> None:
        self.fetched: List[str] = []
        # Node lists: set by the test, or (``clients``) read from fake clients at once when asked.
        submit = self._read_on_a_thread if clients is not None else (lambda fn, name, ev: self.fetched.append(name))
        self.caps = Capabilities(clients or {}, submit, lambda: self.now, on_change=lambda: None)
        self.caps.info.update(known)
        self.monitor = Monitor()
        self.view = Statuses(self.monitor)
        self.now = 0.0
        self.launched: "queue.Queue[Attempt]" = queue.Queue()
        holder: List[Scheduler] = []
        self.ledger = Ledger([s.name for s in SERVERS], self.monitor, on_release=lambda: holder[0].wake())  # type: ignore[arg-type]
        self.sched = Scheduler(SERVERS, self.view, self.caps, self.ledger, strategy or LeastLoaded(),  # type: ignore[arg-type]
                               launch=self.launch, clock=lambda: self.now, wait_for_server=wait_for_server)
        holder.append(self.sched)
        self.follow_only: List[bool] = []
        self.submitted: List[JobControl] = []
        self.expected_ends: Set[JobControl] = set()

    @staticmethod
    def _read_on_a_thread(fn: Any, name: str, ev: threading.Event) -> None:
        """The probe executor's part: the read runs on a thread of its own."""
        threading.Thread(target=fn, args=(name, ev), daemon=True).start()

    def launch(self, attempt: Attempt, follow_only: bool = False) -> None:
        self.follow_only.append(follow_only)
        self.launched.put(attempt)

    def submit(self, workflow: Any = None, **kwargs: Any) -> JobControl:
        control = JobControl(Job(workflow or sleep_workflow()), **kwargs)
        self.submitted.append(control)
        self.sched.add([control])
        return control

    def next(self) -> Attempt:
        """The next attempt launched; a job of ours that ends meanwhile (and was not expected
        to: see ``ended``) fails the test at once rather than after the wait."""
        for _ in range(200):
            try:
                return self.launched.get(timeout=0.05)
            except queue.Empty:
                ended = [c for c in self.submitted if c.final and c not in self.expected_ends]
                assert not ended, f"a job ended instead: {ended[0].job.status} {ended[0].job.exception(timeout=0)!r}"
        raise AssertionError("no attempt launched in 10 s")

    def ended(self, control: JobControl, status: str = "failed") -> BaseException:
        """``control``'s job ends with ``status`` (expected): its error."""
        self.expected_ends.add(control)
        assert control.job.wait(WAIT), "the job did not end"
        error = control.job.exception(timeout=0)
        assert control.job.status == status and error is not None
        return error

    def move(self, attempt: Attempt, reason: str) -> None:
        """What the runners do when an attempt must move: a failure noted, the slot freed,
        the job queued again at the front."""
        attempt.control.attempt_ended(attempt, (attempt.server, reason))
        self.ledger.release(attempt)
        self.sched.attempt_ended(attempt.control)
        self.sched.add([attempt.control], front=True)


@pytest.fixture
def rig() -> Any:
    made: List[Rig] = []

    def make(*args: Any, **kwargs: Any) -> Rig:
        made.append(Rig(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.sched.close()


def test_a_moved_job_goes_to_a_server_it_has_not_tried_and_says_where_from(rig: Any) -> None:
    r = rig({s.name: NODES for s in SERVERS})
    control = r.submit()
    first = r.next()
    assert first.number == 1 and first.control is control and r.follow_only == [False]
    assert control.job.server is not None and control.job.server.name == first.server  # named from its POST on
    assert r.ledger.live(first.server) == [first]  # counted on its server before it runs
    r.move(first, "stopped answering")
    second = r.next()
    assert second.server != first.server and second.number == 2 and control.job.attempts == 2
    retry = [e for e in control.job.events if e.kind == "retrying"]
    assert [(e.server, e.from_server, e.to_server, e.reason) for e in retry] == [
        (second.server, first.server, second.server, "stopped answering")]
    r.move(second, "refused")
    third = r.next()
    assert third.server not in (first.server, second.server) and third.number == 3
    assert [e.reason for e in control.job.events if e.kind == "retrying"] == ["stopped answering", "refused"]
    assert [(e.from_server, e.to_server) for e in control.job.events if e.kind == "retrying"][-1] == (second.server, third.server)


def test_a_moved_job_waits_for_an_untried_server_with_no_room_rather_than_go_back(rig: Any) -> None:
    """Another attempt goes to a server not tried yet, waiting for room there, never to a
    server found unable to run the job (c: its model was missing when it ran there)."""
    r = rig({s.name: NODES for s in SERVERS})
    mover = JobControl(Job(sleep_workflow()))
    mover.incapable.add("c")
    r.submitted.append(mover)
    r.sched.add([mover])
    first = r.next()
    blocker = JobControl(Job(sleep_workflow()))
    blocker.incapable.update({"c", first.server})
    r.submitted.append(blocker)
    r.sched.add([blocker])
    other = r.next()
    assert {first.server, other.server} == {"a", "b"}
    reads = r.view.reads
    r.move(first, "lost")  # its server has room again, the untried one has none, c may not run it
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 2, WAIT, what="passes after the move")  # the second a second later
    assert r.launched.empty()
    r.now = 100.0  # however long it waits
    r.sched.wake()
    r.ledger.release(other)
    again = r.next()
    assert again.server == other.server and again.control is first.control and again.number == 2


def test_a_job_waits_for_a_full_cluster_however_long(rig: Any) -> None:
    """wait_for_server bounds the time without any server able to run the job, not the
    time waiting for room."""
    r = rig({s.name: NODES for s in SERVERS}, wait_for_server=5.0)
    held = [r.submit() and r.next() for _ in range(3)]
    reads = r.view.reads
    waiting = r.submit()
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 2, WAIT, what="passes with the job waiting")
    r.now = 60.0
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="passes after the clock moved")
    assert not waiting.final
    r.ledger.release(held[1])
    assert r.next().control is waiting


def test_a_job_no_server_has_the_nodes_for_waits_for_one_up_to_wait_for_server(rig: Any) -> None:
    """README: a job no server can take now waits up to ``wait_for_server`` (a server may be
    restarted with the nodes it needs), then fails naming why each server cannot."""
    r = rig({"a": {"SaveImage": {}}, "b": {"SaveImage": {}}, "c": {"SaveImage": {}}})
    control = r.submit()
    wait_until(lambda: r.sched.wake() or r.view.reads >= 2, WAIT, what="two passes of the dispatcher")
    assert not control.final
    r.caps.info["b"] = NODES  # b restarted with the nodes
    r.caps.version += 1
    r.sched.wake()
    assert r.next().server == "b" and not control.final


def test_an_adopted_copy_is_followed_under_the_client_id_it_was_posted_with(rig: Any) -> None:
    r = rig({s.name: NODES for s in SERVERS})
    control = JobControl(Job(sleep_workflow()))
    r.sched.adopt(control, SERVERS[1], "copy-1", client_id="dead-replica")
    attempt = r.next()
    assert r.follow_only == [True] and attempt.server == "b" and attempt.number == 1
    assert attempt.prompt_id == "copy-1" and attempt.client_id == "dead-replica" and control.job.tried == ["b"]
    assert r.ledger.live("b") == [attempt]  # counted on b: b is full for other jobs
    other = r.submit()
    assert r.next().server in ("a", "c") and other.job.attempts == 1


def test_a_moved_job_goes_back_to_a_tried_server_when_no_other_can_run_it(rig: Any) -> None:
    r = rig({"a": NODES, "b": {"SaveImage": {}}, "c": {"SaveImage": {}}})
    first = r.submit() and r.next()
    assert first.server == "a"
    r.move(first, "lost")
    again = r.next()
    assert again.server == "a" and again.number == 2


def test_a_job_the_servers_cannot_run_fails_at_once_with_the_reason_found(rig: Any) -> None:
    """Once every server was found lacking the job's nodes (and none is offline), the job
    fails at once with the error that was found, without waiting ``wait_for_server``."""
    r = rig({s.name: NODES for s in SERVERS})
    control = JobControl(Job(sleep_workflow()))
    control.incapable.update({"a", "b", "c"})
    control.last_error = ComfyClusterError("a: missing node types TestSleep")
    r.sched.add([control])
    assert str(r.ended(control)) == "a: missing node types TestSleep"
    other = JobControl(Job(sleep_workflow()))
    other.incapable.update({"a", "b", "c"})
    r.sched.add([other])
    error = r.ended(other)  # no error kept: one naming why each server cannot take it
    assert isinstance(error, NoServerAvailable) and "a: excluded" in str(error)


def test_a_job_waits_for_an_offline_server_it_may_run_on(rig: Any) -> None:
    r = rig({s.name: NODES for s in SERVERS})
    r.view.offline.update({"c"})
    control = JobControl(Job(sleep_workflow()))
    control.incapable.update({"a", "b"})
    r.sched.add([control])
    wait_until(lambda: r.sched.wake() or r.view.reads >= 2, WAIT, what="two passes of the dispatcher")  # the second a second later
    assert not control.final
    r.view.offline.clear()
    r.sched.wake()
    assert r.next().server == "c"


def test_a_job_no_server_has_the_nodes_for_fails_after_wait_for_server_naming_each(rig: Any) -> None:
    r = rig({"a": {"SaveImage": {}}, "b": {"SaveImage": {}}, "c": {"SaveImage": {}}}, wait_for_server=0.0)
    error = r.ended(r.submit())
    assert isinstance(error, NoServerAvailable)
    assert error.reasons == {name: "missing node types EmptyImage, TestSleep" for name in "abc"}


def test_a_node_list_read_later_or_changed_is_taken_into_account(rig: Any) -> None:
    """Node lists not known yet are fetched in the background (the scheduler never waits for
    them) and the job waits; an answer that changes (a server restarted with other nodes)
    is asked again."""
    r = rig({"a": {"SaveImage": {}}})
    control = r.submit()
    wait_until(lambda: sorted(r.fetched) == ["b", "c"], WAIT, what="b's and c's node lists asked for")
    assert r.launched.empty() and not control.final
    r.caps.info["b"] = NODES  # b's list arrives
    r.caps.version += 1
    r.sched.wake()
    assert r.next().server == "b"
    second = r.submit()
    r.caps.info["a"] = NODES  # a restarted with the nodes
    r.caps.version += 1
    r.sched.wake()
    assert r.next().server == "a" and second.job.attempts == 1


def test_a_job_cancelled_before_its_server_takes_it_never_starts(rig: Any) -> None:
    r = rig({s.name: NODES for s in SERVERS})
    for _ in range(3):
        r.submit()
    held = [r.next() for _ in range(3)]
    waiting = r.submit()
    assert waiting.job.cancel()
    r.sched.wake()
    r.ended(waiting, "cancelled")
    r.ledger.release(held[0])
    nxt = r.submit()
    assert r.next().control is nxt


class Picky:
    """A custom strategy: answers what the test sets."""

    name = "picky"

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.workflows: List[Any] = []

    def select(self, candidates: List[Any], workflow: Any) -> Any:
        self.workflows.append(workflow)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("answer, message", [
    ("nowhere", "strategy picky: returned 'nowhere', which is not one of the candidates (a, b, c)"),
    (ValueError("boom"), "strategy picky raised ValueError: boom"),
])
def test_a_custom_strategys_bad_answer_fails_that_job_only(rig: Any, answer: Any, message: str) -> None:
    strategy = Picky(answer)
    r = rig({s.name: NODES for s in SERVERS}, strategy=strategy)
    error = r.ended(r.submit())
    assert isinstance(error, ConfigError) and str(error) == message
    strategy.answer = "b"
    workflow = sleep_workflow(seconds=0.5)
    assert r.submit(workflow) and r.next().server == "b"
    assert strategy.workflows[-1] == workflow  # a custom strategy may place by the workflow


class Placer:
    """A strategy that places (as warm_models): records what it is shown, answers a name."""

    name = "placer"

    def __init__(self) -> None:
        self.answer: Any = None
        self.shown: List[Dict[str, Any]] = []
        self.asked = threading.Event()

    def select(self, candidates: List[Any], workflow: Any) -> Any:
        return candidates[0]

    def place(self, cands: List[Any], eligible: List[Any], warmth: Any, waiting: Dict[Any, int], *, waited: float,
              running: Dict[str, float]) -> Any:
        self.shown.append({"cands": [c.name for c in cands], "eligible": [c.name for c in eligible], "models": warmth.models,
                           "waiting": dict(waiting), "waited": waited, "running": dict(running)})
        self.asked.set()
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, str):  # that server, room or not
            return next((c for c in eligible if c.name == self.answer), None)
        if isinstance(self.answer, tuple):  # the first of these with room
            return next((c for c in cands if c.name in self.answer), None)
        return None

    def ask(self, r: Rig) -> Dict[str, Any]:
        self.asked.clear()
        r.sched.wake()
        assert self.asked.wait(WAIT)
        return self.shown[-1]


def test_a_placing_strategy_is_shown_full_servers_the_waiting_models_and_the_wait(rig: Any) -> None:
    placer = Placer()
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=placer)
    placer.answer = "a"
    first = r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1))
    on_a = r.next()
    assert on_a.server == "a"
    shown = placer.shown[-1]
    assert shown["cands"] == ["a", "b", "c"] and shown["models"] == ("ckpt_name=a.safetensors",) and shown["waited"] == 0.0
    assert shown["waiting"] == {("ckpt_name=a.safetensors",): 1}  # the job itself
    placer.answer = None  # wait for a
    job2 = r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=2))
    wait_until(lambda: len(placer.shown) >= 2, WAIT, what="the second job placed")
    shown = placer.shown[-1]
    assert shown["cands"] == ["b", "c"] and shown["eligible"] == ["a", "b", "c"] and shown["waiting"] == {("ckpt_name=a.safetensors",): 1}
    r.now = 50.0  # past wait_for_server: waiting for a warm server is not "no server"
    assert placer.ask(r)["waited"] == 50.0  # since it was first asked with a server free
    job3 = JobControl(Job(txt2img_workflow(ckpt_name="b.safetensors", seed=3)))
    job3a = JobControl(Job(txt2img_workflow(ckpt_name="a.safetensors", seed=33)))
    r.submitted += [job3, job3a]
    r.sched.add([job3, job3a])
    wait_until(lambda: placer.shown[-1]["models"] == ("ckpt_name=b.safetensors",), WAIT, what="the third job asked")
    assert placer.shown[-1]["waiting"] == {("ckpt_name=a.safetensors",): 2, ("ckpt_name=b.safetensors",): 1}
    assert placer.shown[-1]["waited"] == 0.0
    assert job3a.job.cancel()
    r.sched.wake()
    r.ended(job3a, "cancelled")
    placer.answer = ("b", "c")
    asked = len(placer.shown)
    r.sched.wake()
    assert {r.next().control, r.next().control} == {job2, job3}
    assert placer.shown[asked]["waiting"] == {("ckpt_name=a.safetensors",): 1, ("ckpt_name=b.safetensors",): 1}
    placer.answer = None
    asked = len(placer.shown)
    job4 = r.submit(txt2img_workflow(ckpt_name="b.safetensors", seed=4))  # every server full: not asked
    r.now = 9.0
    placer.asked.clear()
    r.ledger.release(on_a)
    assert placer.asked.wait(WAIT)
    shown = placer.shown[asked]
    assert shown["waiting"] == {("ckpt_name=b.safetensors",): 1} and shown["waited"] == 0.0 and shown["cands"] == ["a"]
    # A server found unable to run a job is not among those it may wait for.
    placer.answer = None
    unable = JobControl(Job(txt2img_workflow(ckpt_name="a.safetensors", seed=5)))
    unable.incapable.add("b")
    asked = len(placer.shown)
    r.sched.add([unable])
    wait_until(lambda: any(sh["models"] == ("ckpt_name=a.safetensors",) for sh in placer.shown[asked:]), WAIT, what="the job asked")
    shown = [sh for sh in placer.shown[asked:] if sh["models"] == ("ckpt_name=a.safetensors",)][0]
    assert shown["eligible"] == ["a", "c"] and shown["cands"] == ["a"]
    assert job4.job.cancel()
    r.sched.wake()
    r.ended(job4, "cancelled")
    assert first.job.attempts == 1


@pytest.mark.parametrize("answer, message", [
    (ValueError("boom"), "strategy placer raised ValueError: boom"),
    ("a", "strategy placer: placed the job on"),
])
def test_a_placing_strategys_bad_answer_fails_that_job_only(rig: Any, answer: Any, message: str) -> None:
    placer = Placer()
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=placer)
    placer.answer = "a"
    r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1))
    assert r.next().server == "a"  # a is full now
    placer.answer = answer
    error = r.ended(r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=2)))
    assert isinstance(error, ConfigError) and str(error).startswith(message)
    placer.answer = "b"
    r.submit(txt2img_workflow(ckpt_name="b.safetensors", seed=3))
    assert r.next().server == "b"
    assert placer.shown[-1]["waiting"] == {("ckpt_name=b.safetensors",): 1}  # the failed job no longer counts


def test_a_placing_strategy_is_told_how_long_each_servers_job_has_run(rig: Any) -> None:
    placer = Placer()
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=placer)
    placer.answer = "a"
    r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1))
    running = r.next()
    running.control.started(2.0)  # the runner saw it start executing at 2.0 (the pool's clock)
    from comfy_cluster.attempt import AttemptPhase

    running.phase = AttemptPhase.RUNNING
    placer.answer = None
    r.now = 7.5
    r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=2))
    wait_until(lambda: len(placer.shown) >= 2, WAIT, what="the second job asked")
    assert placer.shown[-1]["running"] == {"a": 5.5}


class PlanSpy(Batch):
    """A batch whose plan records what the scheduler shows it and says wait."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: Dict[str, Any] = {}
        self.go = False  # say "this candidate" (the first) instead of wait

    def plan_pick(self, candidates: Any, state: Any, remaining: int) -> Any:
        self.shown["remaining"] = remaining
        self.shown["cands"] = [c.name for c in candidates]
        self.shown["last"] = [(srv.name, round(backlog, 6), round(per_job, 6)) for srv, backlog, per_job in state]
        return candidates[0].server if self.go else None


def test_a_batch_plan_is_shown_each_able_servers_backlog_less_what_its_running_job_has_done(rig: Any) -> None:
    """The batch planner's view (README: a batch job goes where it finishes soonest): per
    server the job may go to, full or not, the seconds until its backlog is done (its queue
    times its seconds per job, less what the job running there has run) and its seconds per job."""
    r = rig({s.name: NODES for s in SERVERS}, strategy=Picky("a"))
    r.view.extra = {"a": {"avg_job_seconds": 0.5, "queue_running": 1, "queue_pending": 1},
                    "b": {"avg_job_seconds": 4.0}, "c": {"avg_job_seconds": 5.0, "queue_pending": 1}}
    r.submit()
    running = r.next()
    assert running.server == "a"
    from comfy_cluster.attempt import AttemptPhase

    running.control.started(6.8)  # executing since 6.8 on the pool's clock
    running.phase = AttemptPhase.RUNNING
    r.now = 7.0
    batch = PlanSpy()
    job = Job(sleep_workflow(seed=5))
    job.batch = batch
    r.sched.add([JobControl(job)])
    wait_until(lambda: "last" in batch.shown, WAIT, what="the plan asked")
    assert batch.shown["last"] == [("a", 0.8, 0.5), ("b", 0.0, 4.0), ("c", 5.0, 5.0)]
    assert r.launched.empty()  # the plan said wait
    other = Job(sleep_workflow(seed=6))
    other.batch = batch
    control = JobControl(other)
    control.incapable.add("c")  # found unable to run it: not in its plan
    del batch.shown["last"]
    r.sched.add([control])
    wait_until(lambda: batch.shown.get("last") == [("a", 0.8, 0.5), ("b", 0.0, 4.0)], WAIT, what="the second job's plan")
    assert batch.shown["remaining"] == 2  # the batch's jobs waiting (the plain one runs)
    # A plan that says wait is not "no server": past wait_for_server the jobs still wait, and
    # go where the plan says once it does.
    reads = r.view.reads
    r.now = 100.0
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="passes past wait_for_server")
    batch.go = True
    r.sched.wake()
    assert r.next().control.job is job  # the older one, where the plan said


def test_a_job_waiting_for_an_offline_server_goes_there_once_a_re_probe_finds_it(rig: Any) -> None:
    """Without the background status thread the dispatcher asks for the re-probes that are
    due; a job only that server can run goes there once it is back."""
    r = rig({s.name: NODES for s in SERVERS})
    r.view.offline.add("c")
    r.view.back.add("c")
    control = JobControl(Job(sleep_workflow()))
    control.incapable.update({"a", "b"})
    r.submitted.append(control)
    r.sched.add([control])
    assert r.next().server == "c"


def test_a_moved_job_takes_the_next_free_slot_before_jobs_that_waited_less(rig: Any) -> None:
    r = rig({s.name: NODES for s in SERVERS})
    first, second, third = [r.submit() and r.next() for _ in range(3)]
    waiting = r.submit()
    moved = first.control
    moved.attempt_ended(first, (first.server, "lost"))  # its copy may still be there: its slot stays taken
    r.sched.attempt_ended(moved)
    r.sched.add([moved], front=True)
    r.ledger.release(second)
    nxt = r.next()
    assert nxt.control is moved and nxt.server == second.server and not waiting.final


class Canceller(Picky):
    """A strategy during whose choice the job is cancelled (the caller's cancel() racing the
    dispatcher): ``place`` too, when ``places``."""

    def __init__(self, places: bool) -> None:
        super().__init__("a")
        self.jobs: List[Job] = []
        if places:
            self.place = self._place

    def select(self, candidates: List[Any], workflow: Any) -> Any:
        self.jobs[-1].cancel()
        return candidates[0]

    def _place(self, cands: List[Any], eligible: List[Any], warmth: Any, waiting: Any, **_: Any) -> Any:
        self.jobs[-1].cancel()
        return cands[0]


@pytest.mark.parametrize("places", [False, True])
def test_a_job_cancelled_while_its_server_is_chosen_ends_cancelled_there_and_frees_nothing(rig: Any, places: bool) -> None:
    strategy = Canceller(places)
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=strategy)
    control = JobControl(Job(txt2img_workflow(ckpt_name="a.safetensors", seed=1)))
    strategy.jobs.append(control.job)
    r.submitted.append(control)
    r.sched.add([control])
    assert "before it reached a server" in str(r.ended(control, "cancelled"))
    assert r.launched.empty() and all(r.ledger.live(s.name) == [] for s in SERVERS)
    strategy.jobs.append(Job(txt2img_workflow(ckpt_name="a.safetensors", seed=2)))  # the next one is not cancelled
    other = r.submit(txt2img_workflow(ckpt_name="b.safetensors", seed=3))
    assert r.next().control is other


class Lists:
    """A client whose node list cannot be read the first time."""

    def __init__(self) -> None:
        self.reads = 0

    def object_info(self, timeout: Any = None) -> Dict[str, Any]:
        self.reads += 1
        if self.reads == 1:
            raise ComfyClusterError("b: connection refused")
        return NODES


def test_a_node_list_that_could_not_be_read_is_read_again_for_a_waiting_job_after_its_backoff(rig: Any) -> None:
    b = Lists()
    r = rig({"a": {"SaveImage": {}}, "c": {"SaveImage": {}}}, clients={"b": b})
    control = r.submit()
    wait_until(lambda: b.reads == 1, WAIT, what="b's node list asked for")
    wait_until(lambda: r.sched.wake() or r.view.reads >= 3, WAIT, what="passes within b's backoff")
    assert b.reads == 1 and not control.final  # not before its backoff (2 s on the pool's clock)
    r.now = 3.0
    r.sched.wake()
    assert r.next().server == "b" and b.reads == 2


@pytest.mark.parametrize("blocker", ["batch", "unable", "moved"])
def test_a_job_that_could_go_now_is_not_held_behind_one_that_must_wait(rig: Any, blocker: str) -> None:
    """Jobs alike are asked once per pass; a job that differs (of a batch whose plan says
    wait, found unable to run on the free server, or moved from it) is not taken for one
    that waits, pass after pass."""
    r = rig({s.name: NODES for s in SERVERS})
    held = [r.submit() and r.next() for _ in range(3)]  # every server full
    free = held[0]
    if blocker == "moved":
        r.move(free, "lost")  # its slot freed below; the others full: it waits for them
        r.ledger.reserve(Attempt(free.control, free.server, 9))  # (its copy may still be there)
        stuck = free.control
    else:
        stuck = JobControl(Job(sleep_workflow()))
        if blocker == "batch":
            stuck.job.batch = PlanSpy()
        else:
            stuck.incapable.add(free.server)
        r.submitted.append(stuck)
        r.sched.add([stuck])
    reads = r.view.reads
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 2, WAIT, what="the stuck job asked")
    plain = r.submit()
    reads = r.view.reads
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="both asked")  # both wait: full
    if blocker == "moved":
        r.ledger.release(r.ledger.live(free.server)[0])
    else:
        r.ledger.release(free)
    nxt = r.next()
    assert nxt.control is plain and nxt.server == free.server


def test_a_placing_strategy_is_told_the_wait_since_the_job_was_queued_again(rig: Any) -> None:
    placer = Placer()
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=placer)
    placer.answer = ("a",)
    r.submit(txt2img_workflow(ckpt_name="a.safetensors", seed=1))
    first = r.next()
    r.now = 50.0
    placer.answer = None
    asked = len(placer.shown)
    r.move(first, "lost")
    wait_until(lambda: len(placer.shown) > asked, WAIT, what="the moved job asked")
    assert placer.shown[asked]["waited"] == 0.0


def test_a_batch_job_leaves_a_server_to_the_jobs_waiting_warm_there_and_takes_a_warm_one(rig: Any) -> None:
    placer = Placer()  # a strategy that places by warmth: it keeps the plain job waiting
    r = rig({s.name: SD_NODES for s in SERVERS}, strategy=placer)
    r.view.extra = {"a": {"models": ("ckpt_name=b.safetensors",)}, "b": {"models": ("ckpt_name=a.safetensors",)},
                    "c": {"models": ("ckpt_name=b.safetensors",)}}
    r.submit(txt2img_workflow(ckpt_name="b.safetensors", seed=1))  # waits (for a, warm for it)
    wait_until(lambda: len(placer.shown) >= 1, WAIT, what="the plain job asked")
    batch = PlanSpy()  # says wait: the job stays, warm for its model
    job = Job(txt2img_workflow(ckpt_name="a.safetensors", seed=2))
    job.batch = batch
    r.sched.add([JobControl(job)])
    wait_until(lambda: "cands" in batch.shown, WAIT, what="the batch job's plan asked")
    # b, warm for it; not a or c, kept free for the job waiting warm there.
    assert batch.shown["cands"] == ["b"] and batch.shown["remaining"] == 1  # its batch's jobs only
    # One of another model finds no server left to it (b too is kept for the job warm there):
    # it waits, past wait_for_server too.
    third = Job(txt2img_workflow(ckpt_name="c.safetensors", seed=4))
    third.batch = PlanSpy()
    r.submitted.append(JobControl(third))
    reads = r.view.reads
    r.sched.add([r.submitted[-1]])
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 6, WAIT, what="passes with it waiting")
    reads = r.view.reads
    r.now = 100.0
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 8, WAIT, what="passes past wait_for_server")
    assert not third.done and "cands" not in third.batch.shown
    # A strategy that does not place by warmth: every server is a candidate of the plan.
    r2 = rig({s.name: SD_NODES for s in SERVERS}, strategy=Picky("a"))
    r2.view.extra = {"b": {"models": ("ckpt_name=a.safetensors",)}}
    spy = PlanSpy()
    job = Job(txt2img_workflow(ckpt_name="a.safetensors", seed=5))
    job.batch = spy
    r2.sched.add([JobControl(job)])
    wait_until(lambda: "cands" in spy.shown, WAIT, what="the plan asked")
    assert spy.shown["cands"] == ["a", "b", "c"]


def test_a_job_that_can_go_after_a_server_gained_its_nodes_is_not_held_behind_one_that_cannot(rig: Any) -> None:
    other_nodes = dict(NODES, OtherNode={"input": {"required": {}}})
    r = rig({"a": other_nodes, "b": other_nodes, "c": {"SaveImage": {}}})
    held = [r.submit() and r.next() for _ in range(2)]  # a and b full
    assert sorted(a.server for a in held) == ["a", "b"]
    older = r.submit({"1": {"class_type": "OtherNode", "inputs": {}}})  # only a and b can run it, ever
    newer = r.submit()  # a and b for now
    reads = r.view.reads
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="both asked")
    r.caps.info["c"] = NODES  # c restarted with the nodes the newer one needs
    r.caps.version += 1
    r.sched.wake()
    nxt = r.next()
    assert nxt.control is newer and nxt.server == "c" and not older.final


def test_a_job_is_not_held_behind_one_alike_once_a_server_only_it_can_use_comes_online(rig: Any) -> None:
    """Found by a surviving mutant of _key_of: two waiting jobs whose servers looked alike
    while c was offline stayed "alike" once c came online, so the newer one waited behind the
    older one (which cannot run on c) while c stood idle."""
    other_nodes = dict(NODES, OtherNode={"input": {"required": {}}})
    r = rig({"a": other_nodes, "b": other_nodes, "c": NODES})
    r.view.offline.add("c")
    held = [r.submit() and r.next() for _ in range(2)]  # a and b full
    assert sorted(a.server for a in held) == ["a", "b"]
    older = r.submit({"1": {"class_type": "OtherNode", "inputs": {}}})  # a and b only, ever
    newer = r.submit()  # a, b, and c once it is back
    reads = r.view.reads
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="both asked")
    r.view.offline.clear()
    r.sched.wake()
    nxt = r.next()
    assert nxt.control is newer and nxt.server == "c" and not older.final


def test_a_job_is_not_held_behind_one_that_cannot_run_where_a_slot_frees(rig: Any) -> None:
    other_nodes = dict(NODES, OtherNode={"input": {"required": {}}})
    r = rig({"a": other_nodes, "b": other_nodes, "c": NODES})
    held = [r.submit() and r.next() for _ in range(3)]  # every server full
    older = r.submit({"1": {"class_type": "OtherNode", "inputs": {}}})  # a and b only
    newer = r.submit()  # any
    reads = r.view.reads
    wait_until(lambda: r.sched.wake() or r.view.reads >= reads + 4, WAIT, what="both asked")
    r.ledger.release(next(a for a in held if a.server == "c"))
    nxt = r.next()
    assert nxt.control is newer and nxt.server == "c" and not older.final

