"""Batches: late binding over the cluster, order of results, failures, cancel, templating, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import fail_workflow, servers_of, sleep_workflow, wait_until

from comfy_cluster import JobCancelled, JobFailed, JobResult, ServerPool, frame_workflows
from comfy_cluster.cli import ideal_makespan, parse_frames
from comfy_cluster.workflow import WorkflowInputError

FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0)


def test_map_returns_results_in_input_order_and_fast_servers_take_more(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 8))
    slow, fast = cluster.servers
    with ServerPool(servers_of(cluster, max_queue=1), **FAST) as pool:
        wfs = [sleep_workflow(0.2, steps=1, seed=1000 + i) for i in range(16)]
        results = pool.map(wfs, timeout=60)
    assert all(isinstance(r, JobResult) for r in results)
    ran = {pid for s in cluster.servers for pid in s.executed_prompt_ids}
    assert [r.prompt_id for r in results] == [r.prompt_id for r in results if r.prompt_id in ran]
    # The job for input i really is input i: each SaveImage got its seed's prefix.
    for i, r in enumerate(results):
        server = slow if r.server == slow.name else fast
        _, prompt, _ = next(p for p in server.received_prompts if p[0] == r.prompt_id)
        assert prompt["2"]["inputs"]["seed"] == 1000 + i
    per = {s.name: sum(1 for r in results if r.server == s.name) for s in cluster.servers}
    assert per[fast.name] > per[slow.name]


def test_never_more_than_max_queue_per_server(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(4, 4))
    peak = {s.name: 0 for s in cluster.servers}

    def watch(event):
        for s in pool.status():
            peak[s.name] = max(peak[s.name], s.in_flight)

    with ServerPool(servers_of(cluster, max_queue=2), **FAST) as pool:
        pool.map([sleep_workflow(0.1, steps=1) for _ in range(12)], on_event=watch, timeout=60)
    assert max(peak.values()) <= 2
    assert all(v >= 1 for v in peak.values())


def test_one_failure_does_not_stop_the_batch(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(4, 4))
    wfs = [sleep_workflow(0.05), fail_workflow("bad frame"), sleep_workflow(0.05), sleep_workflow(0.05)]
    with ServerPool(servers_of(cluster), **FAST) as pool:
        out = pool.map(wfs, return_exceptions=True, timeout=60)
        assert isinstance(out[1], JobFailed) and "bad frame" in str(out[1])
        assert all(isinstance(out[i], JobResult) for i in (0, 2, 3))
        with pytest.raises(JobFailed):
            pool.map(wfs, timeout=60)


def test_fail_fast_cancels_the_rest(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1,))
    wfs = [fail_workflow("first")] + [sleep_workflow(2.0, steps=20) for _ in range(5)]
    with ServerPool(servers_of(cluster, max_queue=1), **FAST) as pool:
        batch = pool.map_async(wfs, fail_fast=True)
        assert batch.wait(30)
        out = batch.results(return_exceptions=True)
    assert isinstance(out[0], JobFailed)
    assert sum(isinstance(o, JobCancelled) for o in out[1:]) >= 4


def test_batch_cancel_cancels_every_job_on_its_server(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    with ServerPool(servers_of(cluster, max_queue=2), **FAST) as pool:
        for s in cluster.servers:  # nothing ends before the cancel, however loaded the machine
            s.pause_jobs()
        batch = pool.map_async([sleep_workflow(5.0, steps=50) for _ in range(8)])
        wait_until(lambda: sum(1 for j in batch.jobs if j.status == "running") == 2, what="both servers running")
        assert set(batch.servers_working()) == {s.name for s in cluster.servers}
        batch.cancel()
        assert batch.wait(15)
        assert all(isinstance(o, JobCancelled) for o in batch.results(return_exceptions=True))
        ended, failed, total = batch.counts()
        assert (ended, total) == (8, 8)
    for s in cluster.servers:
        assert s.queue_snapshot() == ([], [])
        assert s.executed_prompt_ids == []


def test_frame_workflows_template():
    base = sleep_workflow(seed=1)
    wfs = frame_workflows(base, [1001, 1002], frame_input="2.seed", per_frame={1002: {"1": {"width": 16}}})
    assert [w["2"]["inputs"]["seed"] for w in wfs] == [1001, 1002]
    assert wfs[1]["1"]["inputs"]["width"] == 16 and wfs[0]["1"]["inputs"]["width"] == 8
    assert base["2"]["inputs"]["seed"] == 1  # template untouched
    with pytest.raises(WorkflowInputError, match="node 7 is not in the workflow"):
        frame_workflows(base, [1], frame_input="7.seed")
    with pytest.raises(WorkflowInputError, match="expected NODE.INPUT"):
        frame_workflows(base, [1], frame_input="seed")


@pytest.mark.parametrize("text, frames", [("1-3", [1, 2, 3]), ("1-9x4", [1, 5, 9]), ("1,5,7-8", [1, 5, 7, 8]), ("1001", [1001])])
def test_parse_frames(text, frames):
    assert parse_frames(text) == frames


@pytest.mark.parametrize("text", ["a-b", "5-1", "", "1-3x0"])
def test_parse_frames_errors(text):
    with pytest.raises(ValueError, match="--frames"):
        parse_frames(text)


def test_ideal_makespan():
    assert ideal_makespan(60, [1, 2, 4], 1.0) == pytest.approx(8.75)
    assert ideal_makespan(30, [1, 2, 4], 1.0) == pytest.approx(4.5)
    assert ideal_makespan(3, [1], 2.0) == pytest.approx(6.0)


def _cli(args, env=None, cwd=None):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "comfy_cluster", *args], capture_output=True, text=True, env=full_env, timeout=120, cwd=cwd)


def test_cli_submit_frames_json_and_out(mock_cluster_factory, tmp_path):
    cluster = mock_cluster_factory(speeds=(4, 4))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow(0.05, steps=2)))
    env = {"NUKE_COMFYUI_SERVERS": cluster.servers_json()}
    out = _cli(["submit", str(wf), "--frames", "1-4", "--frame-input", "2.seed", "--set", "1.width=16", "--json", "--out", str(tmp_path / "o")], env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["status"] == "success" and row["attempts"] == 1 and row["server"] in {s.name for s in cluster.servers}
        assert row["outputs"][0]["node"] == "3" and row["outputs"][0]["filename"].endswith(".png")
        assert set(row) >= {"prompt_id", "server", "status", "outputs", "attempts", "seconds"}
    assert len(list((tmp_path / "o").rglob("*.png"))) == 4
    received = [p for s in cluster.servers for _, p, _ in s.received_prompts]
    assert sorted(p["2"]["inputs"]["seed"] for p in received) == [1, 2, 3, 4]
    assert all(p["1"]["inputs"]["width"] == 16 for p in received)


def test_cli_submit_failure_exit_code(mock_comfy, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(fail_workflow("nope")))
    out = _cli(["submit", str(wf), "--json"], {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "m", "url": mock_comfy.url}])})
    assert out.returncode == 1
    row = json.loads(out.stdout)
    assert row["status"] == "error" and "nope" in row["error"]


def test_cli_bad_input_is_one_clear_line(tmp_path):
    out = _cli(["submit", str(tmp_path / "missing.json")])
    assert out.returncode == 2
    assert out.stderr.strip().startswith("comfy-cluster: workflow file not found")
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("cmd", ["status", "submit", "demo", "mock-server"])
def test_cli_help_shows_an_example(cmd):
    out = _cli([cmd, "--help"])
    assert out.returncode == 0
    assert "example" in out.stdout.lower()


def test_cli_demo_runs(tmp_path):
    out = _cli(["demo", "--jobs", "6", "--seconds", "0.1"])
    assert out.returncode == 0, out.stderr
    assert "makespan" in out.stdout and "ideal" in out.stdout
    assert "jobs: 6, failed: 0" in out.stdout


def test_example_script_runs_against_the_mock(mock_comfy, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wf = json.load(open(os.path.join(root, "examples", "sleep_workflow_api.json")))
    wf["2"]["inputs"]["seconds"] = 0.05
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=json.dumps([{"name": "m", "url": mock_comfy.url}]))
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "submit_workflow.py"), str(path), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "succeeded on m" in out.stdout and "done on m" in out.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_cli_ctrl_c_cancels_the_jobs_on_their_servers(mock_cluster_factory, tmp_path):
    import signal

    cluster = mock_cluster_factory(speeds=(1, 1))
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow(30.0, steps=30)))
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=cluster.servers_json())
    # No preexec_fn (POSIX only): the command installs its own SIGINT handler, so even a test
    # run started in the background (SIGINT inherited as ignored) sees a terminal user's Ctrl-C.
    # On Windows Ctrl-C cannot be sent to one process; Ctrl-Break to its own group can.
    win = sys.platform == "win32"
    proc = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "submit", str(wf), "--frames", "1-6", "--frame-input", "2.seed"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            **({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if win else {}))
    try:
        wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster.servers), timeout=30, what="both servers running a job")
        proc.send_signal(signal.CTRL_BREAK_EVENT if win else signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (128 + 21 if win else 130), err
    assert "cancelling" in err
    for s in cluster.servers:
        assert s.queue_snapshot() == ([], [])
        assert s.interrupt_requests and all(r.get("prompt_id") for r in s.interrupt_requests)
        assert s.executed_prompt_ids == []


def test_the_plan_keeps_a_job_from_a_slow_server_that_a_fast_one_finishes_sooner(mock_cluster_factory):
    """The batch plan holds back: three 1 s jobs, a server ten times faster (its ``weight`` says
    so) that takes one job at a time, and a slow server with room. On the fast one the third
    job ends at about 0.3 s; on the slow one the first would end at 1 s, so the slow one gets
    none even while the fast one is full. Without the plan (every server with room may take a
    job) the slow server takes one and the batch ends three times later; no timing is measured
    here, only where the jobs ran."""
    cluster = mock_cluster_factory(speeds=(10, 1))
    fast, slow = cluster.servers
    servers = [dict(name=fast.name, url=fast.url, weight=10, max_queue=1),
               dict(name=slow.name, url=slow.url, weight=1, max_queue=3)]
    with ServerPool(servers, **FAST) as pool:
        results = pool.map([sleep_workflow(1.0, steps=1, seed=i) for i in range(3)], timeout=60)
    assert [r.server for r in results] == [fast.name] * 3
    assert slow.executed_prompt_ids == []


def test_servers_working_counts_each_servers_jobs_there_now(mock_cluster_factory):
    """``servers_working()`` (the Nuke panel's "working: ...") counts the batch's jobs on each
    server now: queued there or running, not those waiting in the pool's queue, not those
    ended, and not a job moved off a server that went away (it waits for room elsewhere)."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    gone, other = cluster.servers
    servers = [dict(name=gone.name, url=gone.url, max_queue=2), dict(name=other.name, url=other.url, max_queue=2)]
    with ServerPool(servers, **FAST) as pool:
        for s in cluster.servers:  # nothing ends before it is counted, however loaded the machine
            s.pause_jobs()
        batch = pool.map_async([sleep_workflow(0.05, steps=1, seed=i) for i in range(5)])
        wait_until(lambda: sum(1 for j in batch.jobs if j.prompt_id) == 4, what="two jobs on each server")
        assert batch.servers_working() == {gone.name: 2, other.name: 2}  # one running, one queued on each
        gone.set_fault("refuse")  # the machine goes away with its two jobs
        moved = [j for j in batch.jobs if j.server is not None and j.server.name == gone.name]
        wait_until(lambda: all(j.failures for j in moved), what="both jobs moved off the lost server")
        assert all(not j.done for j in moved)
        assert batch.servers_working() == {other.name: 2}
        other.resume_jobs()
        assert batch.wait(60)
        assert batch.servers_working() == {}
        assert [r.server for r in batch.results()] == [other.name] * 5
