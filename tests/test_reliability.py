"""Reliability: the cluster client loses nothing while servers fail around it.

Everything runs for real on loopback: mock ComfyUI servers (aiohttp threads), the pool's
threads, real sockets. The long runs are marked ``slow`` (deselected by default; CI and
docs/RELIABILITY.md run them with ``-m "slow or not slow"``). Each test prints its figures
(``-s`` shows them); docs/RELIABILITY.md records them.

Related checks that live elsewhere (not repeated here):
* any ``NUKE_COMFYUI_SERVERS`` text gives a pool or a ConfigError: tests/test_config.py
  (``test_any_text_gives_servers_or_config_error``, ``test_any_json_array_gives_servers_or_config_error``);
* a workflow that is not a dict of nodes, or a missing input file, is refused before anything
  is sent: tests/test_jobs.py (``test_bad_input_is_refused_before_anything_is_sent``);
* server-given file names that escape the target folder: tests/test_jobs.py
  (``test_download_refuses_names_that_escape``, ``test_download_refuses_symlinked_subfolder``)
  and the hypothesis test over ``safe_join`` in tests/test_security.py.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import random
import threading
import time
from typing import Any, Dict, List

import pytest
import requests
from helpers import callbacks_delivered, servers_of, sleep_workflow, wait_until
from reliability_util import RawServer, SubprocessMock, rss_bytes, socket_fds, trimmed_rss_bytes

from comfy_cluster import JobResult, NoServerAvailable, ServerError, ServerPool
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig
from comfy_cluster.events import ServerSocket
from comfy_cluster.testing import Fault

FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0)
MiB = 1024 * 1024


def report(**figures: Any) -> None:
    print("FIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()))


class HistoryWatch:
    """Records when each prompt_id first appears in a server's history (the server finished it)."""

    def __init__(self, servers: List[Any]) -> None:
        self.servers = servers
        self.first_seen: Dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            now = time.monotonic()
            for s in self.servers:
                for pid in s.history_ids():
                    self.first_seen.setdefault(pid, now)

    def __enter__(self) -> "HistoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        # A last look: on a loaded machine this thread may not have run since the last items
        # were written (their lag then reads as <= 0, never as a false delay).
        now = time.monotonic()
        for s in self.servers:
            for pid in s.history_ids():
                self.first_seen.setdefault(pid, now)


# ---------------------------------------------------------------------------------------------
# 1. A batch of 200 jobs over 4 servers while servers are killed and brought back.

