"""The status monitor on its own: probes, learned durations, queue readings, the probe thread.

What the pool, ``select()`` and ``comfy-cluster status`` read of a server comes from here.
These tests drive :class:`StatusMonitor` with fake clients (each answers ``GET /queue`` and
``/system_stats`` as the test says) and a clock the test moves; written against the
mutants of ``comfy_cluster/status.py`` (docs/TESTING.md). No network, no sleeps; the
threads' waits are bounded only to rule out a hang.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest
from helpers import FakeClock, wait_until

from comfy_cluster.errors import ServerError
from comfy_cluster.server_config import ServerConfig
from comfy_cluster.status import EMA_ALPHA, ServerStatus, StatusMonitor
from comfy_cluster.warm import Warmth

# Bounds on waits for the threads: they only rule out a hang (the work takes milliseconds).
BOUND = 8.0


class Client:
    """One server: ``queue`` answers with ``self.queue_answer`` (or raises it), counting calls;
    ``gate`` (when set) holds a probe until the test opens it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue_answer: Any = ([], [])
        self.stats_answer: Any = {"system": {"comfyui_version": "0.3.1"},
                                  "devices": [{"name": "cuda:0 RTX", "vram_total": 24e9, "vram_free": 20e9}]}
        self.probes = 0
        self.stats_reads = 0
        self.timeouts: List[Any] = []
        self.stats_timeouts: List[Any] = []
        self.threads: List[threading.Thread] = []
        self.barrier: Optional[threading.Barrier] = None
        self.on_queue: Any = lambda: None
        self.gate: Optional[threading.Event] = None
        self.entered = threading.Event()

    def queue(self, timeout: Any = None, probe: bool = False) -> Tuple[List[str], List[str]]:
        assert probe
        self.probes += 1
        self.timeouts.append(timeout)
        self.threads.append(threading.current_thread())
        self.on_queue()
        answer = self.queue_answer  # what the server said when the request reached it
        self.entered.set()
        if self.barrier is not None:
            self.barrier.wait()
        if self.gate is not None:
            assert self.gate.wait(30)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def system_stats(self, timeout: Any = None, probe: bool = False) -> Dict[str, Any]:
        assert probe
        self.stats_reads += 1
        self.stats_timeouts.append(timeout)
        self.threads.append(threading.current_thread())
        if isinstance(self.stats_answer, BaseException):
            raise self.stats_answer
        return self.stats_answer


def _monitor(names: Tuple[str, ...] = ("a",), **kw: Any) -> Tuple[StatusMonitor, Dict[str, Client], FakeClock]:
    clock = kw.pop("clock", FakeClock())
    clients = {n: Client(n) for n in names}
    servers = [ServerConfig(name=n, url=f"http://127.0.0.1:{9000 + i}") for i, n in enumerate(names)]
    monitor = StatusMonitor(servers, clients, clock=clock, background=kw.pop("background", False), **kw)  # type: ignore[arg-type]
    return monitor, clients, clock


def test_a_probe_reads_the_whole_queue_and_the_servers_stats_once():
    monitor, clients, clock = _monitor(("a", "b"), ttl=7.0, probe_timeout=(1.5, 2.5))
    try:
        assert [s.name for s in monitor.snapshots()] == ["a", "b"] and not monitor.snapshot("a").checked
        assert monitor.due() == ["a", "b"] and not monitor.background
        clients["a"].queue_answer = (["r1"], ["p1", "p2", "p3"])
        seen: List[Tuple[bool, bool]] = []
        monitor.add_listener(lambda old, new: seen.append((old.online, new.online)))
        before = monitor.version
        statuses = monitor.refresh()
        a = statuses[0]
        assert (a.online, a.queue_running, a.queue_pending, a.load, a.error, a.consecutive_failures) == (True, 1, 3, 4, None, 0)
        assert a.last_checked == clock.now and a.next_probe_at == clock.now + 7.0 and a.rtt_ms is not None and a.rtt_ms >= 0
        assert (a.comfyui_version, a.device_name, a.vram_total, a.vram_free) == ("0.3.1", "cuda:0 RTX", 24_000_000_000, 20_000_000_000)
        assert clients["a"].timeouts == [(1.5, 2.5)] and monitor.version > before
        assert seen == [(False, True), (False, True)]
        assert monitor.snapshot("b").online and monitor.due() == []
        clock.advance(6.9)
        assert monitor.refresh() == monitor.snapshots() and clients["a"].probes == 1  # fresh: cached
        clock.advance(0.1)
        assert monitor.due() == ["a", "b"]
        monitor.refresh()
        assert clients["a"].probes == 2 and clients["a"].stats_reads == 1  # the stats are read once
        monitor.refresh(force=True)
        assert clients["b"].probes == 3 and clients["b"].stats_reads == 1
    finally:
        monitor.close()


