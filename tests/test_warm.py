"""Warm-model routing: what a workflow leaves warm (pure), the warm_models strategy (table
tests over snapshots), the mock's model loads, and the pool recording what ran where."""

from __future__ import annotations

import copy
import io
import random
from typing import Any

import requests
from helpers import wait_until

from comfy_cluster import ServerConfig, ServerPool
from comfy_cluster.balance import Candidate, WarmModels, expected_seconds
from comfy_cluster.status import ServerStatus
from comfy_cluster.testing.cli import run_mock_server
from comfy_cluster.testing.workflows import txt2img_workflow
from comfy_cluster.warm import model_files, warmth_of

A, B = "a.safetensors", "b.safetensors"


def test_model_files_are_the_loaders_model_inputs():
    wf = txt2img_workflow(ckpt_name=A)
    wf["10"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "detail.safetensors", "strength_model": 1.0, "model": ["4", 0], "clip": ["4", 1]}}
    wf["11"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.sft", "weight_dtype": "default"}}
    wf["12"] = {"class_type": "LoadImage", "inputs": {"image": "plate.png"}}  # not a model
    assert model_files(wf) == ("ckpt_name=a.safetensors", "lora_name=detail.safetensors", "unet_name=flux1-dev.sft")


def test_warmth_keys_follow_content_not_node_ids():
    one = txt2img_workflow(ckpt_name=A, seed=1)
    renumbered = {str(int(k) + 100): copy.deepcopy(v) for k, v in one.items()}
    for node in renumbered.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = [str(int(value[0]) + 100), value[1]]
    assert warmth_of(one).prompt == warmth_of(renumbered).prompt
    other_seed = warmth_of(txt2img_workflow(ckpt_name=A, seed=2))
    assert other_seed.prompt != warmth_of(one).prompt
    # An artist iterating on the seed shares the loader and the text encodings.
    assert len(set(other_seed.nodes) & set(warmth_of(one).nodes)) == 4


def cand(i, *, load=0, models=(), prompt=None, nodes=(), avg=None, cold=None):
    srv = ServerConfig(name=f"s{i}", host="127.0.0.1", port=1000 + i)
    st = ServerStatus(name=srv.name, url=srv.url, online=True, queue_pending=load, in_flight=load,
                      models=tuple(models), prompt_key=prompt, node_keys=tuple(nodes),
                      avg_job_seconds=avg, cold_job_seconds=cold)
    return Candidate(srv, st, i, expected_seconds([st], [srv])[0])


def test_warm_models_weighs_a_load_against_the_queue():
    w = warmth_of(txt2img_workflow(ckpt_name=A))
    wf = txt2img_workflow(ckpt_name=A)
    strategy = WarmModels(random.Random(1))
    # Load learned: 4 s (cold jobs 5 s, warm 1 s). A warm server 3 jobs deep beats an idle cold one ...
    assert strategy.select([cand(0, load=3, models=w.models, avg=1.0, cold=5.0), cand(1, avg=1.0, cold=5.0)], wf).name == "s0"
    # ... but not 5 jobs deep.
    assert strategy.select([cand(0, load=5, models=w.models, avg=1.0, cold=5.0), cand(1, avg=1.0, cold=5.0)], wf).name == "s1"
    # No model in the workflow: the earliest finish, as fastest_completion.
    assert strategy.select([cand(0, load=2), cand(1, load=1)], {"1": {"class_type": "EmptyImage", "inputs": {}}}).name == "s1"


def test_warm_models_sends_an_identical_prompt_where_it_is_cached():
    wf = txt2img_workflow(ckpt_name=A, seed=7)
    w = warmth_of(wf)
    other = warmth_of(txt2img_workflow(ckpt_name=A, seed=8))
    picks = {WarmModels(random.Random(s)).select(
        [cand(0, load=1, models=w.models, prompt=other.prompt, nodes=other.nodes),
         cand(1, load=1, models=w.models, prompt=w.prompt, nodes=w.nodes)], wf).name for s in range(20)}
    assert picks == {"s1"}


def test_place_keeps_a_free_server_for_the_jobs_warm_there_and_waits_for_its_own():
    wa, wb = warmth_of(txt2img_workflow(ckpt_name=A)), warmth_of(txt2img_workflow(ckpt_name=B))
    strategy = WarmModels(random.Random(1))
    full_a = cand(0, load=2, models=wa.models, avg=1.0, cold=5.0)
    free_b = cand(1, load=1, models=wb.models, avg=1.0, cold=5.0)
    # B jobs wait too: the free B server stays theirs; A's backlog (2 + 1 jobs) < a load: wait.
    assert strategy.place([free_b], [full_a, free_b], wa, {wa.models: 1, wb.models: 3}) is None
    # No B job waits, A's backlog is short: still wait for the warm server.
    assert strategy.place([free_b], [full_a, free_b], wa, {wa.models: 1}) is None
    # A's backlog (2 + 9 jobs) is longer than a load: warm a second server for A.
    assert strategy.place([free_b], [full_a, free_b], wa, {wa.models: 9}).name == "s1"
    # A B job takes the free B server at once.
    assert strategy.place([free_b], [full_a, free_b], wb, {wa.models: 9, wb.models: 3}).name == "s1"


def test_mock_loads_a_checkpoint_once_and_shows_it_in_vram(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1.0,), models=[A, B], model_load_seconds=0.05)
    server = cluster.servers[0]
    free_before = requests.get(server.url + "/system_stats", timeout=10).json()["devices"][0]["vram_free"]
    with ServerPool([{"name": "m", "url": server.url}]) as pool:
        for ckpt, seed in ((A, 1), (A, 2), (B, 3), (A, 4)):
            pool.submit(txt2img_workflow(ckpt_name=ckpt, seed=seed)).result(timeout=60)
    assert server.model_loads == 3 and server.loaded_model == A  # A, then B, then A again
    free_after = requests.get(server.url + "/system_stats", timeout=10).json()["devices"][0]["vram_free"]
    assert free_after == free_before - 2 * 1024**3
    server.restart(0.0)
    wait_until(lambda: server.loaded_model is None, what="a restart unloads the model")