CHAOS_JOBS = 200
CHAOS_KILLS_PER_KILLER = 6  # two killers: 12 kills per run


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_batch_every_job_succeeds_exactly_once(mock_cluster_factory, seed):
    rng = random.Random(seed)
    cluster = mock_cluster_factory(speeds=(1, 1, 1, 1))
    prefixes = [f"chaos{seed}_{i:03d}" for i in range(CHAOS_JOBS)]
    workflows = [sleep_workflow(0.1, steps=2, prefix=p) for p in prefixes]
    seeds = [wf["2"]["inputs"]["seed"] for wf in workflows]
    succeeded_events: Dict[int, int] = collections.Counter()
    lock = threading.Lock()

    def on_event(ev):
        if ev.kind == "succeeded":
            with lock:
                succeeded_events[ev.index] += 1

    kills: List[str] = []
    done = threading.Event()

    busy = set()
    busy_lock = threading.Lock()

    def killer():
        pause = threading.Event()
        for _ in range(CHAOS_KILLS_PER_KILLER):
            if pause.wait(rng.uniform(0.3, 1.5)) or done.is_set():
                return
            with busy_lock:  # two killers never work on the same server at once
                free = [s for s in cluster.servers if s.name not in busy]
                victim = rng.choice(free)
                busy.add(victim.name)
            down = rng.uniform(0.2, 2.0)
            try:
                if rng.random() < 0.5:
                    kills.append(f"restart {victim.name} {down:.1f}s")
                    victim.restart(down_for=down)  # loses queue, history and the running job
                else:
                    kills.append(f"refuse {victim.name} {down:.1f}s")
                    victim.set_fault(Fault.REFUSE)  # unreachable, keeps its work
                    pause.wait(down)
                    victim.set_fault(None)
            finally:
                with busy_lock:
                    busy.discard(victim.name)

    started = time.monotonic()
    with ServerPool(
        servers_of(cluster), status_ttl=0.5, backoff_cap=1.0, ws_connect_timeout=5.0, probe_timeout=(0.5, 0.5),
        reconcile_interval=0.5, server_lost_after=2.0, wait_for_server=60.0, request_timeout=(1.0, 5.0),
    ) as pool:
        batch = pool.map_async(workflows, on_event=on_event, retries=10)
        killers = [threading.Thread(target=killer, daemon=True) for _ in range(2)]
        for k in killers:
            k.start()
        results = batch.results(timeout=150, return_exceptions=True)
        done.set()
        for k in killers:
            k.join(timeout=30)
        elapsed = time.monotonic() - started
        errors = [r for r in results if not isinstance(r, JobResult)]
        assert errors == [], f"{len(errors)} jobs did not succeed, first: {errors[:1]}"
        assert [j.status for j in batch.jobs] == ["succeeded"] * CHAOS_JOBS
        # Reported exactly once: one "succeeded" event per job, one result per job, distinct ids
        # (once every job's on_event calls ran: results() may return before them).
        assert all(callbacks_delivered(job) for job in batch.jobs)
        assert dict(succeeded_events) == {i: 1 for i in range(CHAOS_JOBS)}
        assert batch.counts() == (CHAOS_JOBS, 0, CHAOS_JOBS)
        assert len({r.prompt_id for r in results}) == CHAOS_JOBS
        # Every output is the job's own: its prompt ran on the server named, with the job's
        # seed, and the files carry the job's prefix.
        received = {s.name: {pid: prompt for pid, prompt, _ in s.received_prompts} for s in cluster.servers}
        for i, r in enumerate(results):
            assert r.prompt_id in cluster.by_name(r.server).executed_prompt_ids
            assert received[r.server][r.prompt_id]["2"]["inputs"]["seed"] == seeds[i]
            assert r.files and all(f.filename.startswith(prefixes[i] + "_") for f in r.files)
        attempts = [j.attempts for j in batch.jobs]
        executed = collections.Counter(pid for s in cluster.servers for pid in s.executed_prompt_ids)
        ours = {r.prompt_id for r in results}
        report(
            test="chaos", seed=seed, jobs=CHAOS_JOBS, kills=len(kills), succeeded=len(results) - len(errors),
            moved_jobs=sum(1 for a in attempts if a > 1), max_attempts=max(attempts),
            extra_copies_run=sum(executed.values()) - len(ours), seconds=round(elapsed, 1),
            kill_list="|".join(kills).replace(" ", "_"),
        )
        assert len(kills) >= CHAOS_KILLS_PER_KILLER  # the faults really happened


# ---------------------------------------------------------------------------------------------
# 2. Websockets dropped mid-job while the servers live.


def _ws_drop_run(cluster, jobs, seconds, drop_schedule):
    done_at: Dict[str, float] = {}
    with HistoryWatch(cluster.servers) as watch:
        # The periodic reconcile never comes during the test (1 h): only the drop's own handling
        # (a reconcile on the drop, polling while the new socket may be deaf) can end the jobs,
        # however slow the machine. The servers live: ws_connect_timeout only bounds a hang (at
        # 1 s a loaded machine's slow reconnect marked a server offline and moved its job).
        with ServerPool(servers_of(cluster), ws_connect_timeout=10.0, reconcile_interval=3600.0) as pool:
            js = [pool.submit(sleep_workflow(seconds, steps=10)) for _ in range(jobs)]
            for j in js:
                j.add_done_callback(lambda job: done_at.__setitem__(job.prompt_id, time.monotonic()))
            # Mid-job on most servers (a loaded machine may not start all four at once).
            wait_until(lambda: sum(j.status == "running" for j in js) >= len(cluster.servers) - 1, timeout=20, what="jobs running")
            drops = drop_schedule(js)
            results = [j.result(timeout=30) for j in js]
    lags = [done_at[r.prompt_id] - watch.first_seen[r.prompt_id] for r in results]
    return js, results, lags, drops