def test_stats_a_server_could_not_give_are_asked_again_and_odd_values_are_left_out(caplog):
    monitor, clients, _ = _monitor(probe_timeout=(1.5, 2.5))
    try:
        clients["a"].stats_answer = ServerError("a: 500")
        with caplog.at_level(logging.DEBUG, logger="comfy_cluster.status"):
            monitor.refresh(force=True)
        assert "system_stats of a failed: a: 500" in [r.getMessage() for r in caplog.records]
        assert clients["a"].stats_timeouts == [(1.5, 2.5)]  # bounded like the probe, not by the pool's request timeout
        snap = monitor.snapshot("a")
        assert snap.online and snap.comfyui_version is None
        clients["a"].stats_answer = {"system": {"comfyui_version": 3},
                                     "devices": [{"name": None, "vram_total": float("inf"), "vram_free": True}]}
        monitor.refresh(force=True)
        snap = monitor.snapshot("a")
        assert (snap.comfyui_version, snap.device_name, snap.vram_total, snap.vram_free) == (None, None, None, None)
        assert clients["a"].stats_reads == 2
        monitor.refresh(force=True)
        assert clients["a"].stats_reads == 2  # an answer, however odd, is not asked for again
    finally:
        monitor.close()
    for devices in ([], ["cuda:0"], None):
        other, clients, _ = _monitor()
        try:
            clients["a"].stats_answer = {"system": {"comfyui_version": "v1"}, "devices": devices}
            other.refresh(force=True)
            snap = other.snapshot("a")
            assert (snap.comfyui_version, snap.device_name, snap.vram_total) == ("v1", None, None)
        finally:
            other.close()
    nan, clients, _ = _monitor()
    try:
        clients["a"].stats_answer = {"devices": [{"name": "gpu", "vram_total": float("nan"), "vram_free": 5.9}]}
        nan.refresh(force=True)
        snap = nan.snapshot("a")
        assert (snap.device_name, snap.vram_total, snap.vram_free, snap.comfyui_version) == ("gpu", None, 5, None)
    finally:
        nan.close()


def test_a_failed_probe_says_why_without_the_servers_name_twice_and_a_bug_is_named(caplog):
    monitor, clients, clock = _monitor(("gpu1",))
    try:
        clients["gpu1"].queue_answer = ServerError("gpu1: connection refused", server="gpu1")
        monitor.refresh()
        snap = monitor.snapshot("gpu1")
        assert (snap.online, snap.error, snap.consecutive_failures, snap.rtt_ms) == (False, "connection refused", 1, None)
        clients["gpu1"].queue_answer = ServerError("timed out reading gpu1", server="gpu1")
        clock.advance(60)
        monitor.refresh()
        assert monitor.snapshot("gpu1").error == "timed out reading gpu1"
        clients["gpu1"].queue_answer = ValueError("a bug")
        clock.advance(60)
        with caplog.at_level(logging.ERROR, logger="comfy_cluster.status"):
            monitor.refresh()
        assert monitor.snapshot("gpu1").error == "probe error: ValueError"
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.exc_info] == ["probe of gpu1 failed unexpectedly"]
        assert monitor.snapshot("gpu1").consecutive_failures == 3
    finally:
        monitor.close()