def test_the_pool_records_what_ran_where_and_routes_the_next_job_there(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1.0, 1.0), models=[A, B])
    servers = [{"name": f"g{i}", "url": s.url} for i, s in enumerate(cluster.servers)]
    with ServerPool(servers, strategy="warm_models") as pool:
        first = pool.submit(txt2img_workflow(ckpt_name=A, seed=1))
        first.result(timeout=60)
        st = {s.name: s for s in pool.status()}[first.server.name]
        assert st.models == ("ckpt_name=a.safetensors",) and st.cold_job_seconds is not None
        # Nothing else runs: the next A job goes where A is loaded, 5 times out of 5.
        for seed in range(2, 7):
            job = pool.submit(txt2img_workflow(ckpt_name=A, seed=seed))
            job.result(timeout=60)
            assert job.server.name == first.server.name
    assert sum(s.model_loads for s in cluster.servers) == 1


def test_mock_server_cli_takes_a_model_load_time_and_shows_the_loaded_model():
    out = io.StringIO()
    code = run_mock_server(["--port", "0", "--model-load-seconds", "2.5"], stdin=io.StringIO("status\nquit\n"), stdout=out)
    text = out.getvalue()
    assert code == 0 and "a checkpoint load takes 2.5 s" in text and "model=- loads=0" in text
    out = io.StringIO()
    assert run_mock_server(["--port", "0", "--model-load-seconds", "-1"], stdin=io.StringIO(""), stdout=out) == 1
    assert "model_load_seconds must be >= 0, got -1.0" in out.getvalue()