def test_websocket_dropped_mid_job_every_job_completes_promptly(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1, 1, 1))

    def drop_once(js):
        return sum(s.drop_websockets() for s in cluster.servers)

    js, results, lags, drops = _ws_drop_run(cluster, 8, 1.0, drop_once)
    assert drops >= 3
    assert all(j.attempts == 1 for j in js)  # noticed on the same server, not resubmitted
    executed = [pid for s in cluster.servers for pid in s.executed_prompt_ids]
    assert sorted(executed) == sorted(r.prompt_id for r in results)  # each ran exactly once
    report(test="ws_drop_once", jobs=len(js), drops=drops, max_lag_s=round(max(lags), 2))
    # Noticed without the periodic reconcile (see _ws_drop_run), within a bound that only
    # a hang (or polling far slower than the deaf-socket interval, 1 s) exceeds.
    assert max(lags) < 10.0, lags


@pytest.mark.slow
def test_websocket_drop_storm_every_job_completes_promptly(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1, 1, 1))
    rng = random.Random(7)

    def storm(js):
        count = 0
        pause = threading.Event()
        while not all(j.done for j in js):
            count += rng.choice(cluster.servers).drop_websockets()
            pause.wait(rng.uniform(0.05, 0.4))
        return count

    js, results, lags, drops = _ws_drop_run(cluster, 16, 0.5, storm)
    assert drops >= 10
    assert all(j.attempts == 1 for j in js)
    report(test="ws_drop_storm", jobs=len(js), drops=drops, max_lag_s=round(max(lags), 2))
    assert max(lags) < 10.0, lags  # as in test_websocket_dropped_mid_job_every_job_completes_promptly


# ---------------------------------------------------------------------------------------------
# 3. Servers that hang, answer 500, malformed or truncated JSON, or endless/huge bodies.

FAULT_REASON = {
    Fault.HANG: r"timed out",
    Fault.ERROR_500: r"HTTP 500",
    Fault.MALFORMED: r"malformed",
    Fault.TRUNCATED: r"cut short|incomplete|websocket|aborted|closed|reset",
    Fault.HUGE: r"cap|exceeds",
}
CALL_TIMEOUT = (0.5, 1.0)
BOUND = sum(CALL_TIMEOUT) * 2 + 3.0  # connect + headers + body, and a generous margin


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=pytest.mark.slow) if f is Fault.HANG else f for f in FAULT_REASON], ids=lambda f: f.value
)
def test_faulty_server_every_call_is_bounded(mock_comfy, fault):
    mock_comfy.set_fault(fault)
    client = ComfyClient(ServerConfig(name="bad", url=mock_comfy.url), timeout=CALL_TIMEOUT)
    calls = {
        "queue": client.queue,
        "history": lambda: client.history("00000000-0000-4000-8000-000000000000"),
        "system_stats": client.system_stats,
        "object_info": client.object_info,
        "post_prompt": lambda: client.post_prompt({"prompt": sleep_workflow(), "client_id": "x"}),
        "interrupt": lambda: client.interrupt("00000000-0000-4000-8000-000000000000"),
    }
    worst = 0.0
    try:
        for name, call in calls.items():
            t0 = time.monotonic()
            try:
                call()
            except ServerError as exc:
                assert str(exc).startswith("bad: ")
            else:
                # /interrupt answers an empty body, which no fault but hang/500 can spoil.
                assert name == "interrupt" and fault not in (Fault.HANG, Fault.ERROR_500), f"{name} did not fail"
            took = time.monotonic() - t0
            worst = max(worst, took)
            assert took < BOUND, f"{name} took {took:.1f} s"
    finally:
        client.close()
        mock_comfy.set_fault(None)
    report(test="fault_calls", fault=fault.value, calls=len(calls), worst_s=round(worst, 2))