def test_a_server_coming_back_is_logged_once_and_told_to_the_listeners(caplog):
    monitor, clients, clock = _monitor(("gpu1",))
    changes: List[Tuple[ServerStatus, ServerStatus]] = []
    monitor.add_listener(lambda old, new: changes.append((old, new)))
    try:
        def said() -> List[str]:
            out = [r.getMessage() for r in caplog.records if r.name == "comfy_cluster.status"]
            caplog.clear()
            return out

        with caplog.at_level(logging.INFO, logger="comfy_cluster.status"):
            monitor.refresh()
            assert said() == []  # online at the first probe: not "back"
            monitor.mark_failed("gpu1", "connection reset")
            assert said() == ["server gpu1 is offline: connection reset"]
            clock.advance(60)
            monitor.refresh()
            assert said() == ["server gpu1 is back online"]
            clock.advance(60)
            monitor.refresh()
            assert said() == []  # online already: not "back" again
            clients["gpu1"].queue_answer = ServerError("gpu1: connection refused", server="gpu1")
            clock.advance(60)
            monitor.refresh()
            assert said() == ["server gpu1 is offline: connection refused"]
            clock.advance(60)
            monitor.refresh()  # still away: the outage was said once
            assert said() == [] and monitor.snapshot("gpu1").consecutive_failures == 2
        assert [(o.online, n.online) for o, n in changes][:4] == [(False, True), (True, False), (False, True), (True, True)]
        assert changes[1][1].error == "connection reset" and changes[2][1].error is None
    finally:
        monitor.close()


def test_a_server_away_from_the_start_is_said_offline_once_and_backs_off_doubling_to_its_cap(caplog):
    monitor, clients, clock = _monitor(("gpu2",), backoff_cap=3.0)
    clients["gpu2"].queue_answer = ServerError("gpu2: connection refused", server="gpu2")
    try:
        waits = []
        with caplog.at_level(logging.INFO, logger="comfy_cluster.status"):
            for _ in range(5):
                monitor.refresh()
                snap = monitor.snapshot("gpu2")
                waits.append(snap.next_probe_at - clock.now)
                assert monitor.due() == [] and monitor.due(include_offline=False) == []
                clock.advance(waits[-1] - 0.01)
                assert monitor.due() == []  # not before its backoff is over
                clock.advance(0.01)
                assert monitor.due() == ["gpu2"] and monitor.due(include_offline=False) == []
        assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]
        assert [r.getMessage() for r in caplog.records] == ["server gpu2 is offline: connection refused"]
    finally:
        monitor.close()


def test_a_failing_listener_does_not_stop_the_others(caplog):
    monitor, clients, _ = _monitor()
    heard: List[bool] = []
    monitor.add_listener(lambda old, new: 1 / 0)
    monitor.add_listener(lambda old, new: heard.append(new.online))
    try:
        with caplog.at_level(logging.ERROR, logger="comfy_cluster.status"):
            monitor.refresh()
        assert heard == [True] and [r.getMessage() for r in caplog.records if r.exc_info] == ["status listener failed"]
    finally:
        monitor.close()