def test_a_free_server_goes_to_the_waiting_job_warm_there_not_to_the_oldest(mock_cluster_factory):
    # A load (1 s) costs more than waiting behind one short job on the warm server.
    cluster = mock_cluster_factory(speeds=(1.0, 1.0), models=[A, B], model_load_seconds=1.0)
    by_url = {s.url: s for s in cluster.servers}
    servers = [{"name": f"g{i}", "url": s.url, "max_queue": 1} for i, s in enumerate(cluster.servers)]
    for s in cluster.servers:
        s.pause_jobs()
    with ServerPool(servers) as pool:  # the default strategy (warm_models), as the gateway wraps it
        pool.use_cache_affinity()
        a1 = pool.submit(txt2img_workflow(ckpt_name=A, seed=1))
        wait_until(lambda: a1.prompt_id is not None, what="A1 on a server")
        b1 = pool.submit(txt2img_workflow(ckpt_name=B, seed=2))
        wait_until(lambda: b1.prompt_id is not None, what="B1 on the other server")
        x, y = a1.server.name, b1.server.name
        assert x != y
        a2 = pool.submit(txt2img_workflow(ckpt_name=A, seed=3))  # the oldest waiting job
        b2 = pool.submit(txt2img_workflow(ckpt_name=B, seed=4))
        # B's server frees first, and stays paused: B2 is held there in turn, so both servers
        # are full again and A2's wait for A's server is not bounded by its own clock here.
        assert b1.cancel()
        wait_until(lambda: b2.prompt_id is not None, what="B2 on B's server")
        assert b2.server.name == y and not a2.done and a2.server is None  # A2, the oldest, left it to B2
        by_url[a1.server.url].resume_jobs()
        a2.result(timeout=60)
        assert a2.server.name == x
        by_url[b1.server.url].resume_jobs()
        b2.result(timeout=60)
    assert [s.model_loads for s in cluster.servers] == [1, 1]


class _Monitor:
    """The status monitor as a Ledger and a view see it: in_flight and models per server."""

    def __init__(self, servers, in_flight, models):
        self.servers, self.in_flight, self.models = servers, dict(in_flight), dict(models)

    def job_reserved(self, name, warmth=None):
        self.in_flight[name] += 1
        return False

    def job_released(self, name, **_):
        self.in_flight[name] -= 1


class _View:
    def __init__(self, monitor):
        self.monitor = monitor

    def current(self, *, probe):
        from comfy_cluster.selection import View

        m = self.monitor
        snaps = [ServerStatus(name=s.name, url=s.url, online=True, last_checked=0.0, next_probe_at=1e9,
                              in_flight=m.in_flight[s.name], models=m.models[s.name]) for s in m.servers]
        return View(sum(m.in_flight.values()), snaps, m.servers)

    def tick(self):
        return None


def test_a_batch_job_leaves_a_free_server_to_the_batch_job_warm_there():
    import queue as queue_mod

    from comfy_cluster.attempt import Ledger
    from comfy_cluster.jobs import Job, JobControl
    from comfy_cluster.planner import Batch
    from comfy_cluster.scheduling import Scheduler
    from comfy_cluster.selection import Capabilities

    wa, wb = txt2img_workflow(ckpt_name=A, seed=1), txt2img_workflow(ckpt_name=B, seed=2)
    servers = [ServerConfig(name=n, url=f"http://127.0.0.1:{9100 + i}", max_queue=1) for i, n in enumerate("xyz")]
    # x runs an A job, z a B job (both full); y is free and has B loaded.
    monitor = _Monitor(servers, {"x": 1, "y": 0, "z": 1},
                       {"x": warmth_of(wa).models, "y": warmth_of(wb).models, "z": warmth_of(wb).models})
    caps = Capabilities({}, lambda *a: None, lambda: 0.0, on_change=lambda: None)
    caps.info.update({s.name: {t: {"input": {"required": {}}} for t in {n["class_type"] for n in wa.values()}} for s in servers})
    launched: "queue_mod.Queue[Any]" = queue_mod.Queue()
    ledger = Ledger([s.name for s in servers], monitor, on_release=lambda: None)
    sched = Scheduler(servers, _View(monitor), caps, ledger, WarmModels(random.Random(1)),
                      launch=launched.put, clock=lambda: 0.0, wait_for_server=30.0)
    try:
        batch = Batch()
        controls = [JobControl(Job(wa), seq=0), JobControl(Job(wb), seq=1)]  # A is the older
        for c in controls:
            c.job.batch = batch
        batch.attach(controls)
        sched.add(controls)
        attempt = launched.get(timeout=30)
        assert attempt.control is controls[1] and attempt.server == "y"  # B took y ...
        assert sched.pending() == 1 and launched.empty()  # ... and A waits for x
    finally:
        sched.close()