@pytest.mark.parametrize("fault", list(FAULT_REASON), ids=lambda f: f.value)
def test_faulty_server_is_marked_offline_and_jobs_go_elsewhere(mock_cluster_factory, fault):
    cluster = mock_cluster_factory(speeds=(1, 1))
    bad, good = cluster.servers
    servers = [dict(s, priority=i) for i, s in enumerate(servers_of(cluster))]  # bad is preferred
    knobs: Dict[str, Any] = dict(FAST, request_timeout=CALL_TIMEOUT)
    if fault is Fault.HANG:
        knobs.update(ws_connect_timeout=1.0, probe_timeout=(0.5, 0.5))  # the hung server costs this long
    if fault is Fault.HUGE:
        # Only the size cap may stop an endless body: with the usual sub-second read timeouts a
        # loaded machine reads less than the 32 MiB cap in time, and the reason becomes a
        # time-out instead (a race with the machine's load, not what this case is about).
        knobs.update(probe_timeout=(0.5, 60.0), request_timeout=(0.5, 60.0))
    with ServerPool(servers, strategy="priority", **knobs) as pool:
        wf = sleep_workflow()
        pool.select(wf)  # status and node lists read while both are fine
        bad.set_fault(fault)
        t0 = time.monotonic()
        jobs = [pool.submit(sleep_workflow()) for _ in range(3)]
        results = [j.result(timeout=30) for j in jobs]
        assert all(r.server == good.name for r in results)
        st = pool.status(refresh=True)[0]
        took = time.monotonic() - t0
        assert not st.online
        assert st.error
        import re

        assert re.search(FAULT_REASON[fault], st.error), st.error
        report(test="fault_pool", fault=fault.value, jobs=len(jobs), reason=repr(st.error), seconds=round(took, 1))
        bad.set_fault(None)


def test_dripping_body_cannot_hang_a_call():
    """A server that sends a byte now and then never trips the per-read timeout; the whole
    answer must still come within the read timeout (or the call fails)."""
    stop = threading.Event()

    def drip(path, wfile):
        wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        wfile.flush()
        while not stop.is_set():
            wfile.write(b"1\r\n \r\n")
            wfile.flush()
            stop.wait(0.1)

    with RawServer(drip) as srv:
        client = ComfyClient(ServerConfig(name="drip", url=srv.url), timeout=CALL_TIMEOUT)
        outcome: List[Any] = []

        def call():
            try:
                client.queue()
            except ServerError as exc:
                outcome.append(exc)

        t0 = time.monotonic()
        th = threading.Thread(target=call, daemon=True)
        th.start()
        th.join(BOUND)
        took = time.monotonic() - t0
        stop.set()
        assert not th.is_alive(), "a dripping server held the call past its timeout"
        assert outcome and "timed out" in str(outcome[0])
        client.close()
    report(test="drip", seconds=round(took, 2))


@pytest.mark.slow
def test_huge_http_answers_are_capped_and_memory_stays_bounded():
    """64 MiB endless JSON bodies: refused at the cap, and memory does not pile up."""
    with SubprocessMock("huge") as srv:
        _huge_http(srv.url)