def test_our_jobs_count_on_a_server_until_it_shows_them_and_until_they_leave():
    monitor, clients, _ = _monitor()
    try:
        monitor.refresh()
        cold = monitor.job_reserved("a", Warmth(models=("ckpt_name=m.safetensors",), prompt="P", nodes=("n1", "n2")))
        assert cold is True  # the server has no model loaded yet
        snap = monitor.snapshot("a")
        assert (snap.in_flight, snap.unseen, snap.load) == (1, 1, 1)
        assert (snap.models, snap.prompt_key, snap.node_keys) == (("ckpt_name=m.safetensors",), "P", ("n1", "n2"))
        assert monitor.job_reserved("a", Warmth(models=("ckpt_name=m.safetensors",))) is False  # loaded by the first
        assert monitor.job_reserved("a") is False  # loads nothing
        snap = monitor.snapshot("a")
        assert (snap.in_flight, snap.unseen, snap.load) == (3, 3, 3)
        assert (snap.models, snap.prompt_key, snap.node_keys) == (("ckpt_name=m.safetensors",), "P", ("n1", "n2"))
        monitor.queue_reading("a", 2)  # the server shows two of them: one running, one waiting
        snap = monitor.snapshot("a")
        assert (snap.queue_running, snap.queue_pending, snap.unseen, snap.in_flight, snap.load) == (1, 1, 0, 3, 3)
        monitor.queue_reading("a", 1)
        snap = monitor.snapshot("a")
        assert (snap.queue_running, snap.queue_pending) == (1, 0)  # one job: it runs
        monitor.queue_reading("a", 5)
        snap = monitor.snapshot("a")
        assert (snap.queue_running, snap.queue_pending, snap.load) == (1, 4, 5)
        monitor.queue_reading("a", 0)
        snap = monitor.snapshot("a")
        assert (snap.queue_running, snap.queue_pending, snap.load) == (0, 0, 3)  # never below our own jobs there
        monitor.queue_reading("a", -1)  # no reading
        assert monitor.snapshot("a") == snap
        versions = [monitor.version]
        monitor.job_released("a")
        versions.append(monitor.version)
        monitor.job_released("a", ok=False)
        versions.append(monitor.version)
        assert len(set(versions)) == 3  # readers cache what they derive until it changes
        snap = monitor.snapshot("a")
        assert (snap.in_flight, snap.jobs_succeeded, snap.jobs_failed, snap.avg_job_seconds) == (1, 0, 1, None)
        monitor.job_released("a", ok=True, seconds=0.0)  # no duration to learn from
        monitor.job_released("a")  # one more than counted: never below zero
        snap = monitor.snapshot("a")
        assert (snap.in_flight, snap.jobs_succeeded, snap.jobs_failed, snap.avg_job_seconds) == (0, 1, 1, None)
    finally:
        monitor.close()


def test_a_reading_of_an_offline_server_is_not_taken_and_an_outage_forgets_what_was_loaded():
    monitor, clients, clock = _monitor()
    try:
        monitor.queue_reading("a", 3)  # never probed: offline
        assert monitor.snapshot("a").load == 0
        monitor.refresh()
        monitor.job_reserved("a", Warmth(models=("m",), prompt="P", nodes=("n",)))
        monitor.mark_failed("a", "gone")
        snap = monitor.snapshot("a")
        assert (snap.online, snap.models, snap.prompt_key, snap.node_keys, snap.in_flight) == (False, (), None, (), 1)
        monitor.queue_reading("a", 3)
        assert monitor.snapshot("a").queue_pending == 0
    finally:
        monitor.close()


def test_job_durations_are_learned_per_server_apart_for_jobs_that_loaded_a_model():
    monitor, _, _ = _monitor(("a", "b"))
    try:
        monitor.job_released("a", ok=True, seconds=10.0)
        assert monitor.snapshot("a").avg_job_seconds == 10.0 and monitor.snapshot("a").model_load_seconds is None
        monitor.job_released("a", ok=True, seconds=20.0)
        assert monitor.snapshot("a").avg_job_seconds == pytest.approx(10.0 + EMA_ALPHA * 10.0)
        assert EMA_ALPHA == 0.3  # README: "followed within a few jobs"
        monitor.job_released("a", ok=True, seconds=40.0, cold=True)
        snap = monitor.snapshot("a")
        assert snap.cold_job_seconds == 40.0 and snap.avg_job_seconds == pytest.approx(13.0)
        assert snap.model_load_seconds == pytest.approx(27.0)
        monitor.job_released("a", ok=True, seconds=50.0, cold=True)
        assert monitor.snapshot("a").cold_job_seconds == pytest.approx(43.0)
        monitor.job_released("a", ok=False, seconds=99.0)  # a failure teaches nothing of speed
        monitor.job_released("a", seconds=99.0)  # nor a move or a cancel
        assert monitor.snapshot("a").avg_job_seconds == pytest.approx(13.0) and monitor.snapshot("a").jobs_succeeded == 4
        assert monitor.snapshot("b").avg_job_seconds is None
        monitor.job_released("b", ok=True, seconds=1.0, cold=True)
        monitor.job_released("b", ok=True, seconds=5.0)
        assert monitor.snapshot("b").model_load_seconds == 0.0  # a load never takes negative time
        monitor.job_released("b", ok=True, seconds=None)
        assert monitor.snapshot("b").avg_job_seconds == 5.0 and monitor.snapshot("b").jobs_succeeded == 3
    finally:
        monitor.close()