def test_a_job_does_not_wait_for_ever_for_a_warm_server_whose_job_overruns(mock_cluster_factory):
    # Job 1 (A) runs on one server and is held there (a long video job, a hung node); job 2
    # (A) must not wait for that warm server for ever while the other server sits idle.
    cluster = mock_cluster_factory(speeds=(1.0, 1.0), models=[A])
    for s in cluster.servers:
        s.pause_jobs()
    servers = [{"name": f"g{i}", "url": s.url, "max_queue": 1} for i, s in enumerate(cluster.servers)]
    with ServerPool(servers) as pool:  # the default strategy (warm_models)
        first = pool.submit(txt2img_workflow(ckpt_name=A, seed=1))
        wait_until(lambda: first.status == "running", what="job 1 running on its server")
        second = pool.submit(txt2img_workflow(ckpt_name=A, seed=2))
        wait_until(lambda: second.prompt_id is not None, timeout=60, what="job 2 sent to the idle server")
        assert second.server.name != first.server.name
        for s in cluster.servers:
            s.resume_jobs()
        assert first.result(timeout=60) and second.result(timeout=60)


def test_place_waits_no_longer_than_the_load_it_avoids_and_counts_an_overrun():
    wa = warmth_of(txt2img_workflow(ckpt_name=A))
    strategy = WarmModels(random.Random(1))
    busy_a = cand(0, load=1, models=wa.models, avg=1.0, cold=5.0)  # load learned: 4 s
    idle = cand(1, avg=1.0, cold=5.0)
    # A's backlog (1 running + this one: 2 s) is shorter than a load + run elsewhere (5 s): wait ...
    assert strategy.place([idle], [busy_a, idle], wa, {wa.models: 1}) is None
    assert strategy.place([idle], [busy_a, idle], wa, {wa.models: 1}, waited=4.9, running={"s0": 1.0}) is None
    # ... but not longer than that load + run (ski rental) ...
    assert strategy.place([idle], [busy_a, idle], wa, {wa.models: 1}, waited=5.0).name == "s1"
    # ... and a running job past its expected second counts as at least its elapsed time.
    assert strategy.place([idle], [busy_a, idle], wa, {wa.models: 1}, running={"s0": 3.0}) is None
    assert strategy.place([idle], [busy_a, idle], wa, {wa.models: 1}, running={"s0": 4.5}).name == "s1"
    # A warm server with room, while a cold one idles: the job waits here, not in its queue
    # (where nothing bounds the wait), under the same rules.
    assert strategy.place([busy_a, idle], [busy_a, idle], wa, {wa.models: 1}, running={"s0": 3.0}) is None
    assert strategy.place([busy_a, idle], [busy_a, idle], wa, {wa.models: 1}, running={"s0": 4.5}).name == "s1"
    assert strategy.place([busy_a, idle], [busy_a, idle], wa, {wa.models: 1}, waited=5.0).name == "s1"
    # No server idles: the warm one's queue is the place, as before.
    busy_b = cand(1, load=1, avg=1.0, cold=5.0)
    assert strategy.place([busy_a, busy_b], [busy_a, busy_b], wa, {wa.models: 1}).name == "s0"


