"""Warm-model routing: what a workflow leaves warm (pure), the warm_models strategy (table
tests over snapshots), the mock's model loads, and the pool recording what ran where."""

from __future__ import annotations

import copy
import io
import random

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