def test_a_server_not_probed_yet_shows_its_address_and_whether_it_is_enabled():
    clients = {"on": Client("on"), "off": Client("off")}
    servers = [ServerConfig(name="on", url="http://127.0.0.1:9001"), ServerConfig(name="off", url="http://127.0.0.1:9002", enabled=False)]
    monitor = StatusMonitor(servers, clients, clock=FakeClock(), background=False)  # type: ignore[arg-type]
    try:
        on, off = monitor.snapshots()
        assert (on.url, on.enabled, on.checked, on.online) == ("http://127.0.0.1:9001", True, False, False)
        assert (off.url, off.enabled) == ("http://127.0.0.1:9002", False)
    finally:
        monitor.close()


def test_the_status_as_json_has_the_load_and_the_model_load_time_but_no_cache_keys():
    snap = ServerStatus(name="a", url="http://x", queue_running=1, queue_pending=2, unseen=1, in_flight=1,
                        avg_job_seconds=2.0, cold_job_seconds=5.0, node_keys=("k",))
    data = snap.to_dict()
    assert data["load"] == 4 and data["model_load_seconds"] == 3.0 and "node_keys" not in data
    assert data["name"] == "a" and data["queue_pending"] == 2
    assert ServerStatus(name="a", url="x", in_flight=5, queue_pending=1).load == 5
    assert ServerStatus(name="a", url="x", cold_job_seconds=5.0).model_load_seconds is None


def test_a_server_being_probed_is_waited_for_not_probed_twice():
    """A second caller waits for the probe under way (woken when it ends, not at the bound
    of 10 minutes set here), and still probes the other servers it asked for."""
    monitor, clients, _ = _monitor(("a", "b"), probe_timeout=(300.0, 300.0))
    clients["a"].gate = threading.Event()
    done: List[str] = []
    first = threading.Thread(target=lambda: (monitor.probe(["a"]), done.append("first")), daemon=True)
    try:
        first.start()
        assert clients["a"].entered.wait(BOUND)
        second = threading.Thread(target=lambda: (monitor.probe(["a", "b"]), done.append("second")), daemon=True)
        second.start()
        wait_until(lambda: monitor.snapshot("b").online, what="b probed by the second caller", timeout=BOUND)
        monitor.probe(["a"], wait_for_them=False)  # neither waits nor probes again
        assert done == [] and clients["a"].probes == 1
        clients["a"].gate.set()
        first.join(BOUND)
        second.join(BOUND)
        assert sorted(done) == ["first", "second"] and monitor.snapshot("a").online
        assert clients["a"].probes == 1
        monitor.probe(["a"])  # that probe is over: a new one is made
        assert clients["a"].probes == 2
    finally:
        clients["a"].gate.set()
        monitor.close()