class _Recording(WarmModels):
    """warm_models, telling the test each placement it decided (the dispatcher's thread)."""

    def __init__(self, rng):
        super().__init__(rng)
        import queue as queue_mod

        self.decided: "queue_mod.Queue[Any]" = queue_mod.Queue()

    def place(self, *args, **kwargs):
        chosen = super().place(*args, **kwargs)
        self.decided.put((kwargs.get("waited"), chosen))
        return chosen


def test_the_scheduler_sends_a_waiting_job_cold_once_its_wait_costs_the_load_it_avoids():
    import queue as queue_mod

    from comfy_cluster.attempt import Attempt, AttemptPhase, Ledger
    from comfy_cluster.jobs import Job, JobControl
    from comfy_cluster.scheduling import Scheduler
    from comfy_cluster.selection import Capabilities

    wa = txt2img_workflow(ckpt_name=A, seed=1)
    servers = [ServerConfig(name=n, url=f"http://127.0.0.1:{9200 + i}", max_queue=1) for i, n in enumerate("xy")]
    # x runs an A job (full, started at t=0); y is free and cold. Nothing learned: a job is
    # expected to take 1 s and a load is guessed as one job.
    monitor = _Monitor(servers, {"x": 0, "y": 0}, {"x": warmth_of(wa).models, "y": ()})
    caps = Capabilities({}, lambda *a: None, lambda: 0.0, on_change=lambda: None)
    caps.info.update({s.name: {t: {"input": {"required": {}}} for t in {n["class_type"] for n in wa.values()}} for s in servers})
    now = [0.0]  # the injected clock
    launched: "queue_mod.Queue[Any]" = queue_mod.Queue()
    ledger = Ledger([s.name for s in servers], monitor, on_release=lambda: None)
    running = JobControl(Job(wa), seq=0)
    running.started(0.0)
    on_x = Attempt(running, "x", 1)
    on_x.phase = AttemptPhase.RUNNING
    ledger.reserve(on_x)
    strategy = _Recording(random.Random(1))
    sched = Scheduler(servers, _View(monitor), caps, ledger, strategy,
                      launch=launched.put, clock=lambda: now[0], wait_for_server=30.0)
    try:
        sched.add([JobControl(Job(txt2img_workflow(ckpt_name=A, seed=2)), seq=1)])
        assert strategy.decided.get(timeout=30) == (0.0, None)  # it waits for the warm server
        now[0] = 0.9  # within the running job's expected second: still worth waiting
        sched.wake()
        while True:
            waited, chosen = strategy.decided.get(timeout=30)
            assert chosen is None
            if waited == 0.9:
                break
        now[0] = 1.5  # the running job overran: x's backlog is now longer than a load on y
        sched.wake()
        attempt = launched.get(timeout=30)
        assert attempt.server == "y" and attempt.control.job.workflow["3"]["inputs"]["seed"] == 2
    finally:
        sched.close()


# -- warm_models' estimates, one rule at a time (snapshots: s<i>, load, what is loaded, learned
# seconds per job ``avg`` and per cold job ``cold``, so a load costs cold - avg) ------------------

NO_MODEL = {"1": {"class_type": "EmptyImage", "inputs": {}}}


def _picks(candidates, workflow, seeds=range(20)):
    """Every server warm_models picks over many random sources: one name when no tie is left to chance."""
    return {WarmModels(random.Random(s)).select(candidates, workflow).name for s in seeds}