def _huge_http(url):
    client = ComfyClient(ServerConfig(name="huge", url=url), timeout=(1.0, 5.0))
    gc.collect()
    before = rss_bytes()
    peak = before
    for _ in range(6):
        with pytest.raises(ServerError, match="cap"):
            client.queue()
        peak = max(peak, rss_bytes())
    client.close()
    gc.collect()
    growth = peak - before
    report(test="huge_http", calls=6, cap_mib=client.max_json_bytes // MiB, rss_growth_mib=round(growth / MiB, 1))
    # One answer may be held up to the 32 MiB cap (plus its join); six of them kept would be 200+.
    assert growth < 100 * MiB


@pytest.mark.slow
def test_huge_websocket_message_is_refused_and_memory_stays_bounded():
    with SubprocessMock("huge") as srv:  # every websocket gets a 32 MiB text frame after its status
        _huge_ws(srv.url)


def _huge_ws(url):
    cfg = ServerConfig(name="huge", url=url)
    seen: List[Dict[str, Any]] = []
    sock = ServerSocket(cfg, "c0ffee00-0000-4000-8000-000000000000", connect_timeout=2.0)
    sock.register("listener", seen.append)  # a listener keeps the reader reconnecting
    gc.collect()
    before = rss_bytes()
    try:
        sock.ensure_connected()
        wait_until(
            lambda: sum(1 for m in seen if m["type"] == "_disconnected") >= 3, timeout=20, what="three huge frames refused"
        )
        peak = rss_bytes()
    finally:
        sock.close()
    reasons = {m["data"]["reason"] for m in seen if m["type"] == "_disconnected"}
    assert all("exceeds" in r for r in reasons), reasons
    growth = peak - before
    report(test="huge_ws", refused=sum(1 for m in seen if m["type"] == "_disconnected"), rss_growth_mib=round(growth / MiB, 1))
    assert growth < 100 * MiB


# ---------------------------------------------------------------------------------------------
# 4. Every server down: NoServerAvailable at once; when one comes back, new jobs run.


def test_every_server_down_is_immediate_and_recovery_runs_new_jobs(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    with ServerPool(servers_of(cluster), status_ttl=0.5, backoff_cap=1.0, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0)) as pool:
        pool.submit(sleep_workflow()).result(timeout=10)
        for s in cluster.servers:
            s.set_fault(Fault.REFUSE)
        wait_until(lambda: not any(st.online for st in pool.status(refresh=True)), timeout=10, what="all offline")
        t0 = time.monotonic()
        with pytest.raises(NoServerAvailable) as info:
            pool.submit(sleep_workflow())
        took = time.monotonic() - t0
        assert took < 10.0  # at once, not after wait_for_server (30 s)
        assert set(info.value.reasons) == {s.name for s in cluster.servers}
        assert all(r.startswith("offline:") and "refused" in r for r in info.value.reasons.values())
        back = cluster.servers[1]
        back.set_fault(None)
        t1 = time.monotonic()

        def submitted():
            try:
                return pool.submit(sleep_workflow())
            except NoServerAvailable:
                return None

        job = wait_until(submitted, timeout=10, what="a server back in the pool")
        res = job.result(timeout=10)
        recovered = time.monotonic() - t1
        assert res.server == back.name
        report(test="all_down", servers=3, refused_in_s=round(took, 3), back_in_s=round(recovered, 2))


@pytest.mark.slow
def test_servers_going_down_under_queued_jobs_then_back(mock_cluster_factory):
    """Jobs waiting in the pool when every server dies are kept, and run once one returns."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    with ServerPool(servers_of(cluster), status_ttl=0.5, backoff_cap=1.0, ws_connect_timeout=5.0, probe_timeout=(0.5, 0.5),
                    reconcile_interval=0.5, server_lost_after=2.0, wait_for_server=30.0, request_timeout=(0.5, 2.0)) as pool:
        for s in cluster.servers:  # the jobs are still there when the servers go, however loaded the machine
            s.pause_jobs()
        jobs = [pool.submit(sleep_workflow(0.3, steps=3)) for _ in range(6)]
        wait_until(lambda: any(j.status == "running" for j in jobs), timeout=10, what="a job running")
        for s in cluster.servers:
            s.set_fault(Fault.REFUSE)
            s.resume_jobs()
        threading.Event().wait(1.0)  # schedule: the outage lasts a while
        cluster.servers[0].set_fault(None)
        results = [j.result(timeout=40) for j in jobs]
        assert len({r.prompt_id for r in results}) == 6
        report(test="down_under_queue", jobs=6, moved=sum(1 for j in jobs if j.attempts > 1))


# ---------------------------------------------------------------------------------------------
# 6. Load: 2000 short jobs over 8 servers from 8 threads; no leaked threads, sockets or memory.

LOAD_JOBS = 2000
LOAD_THREADS = 8
#: 0.5 to 2.4 MiB measured after a warm-up load (see the test): a leak of 8 KB per job crosses it.
RSS_BOUND = 16 * MiB


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_load_2000_jobs_8_servers_8_threads_leaves_nothing_behind():
    # The servers run in processes of their own: this process's memory is then the
    # library's (in-process mocks keep every job's history here).
    with contextlib.ExitStack() as stack:
        mocks = [stack.enter_context(SubprocessMock(name=f"load{i}", speed=100)) for i in range(8)]
        servers = [{"name": m.name, "url": m.url} for m in mocks]
        # A first load of the same size brings the process to its working size (each
        # thread's allocator arena, caches: 12 to 35 MiB here, once); measured from its end,
        # the second load must leave nothing behind.
        _load(servers, mocks, LOAD_JOBS)
        wait_until(lambda: socket_fds() == 0, timeout=10, what="the warm-up's sockets closed")
        threads_before = set(threading.enumerate())
        sockets_before = socket_fds()
        rss_before = trimmed_rss_bytes()
        t0 = time.monotonic()
        peak_threads = _load(servers, mocks, LOAD_JOBS)
        elapsed = time.monotonic() - t0
        wait_until(lambda: set(threading.enumerate()) <= threads_before, timeout=10, what="library threads gone")
        wait_until(lambda: socket_fds() <= sockets_before, timeout=10, what="sockets back to the baseline")
        growth = trimmed_rss_bytes() - rss_before
        report(
            test="load", jobs=LOAD_JOBS, servers=8, threads=LOAD_THREADS, seconds=round(elapsed, 1),
            peak_threads=peak_threads, sockets_before=sockets_before, sockets_after=socket_fds(),
            rss_growth_mib=round(growth / MiB, 1),
        )
        assert growth < RSS_BOUND


def _load(servers: List[Dict[str, Any]], mocks: List[SubprocessMock], count: int) -> int:
    """``count`` jobs from LOAD_THREADS threads on a pool of ``servers``, closed after;
    checks every job succeeded once with its own prompt_id; returns the most threads seen."""
    results: List[str] = []
    failures: List[BaseException] = []
    lock = threading.Lock()
    peak = [threading.active_count()]
    pool = ServerPool([dict(s, max_queue=4) for s in servers], ws_connect_timeout=2.0)
    try:
        def work():
            jobs = [pool.submit(sleep_workflow(0.0, steps=1)) for _ in range(count // LOAD_THREADS)]
            for j in jobs:
                try:
                    r = j.result(timeout=200)
                except BaseException as exc:  # collected and asserted below
                    with lock:
                        failures.append(exc)
                else:
                    with lock:
                        results.append(r.prompt_id)
                        peak[0] = max(peak[0], threading.active_count())

        workers = [threading.Thread(target=work, name=f"load-{i}") for i in range(LOAD_THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        pool.close()
    assert failures == []
    assert len(results) == count == len(set(results))
    executed = {pid for m in mocks for pid in requests.get(m.url + "/history", timeout=30).json()}
    assert set(results) <= executed
    return peak[0]


def test_offline_server_comes_back_without_the_background_thread(mock_comfy):
    """With ``background_status=False`` an offline server whose backoff is over is re-probed by
    ``submit``/``select`` without waiting for it, so new jobs run once it is back (this failed
    before: only an explicit ``pool.status()`` revived it)."""
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False, status_ttl=0.2,
                    backoff_cap=1.0, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0)) as pool:
        pool.submit(sleep_workflow()).result(timeout=10)
        mock_comfy.set_fault(Fault.REFUSE)
        wait_until(lambda: not pool.status(refresh=True)[0].online, what="offline")
        with pytest.raises(NoServerAvailable):
            pool.submit(sleep_workflow())
        mock_comfy.set_fault(None)

        def submitted():
            try:
                return pool.submit(sleep_workflow())  # no pool.status() call: submit alone
            except NoServerAvailable:
                return None

        job = wait_until(submitted, timeout=10, what="the server back for new jobs")
        assert job.result(timeout=10).server == "m"