def test_a_forced_refresh_reflects_the_server_after_the_call_not_a_probe_begun_before_it():
    """``pool.status(refresh=True)`` right after a server went away: a probe that began before
    the call (the probe thread's, answered by the server while it was up) is waited for, then
    the server is probed again, so the answer is the server as it is now. Seen in CI: the
    forced refresh joined the probe thread's probe and said "online" for a refusing server."""
    monitor, clients, _ = _monitor(("a", "b"), probe_timeout=(300.0, 300.0))
    clients["a"].gate = threading.Event()
    earlier = threading.Thread(target=lambda: monitor.probe(["a"]), daemon=True)
    try:
        earlier.start()
        assert clients["a"].entered.wait(BOUND)  # reached the server while it was up
        clients["a"].queue_answer = ServerError("a: cannot connect: connection refused", server="a", fault="refused")
        result: List[Any] = []
        refresh = threading.Thread(target=lambda: result.append(monitor.refresh(force=True)), daemon=True)
        refresh.start()
        wait_until(lambda: monitor.snapshot("b").online, what="b probed by the refresh", timeout=BOUND)
        assert result == [] and clients["a"].probes == 1  # waiting for the probe under way
        clients["a"].gate.set()
        refresh.join(BOUND)
        assert result, "the refresh did not return"
        assert [s.online for s in result[0]] == [False, True]
        assert clients["a"].probes == 2
        assert not monitor.refresh(force=False)[0].online
    finally:
        clients["a"].gate.set()
        earlier.join(BOUND)
        monitor.close()


def test_every_server_is_probed_at_once_on_the_probe_threads():
    """Probes run in parallel, one per server (eight here, each held until all eight are under
    way), on threads named for the library, and the stats beside them."""
    names = tuple(f"s{i}" for i in range(8))
    monitor, clients, _ = _monitor(names)
    barrier = threading.Barrier(len(names), timeout=BOUND)
    for c in clients.values():
        c.barrier = barrier
    try:
        monitor.refresh()
        assert all(monitor.snapshot(n).online and monitor.snapshot(n).device_name for n in names)
        threads = {t for c in clients.values() for t in c.threads}
        assert all(t.name.startswith("comfy-cluster-probe") for t in threads) and len(threads) >= len(names)
    finally:
        monitor.close()


def test_the_probe_executor_shut_down_under_a_probe_leaves_nothing_to_wait_for():
    """close() shuts the probe executor down after it marks the monitor closed; a probe
    asked for in between finds the executor gone and must not leave the server marked as
    being probed (a later probe would wait for one never made: 10 minutes here)."""
    monitor, clients, _ = _monitor(("a",), probe_timeout=(300.0, 300.0))
    monitor._executor.shutdown()  # noqa: SLF001 - the state close() leaves between its two steps
    errors: List[BaseException] = []

    def ask() -> None:
        try:
            monitor.probe(["a"])
            monitor.probe(["a"])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    asked = threading.Thread(target=ask, daemon=True)
    asked.start()
    asked.join(BOUND)
    assert not asked.is_alive() and errors == [] and clients["a"].probes == 0
    monitor.close()


def test_the_round_trip_of_a_probe_is_shown_in_milliseconds(monkeypatch):
    import comfy_cluster.status as status_module

    class Time:  # the monitor's time module: a round-trip clock the fake server moves
        counter = 100.0
        monotonic = staticmethod(time.monotonic)

        @classmethod
        def perf_counter(cls) -> float:
            return cls.counter

    monkeypatch.setattr(status_module, "time", Time)
    monitor, clients, _ = _monitor()
    try:
        clients["a"].on_queue = lambda: setattr(Time, "counter", Time.counter + 0.25)
        monitor.refresh()
        assert monitor.snapshot("a").rtt_ms == pytest.approx(250.0)
    finally:
        monitor.close()


def test_a_probe_not_waited_for_still_lands():
    monitor, clients, _ = _monitor()
    try:
        monitor.probe(["a"], wait_for_them=False)
        wait_until(lambda: monitor.snapshot("a").online and monitor.snapshot("a").device_name, what="the probe", timeout=BOUND)
        assert monitor.submit(lambda x: x * 2, 21).result(BOUND) == 42
    finally:
        monitor.close()


def test_nothing_is_probed_after_close_and_asking_returns_at_once():
    """A probe asked for after close() (``pool.status()`` on a closed pool) is not made, and
    asking again does not wait for the one never made (here its bound would be 10 min)."""
    monitor, clients, _ = _monitor(("a", "b"), probe_timeout=(300.0, 300.0))
    monitor.close()
    asked = threading.Thread(target=lambda: [monitor.probe(["a", "b"]), monitor.refresh(force=True), monitor.probe(["a"])], daemon=True)
    asked.start()
    asked.join(BOUND)  # the bound only rules out the 10 minutes
    assert not asked.is_alive()
    assert clients["a"].probes == clients["b"].probes == 0