def test_warm_models_counts_the_load_learned_on_each_server_else_the_average_learned_elsewhere():
    wf = txt2img_workflow(ckpt_name=A)
    w = warmth_of(wf)
    # Each server's own load time: s0 loads in 8 s (idle: 9 s), s1 in 1 s (2 queued: 4 s).
    assert _picks([cand(0, avg=1.0, cold=9.0), cand(1, load=2, avg=1.0, cold=2.0)], wf) == {"s1"}
    # s1 never loaded here: it is guessed from s2 and s3 (4 s and 6 s: 5 s). s0 has the model,
    # three jobs deep (4 s); s1 would take 6 s ...
    far = [cand(2, load=5, avg=1.0, cold=5.0), cand(3, load=5, avg=1.0, cold=7.0)]
    assert _picks([cand(0, load=3, models=w.models, avg=1.0), cand(1, avg=1.0), *far], wf) == {"s0"}
    # ... and beats s0 six jobs deep (7 s).
    assert _picks([cand(0, load=6, models=w.models, avg=1.0), cand(1, avg=1.0), *far], wf) == {"s1"}


def test_warm_models_counts_the_queue_in_seconds_and_a_running_jobs_overrun():
    strategy = WarmModels(random.Random(1))
    nothing = warmth_of(NO_MODEL)
    # Two 2 s jobs ahead (6 s to finish ours) lose to an idle server that takes 5 s.
    assert _picks([cand(0, load=2, avg=2.0), cand(1, avg=5.0)], NO_MODEL) == {"s1"}
    # A job on time (0.5 s of its 1 s) counts as its expected second: 2 s beat 2.5 s ...
    busy, slower = cand(0, load=1, avg=1.0), cand(1, avg=2.5)
    assert strategy.place([busy, slower], [busy, slower], nothing, {}, running={"s0": 0.5}).name == "s0"
    # ... and so does a job queued, not running yet: 0.5 s + 0.5 s beat an idle 1.2 s.
    short = cand(0, load=1, avg=0.5)
    assert strategy.place([short, cand(1, avg=1.2)], [short, cand(1, avg=1.2)], nothing, {}).name == "s0"
    # A running job 5 s past its expected second counts 6 s: the server two jobs deep (3 s) wins.
    for seed in range(20):
        late, deeper = cand(0, load=1, avg=1.0), cand(1, load=2, avg=1.0)
        assert WarmModels(random.Random(seed)).place([late, deeper], [late, deeper], nothing, {}, running={"s0": 6.0}).name == "s1"


def test_an_identical_prompt_costs_a_tenth_of_a_job_where_it_ran_last():
    wf = txt2img_workflow(ckpt_name=A, seed=7)
    w = warmth_of(wf)
    # Cached on a slow server (a 2 s job there: 0.2 s) beats a fresh run on a fast one (1 s) ...
    assert _picks([cand(0, models=w.models, prompt=w.prompt, avg=2.0), cand(1, models=w.models, avg=1.0)], wf) == {"s0"}
    # ... but a tenth of a 20 s job (2 s) loses to a 1.5 s run.
    assert _picks([cand(0, models=w.models, prompt=w.prompt, avg=20.0), cand(1, models=w.models, avg=1.5)], wf) == {"s1"}
    # A workflow given as nothing (no prompt to compare) gets no discount, wherever it goes.
    assert _picks([cand(0, load=2), cand(1, load=1)], None) == {"s1"}


def test_shared_nodes_break_a_tie_and_never_outweigh_a_shorter_queue():
    wf = txt2img_workflow(ckpt_name=A, seed=7)
    w = warmth_of(wf)
    other = warmth_of(txt2img_workflow(ckpt_name=A, seed=8))  # same loader and text encodings
    assert len(set(other.nodes) & set(w.nodes)) == 4
    # Equal cost: the server holding the job's text encodings, whatever the random source.
    assert _picks([cand(0, models=w.models), cand(1, models=w.models, prompt=other.prompt, nodes=other.nodes)], wf) == {"s1"}
    # One job more ahead is a whole second: the idle server, even holding none of them.
    assert _picks([cand(0, models=w.models), cand(1, load=1, models=w.models, prompt=other.prompt, nodes=other.nodes)], wf) == {"s0"}


def test_place_spreads_the_backlog_over_every_warm_server():
    wa = warmth_of(txt2img_workflow(ckpt_name=A))
    strategy = WarmModels(random.Random(1))
    # Two warm servers, full, two jobs each; an idle cold one costs a load (4 s) and a run.
    warm = [cand(0, load=2, models=wa.models, avg=1.0), cand(2, load=2, models=wa.models, avg=1.0)]
    idle = cand(1, avg=1.0, cold=5.0)
    # (4 + 1) jobs over two servers: 2.5 s, shorter than 5 s: wait for them ...
    assert strategy.place([idle], [*warm, idle], wa, {wa.models: 1}) is None
    # ... but (4 + 7) over two: 5.5 s: warm a third server.
    assert strategy.place([idle], [*warm, idle], wa, {wa.models: 7}).name == "s1"
    # The job being placed counts in the backlog even when ``waiting`` leaves it out:
    # (4 + 1) / 2 = 2.5 s <= 2.75 s, while (4 + 2) / 2 = 3 s would not be.
    near = cand(1, avg=1.0, cold=2.75)
    assert strategy.place([near], [*warm, near], wa, {}) is None
    assert strategy.place([near], [*warm, near], wa, {wa.models: 2}).name == "s1"


def test_place_weighs_sub_second_jobs_in_seconds():
    wa = warmth_of(txt2img_workflow(ckpt_name=A))
    strategy = WarmModels(random.Random(1))
    # 0.4 s jobs: the warm server's backlog (its queued job + this one) is 0.8 s; the idle cold
    # server loads in 0.4 s and runs in 0.5 s (0.9 s): the job has not waited yet, so it waits.
    warm, idle = cand(0, load=1, models=wa.models, avg=0.4), cand(1, avg=0.5, cold=0.9)
    assert strategy.place([idle], [warm, idle], wa, {wa.models: 1}) is None
    assert strategy.place([idle], [warm, idle], wa, {wa.models: 1}, waited=0.9).name == "s1"


def test_place_guesses_a_servers_load_from_those_that_learned_it():
    wa = warmth_of(txt2img_workflow(ckpt_name=A))
    strategy = WarmModels(random.Random(1))
    # s0 (warm, full, two jobs) learned a 4 s load; idle s1 never loaded: guessed 4 s + a run.
    warm, idle = cand(0, load=2, models=wa.models, avg=1.0, cold=5.0), cand(1, avg=1.0)
    assert strategy.place([idle], [warm, idle], wa, {wa.models: 1}) is None  # 3 s < 5 s: wait
    # Both with room and busy: warm s0 three deep (4 s) beats cold s1 one deep (1 + 4 + 1 s);
    # s2 (full) is where the 4 s were learned.
    warm3, cold1, full = cand(0, load=3, models=wa.models, avg=1.0), cand(1, load=1, avg=1.0), cand(2, load=2, avg=1.0, cold=5.0)
    assert strategy.place([warm3, cold1], [warm3, cold1, full], wa, {wa.models: 1}).name == "s0"
    # Gone cold after the wait: the cold server whose learned load is shortest (3 s), not the
    # one never measured (guessed from 8 s and 3 s).
    slow_load = cand(0, load=1, models=wa.models, avg=1.0, cold=9.0)
    never, quick = cand(1, avg=1.0), cand(2, avg=1.0, cold=4.0)
    assert strategy.place([never, quick], [slow_load, never, quick], wa, {wa.models: 1}, waited=100.0).name == "s2"