def test_the_probe_thread_keeps_the_status_fresh_and_is_gone_after_close(caplog):
    with caplog.at_level(logging.WARNING, logger="comfy_cluster.status"):
        before = set(threading.enumerate())  # another test's pool may still be ending its threads
        monitor, clients, _ = _monitor(("a", "b"), background=True, ttl=0.05, clock=time.monotonic)
        try:
            assert monitor.background
            # Re-probed every ttl without anyone asking (the bound only rules out a hang).
            wait_until(lambda: clients["a"].probes >= 3 and clients["b"].probes >= 3, what="probes every ttl", timeout=BOUND)
            # A daemon thread named for the library: a process that never closes its pool can exit.
            status = [t for t in set(threading.enumerate()) - before if t.name == "comfy-cluster-status"]
            assert len(status) == 1 and status[0].daemon
        finally:
            monitor.close()
    assert caplog.records == []  # the loop ran without an error
    assert not [t for t in set(threading.enumerate()) - before
                if t.name.startswith("comfy-cluster-status") or t.name.startswith("comfy-cluster-probe")]
    after = clients["a"].probes
    monitor.close()  # twice: harmless
    assert clients["a"].probes == after


def test_a_check_asked_for_wakes_the_probe_thread_and_an_error_in_its_loop_does_not_stop_it(caplog):
    monitor, clients, clock = _monitor(background=True, ttl=3600.0)
    try:
        wait_until(lambda: monitor.snapshot("a").checked, what="the first probe", timeout=BOUND)
        clock.advance(3600.0)
        monitor.request_check()  # not the hour's wait: at once
        wait_until(lambda: clients["a"].probes == 2, what="the asked-for probe", timeout=BOUND)
        real_due = monitor.due
        calls: List[int] = []

        def due_once_broken(**kw: Any) -> List[str]:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return real_due(**kw)

        monitor.due = due_once_broken  # type: ignore[method-assign]
        clock.advance(3600.0)
        with caplog.at_level(logging.ERROR, logger="comfy_cluster.status"):
            monitor.request_check()
            wait_until(lambda: clients["a"].probes == 3, what="the loop going on after the error", timeout=BOUND)
        assert [r.getMessage() for r in caplog.records if r.exc_info] == ["status monitor loop failed"]
    finally:
        monitor.close()


def test_the_probe_thread_comes_back_to_an_offline_server_at_the_end_of_its_backoff_not_its_ttl(caplog):
    """On the real clock: the status is good for an hour, but a server a job saw fail is
    probed again once its backoff (50 ms here) is over (the bound only rules out a hang)."""
    with caplog.at_level(logging.ERROR, logger="comfy_cluster.status"):
        monitor, clients, _ = _monitor(background=True, ttl=3600.0, backoff_base=0.05, clock=time.monotonic)
        try:
            wait_until(lambda: monitor.snapshot("a").checked, what="the first probe", timeout=BOUND)
            monitor.mark_failed("a", "connection refused")
            wait_until(lambda: monitor.snapshot("a").online, what="the re-probe after the backoff", timeout=BOUND)
            assert clients["a"].probes == 2
        finally:
            monitor.close()
    assert caplog.records == []


def test_a_failure_seen_by_a_job_wakes_the_probe_thread_for_the_backoff():
    monitor, clients, clock = _monitor(background=True, ttl=3600.0)
    try:
        wait_until(lambda: monitor.snapshot("a").checked, what="the first probe", timeout=BOUND)
        monitor.mark_failed("a", "connection refused")
        snap = monitor.snapshot("a")
        assert not snap.online and snap.next_probe_at == clock.now + 0.5
        clock.advance(0.5)  # the backoff is over; the thread, woken by the failure, probes at its end
        wait_until(lambda: monitor.snapshot("a").online, what="the re-probe after the backoff", timeout=BOUND)
    finally:
        monitor.close()