def test_place_counts_overruns_among_warm_servers_with_room_and_among_cold_ones():
    wa = warmth_of(txt2img_workflow(ckpt_name=A))
    for seed in range(20):
        strategy = WarmModels(random.Random(seed))
        # Two warm servers with room, one job each; s0's has run 5 s of its expected second.
        late, on_time = cand(0, load=1, models=wa.models, avg=1.0), cand(1, load=1, models=wa.models, avg=1.0)
        assert strategy.place([late, on_time], [late, on_time], wa, {wa.models: 1},
                              running={"s0": 5.0, "s1": 0.5}).name == "s1"
        # No warm server: of two busy cold ones, the one whose job is on time.
        late, on_time = cand(0, load=1, avg=1.0), cand(1, load=1, avg=1.0)
        assert strategy.place([late, on_time], [late, on_time], wa, {wa.models: 1},
                              running={"s0": 6.0, "s1": 0.5}).name == "s1"
    # A cold server whose own job overran is no better than the warm backlog: s0 (warm, full)
    # owes 4 s; s1 would cost its 1 + 4 s overrun, a 1 s load and a run (7 s): wait.
    full_warm = cand(0, load=2, models=wa.models, avg=1.0)
    cold_late = cand(1, load=1, avg=1.0, cold=2.0)
    assert WarmModels(random.Random(1)).place([cold_late], [full_warm, cold_late], wa, {wa.models: 2},
                                              running={"s1": 5.0}) is None


def test_a_loaders_model_is_named_by_its_input_or_by_its_file_extension():
    wf = {
        # A model named without an extension (a diffusers folder): its *_name input says it is one.
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_name": "sdxl-base-1.0"}},
        # An input not named *_name: a model by its extension, in any case.
        "2": {"class_type": "UpscaleModelLoaderCustom", "inputs": {"model_path": "Upscale/4x_Ultra.PTH", "tile": "auto"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}},
        "4": {"inputs": {"ckpt_name": "no_class.safetensors"}},  # no class_type: not a loader
    }
    assert model_files(wf) == ("model_name=sdxl-base-1.0", "model_path=Upscale/4x_Ultra.PTH")


def test_warmth_keys_tell_node_types_apart_and_ignore_the_order_of_a_nodes_settings():
    save = txt2img_workflow(ckpt_name=A, seed=1)
    preview = copy.deepcopy(save)
    out = next(k for k, n in save.items() if n["class_type"] == "SaveImage")
    preview[out]["class_type"] = "PreviewImage"  # same inputs, another node: not the cached one
    assert warmth_of(save).prompt != warmth_of(preview).prompt
    # A setting given as a mapping, its keys in another order (another tool wrote the file).
    one, other = copy.deepcopy(save), copy.deepcopy(save)
    one[out]["inputs"]["meta"] = {"shot": "sh010", "artist": "ana"}
    other[out]["inputs"]["meta"] = {"artist": "ana", "shot": "sh010"}
    assert warmth_of(one).prompt == warmth_of(other).prompt


def test_a_workflow_comfyui_refuses_for_its_links_fails_with_comfyuis_message(mock_cluster_factory):
    # A link to a node that is not there, and a link cycle: placing them (warm_models keys
    # every node through its links) must not crash; ComfyUI's validation says what is wrong.
    from comfy_cluster import WorkflowError

    cluster = mock_cluster_factory(speeds=(4.0,), models=[A])
    dangling = txt2img_workflow(ckpt_name=A, seed=1)
    node, name = next((k, i) for k, n in dangling.items() for i, v in n["inputs"].items() if isinstance(v, list))
    dangling[node]["inputs"][name] = ["99", 0]
    cycle = txt2img_workflow(ckpt_name=A, seed=2)
    first = next(k for k, n in cycle.items() if n["class_type"] == "CheckpointLoaderSimple")
    last = next(k for k, n in cycle.items() if n["class_type"] == "SaveImage")
    cycle[first]["inputs"]["ckpt_name"] = [last, 0]
    with ServerPool([{"name": "m", "url": cluster.servers[0].url}], background_status=False) as pool:
        for wf in (dangling, cycle):
            job = pool.submit(wf)
            assert job.wait(60) and job.status == "failed"
            assert isinstance(job.exception(), WorkflowError), job.exception()
