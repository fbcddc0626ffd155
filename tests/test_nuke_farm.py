"""``examples/nuke_farm_render.py``: a node's frames run under ``nuke -t`` on a farm task."""

from __future__ import annotations

import os
import runpy

import pytest
from nuke_fake.support import ROOT, cluster_env, fake_nuke, load_image_workflow, make_run_node, write_json  # noqa: F401

pytestmark = pytest.mark.timeout(60)

EXAMPLE = os.path.join(ROOT, "examples", "nuke_farm_render.py")
NUKE_T = os.path.join(ROOT, "tests", "nuke_fake", "nuke_t.py")  # ``nuke -t`` in a process of its own


def _main():
    return runpy.run_path(EXAMPLE, run_name="farm_example")["main"]


def test_farm_tasks_of_one_job_fill_one_version(fake_nuke, cluster_env, tmp_path, capsys):
    fake_nuke.set_gui(False)  # nuke -t
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(out), first=1, last=100)
    opened = []
    main = _main()
    assert main(["sh010.nk", node.name(), "1001", "1002", "--version", "v004"], open_script=opened.append) == 0
    assert main(["sh010.nk", node.name(), "1003", "1003", "--version", "v004"], open_script=opened.append) == 0
    assert opened == ["sh010.nk", "sh010.nk"]
    assert sorted(os.listdir(out / "v004")) == [f"{node.name()}_{f:04d}.png" for f in (1001, 1002, 1003)]
    assert "1 frame(s) done" in capsys.readouterr().out
    seeds = sorted(p["2"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts)
    assert seeds == [1001, 1002, 1003]


def test_farm_tasks_of_a_renamed_node_share_one_folder(fake_nuke, cluster_env, tmp_path):
    """Issue 19 item 1: a node renamed (or pasted) and saved without a run drew a new id in
    every farm task, which never saves: two tasks of one job wrote into two folders."""
    import nuke

    script = str(tmp_path / "sh010.nk")
    fake_nuke.save_script(script)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), "", first=1, last=4)
    node.setName("Hero")
    nuke.scriptSave(script)
    fake_nuke.set_gui(False)  # nuke -t: each task opens the saved script
    main = _main()
    assert main([script, "Hero", "1", "2", "--version", "v001"]) == 0
    assert main([script, "Hero", "3", "4", "--version", "v001"]) == 0
    versions = list((tmp_path / "comfyui" / "sh010").glob("*/v001"))
    assert len(versions) == 1, versions
    assert sorted(os.listdir(versions[0])) == [f"Hero_{f:04d}.png" for f in (1, 2, 3, 4)]


def test_nuke_t_strips_a_trailing_frame_range_and_the_farm_script_still_gets_its_frames(fake_nuke, cluster_env, tmp_path):
    """Issue 19 item 3: ``nuke -t`` removes a last argument that is a number or a frame range
    (Foundry, "Using the Command-line"): ``... NODE FIRST LAST`` exited 2 in every task."""
    import nuke

    script = str(tmp_path / "sh010.nk")
    fake_nuke.save_script(script)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), first=1, last=100)
    name = node.name()
    nuke.scriptSave(script)
    assert fake_nuke.strip_frame_range([script, name, "1", "2"]) == [script, name, "1"]  # what Nuke does
    commands = [
        [script, name, "--version=v001", "1", "2"],  # a CommandLine job ending in <STARTFRAME> <ENDFRAME>
        [script, name, "--version=v001", "3-4"],
        [script, name, "--frames=5-6", "--version=v001"],
        [script, name, "--version=v001", "--frames=7-7"],
    ]
    statuses = [fake_nuke.run_nuke_t(EXAMPLE, c) for c in commands]
    assert statuses == [0, 0, 0, 0]
    assert sorted(os.listdir(tmp_path / "out" / "v001")) == [f"{name}_{f:04d}.png" for f in range(1, 8)]
    # A lone FIRST that lost its LAST (no nuke.rawArgs to take it back from) is refused, not run.
    fake_nuke.set_gui(False)
    assert _main()([script, name, "1001"], open_script=lambda path: None) == 2


def test_a_missing_plate_frame_fails_that_frame_by_name_and_the_task_exits_1(fake_nuke, cluster_env, tmp_path, capsys):
    """Issue 19 item 4: the input render stopped at the first missing plate frame (Nuke's
    ``execute`` without ``continueOnError``) and failed the whole task; the result Read then
    showed failed frames as a checkerboard, which a render through the node delivers."""
    import shutil

    import nuke

    plates = tmp_path / "plates"
    plates.mkdir()
    for frame in (1, 2, 4):  # frame 3 never arrived
        shutil.copyfile(os.path.join(ROOT, "examples", "plate.0001.png"), plates / f"plate.{frame:04d}.png")
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(out), first=1, last=4, with_input=False)
    plate = nuke.nodes.Read()
    plate["file"].fromUserText(f"{plates.as_posix()}/plate.####.png 1-4")
    node.setInput(0, plate)
    fake_nuke.set_gui(False)
    assert _main()(["sh010.nk", node.name(), "--frames=1-4", "--version=v001"], open_script=lambda path: None) == 1
    err = capsys.readouterr().err
    assert "1 of 4 frame(s) failed" in err and "plate.0003.png" in err
    assert sorted(os.listdir(out / "v001")) == [f"{node.name()}_{f:04d}.png" for f in (1, 2, 4)]
    assert node["failed_frames"].value() == "3"
    seeds = sorted(p["2"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts)
    assert seeds == [1, 2, 4]
    # A render through the node (nuke -x, a farm comp) stops at the failed frame: no placeholder.
    result = nuke.toNode(f"{node.name()}.result")
    assert fake_nuke.read_frame(result, 2)[0] == "file"
    comp = nuke.nodes.Write(file=str(tmp_path / "comp.####.png"), file_type="png")
    comp.setInput(0, node)
    nuke.execute(comp, 1, 2)
    with pytest.raises(RuntimeError, match="v001/.*_0003.png"):
        nuke.execute(comp, 3, 3)


def _plates(folder, frames):
    import shutil

    folder.mkdir(exist_ok=True)
    for frame in frames:
        shutil.copyfile(os.path.join(ROOT, "examples", "plate.0001.png"), folder / f"plate.{frame:04d}.png")
    return f"{folder.as_posix()}/plate.####.png"


def _queued(cluster):
    return sum(len(running) + len(pending) for running, pending in (s.queue_snapshot() for s in cluster))


def test_farm_tasks_sharing_a_version_keep_their_working_files_apart(fake_nuke, cluster_env, tmp_path):
    """Issue 19 item 2: a task that ended removed the version's whole ``.inputs`` folder, and
    with it the plates another task of the job had not uploaded yet (it failed with
    FileNotFoundError and the version lacked its frames). Two real processes, as on a farm."""
    import subprocess
    import sys

    import nuke

    from comfy_cluster.testing.waiting import wait_until

    script = str(tmp_path / "sh010.nk")
    fake_nuke.save_script(script)
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(out), first=1, last=8, with_input=False)
    plate = nuke.nodes.Read()
    plate["file"].fromUserText(_plates(tmp_path / "plates", range(1, 7)) + " 1-8")  # 7 and 8 missing
    node.setInput(0, plate)
    name = node.name()
    nuke.scriptSave(script)
    for server in cluster_env:  # task B's first jobs wait on the servers, the rest in B itself
        server.pause_jobs()
    env = dict(os.environ, NUKE_PATH=os.path.join(ROOT, "nuke_plugin"), PYTHONPATH=ROOT)
    log_path = tmp_path / "task_b.log"
    with open(log_path, "wb") as log:
        task_b = subprocess.Popen(
            [sys.executable, NUKE_T, "-t", EXAMPLE, script, name, "--frames=1-6", "--version=v001"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        try:
            # 2 servers x max_queue 2: jobs 5 and 6 are not sent yet (their plates not uploaded).
            wait_until(lambda: _queued(cluster_env) >= 4 or task_b.poll() is not None, 40, message="task B's jobs")
            assert task_b.poll() is None, log_path.read_text()
            # Task A of the same job ends meanwhile (its plate frames are missing: it fails).
            fake_nuke.set_gui(False)
            assert fake_nuke.run_nuke_t(EXAMPLE, [script, name, "--frames=7-8", "--version=v001"]) == 1
            for server in cluster_env:
                server.resume_jobs()
            status = task_b.wait(60)
        finally:
            if task_b.poll() is None:
                task_b.kill()
                task_b.wait()
    assert status == 0, log_path.read_text()
    assert sorted(f for f in os.listdir(out / "v001") if not f.startswith(".")) == [f"{name}_{f:04d}.png" for f in range(1, 7)]
    assert [f for f in os.listdir(out / "v001") if f.startswith(".")] == []  # each task cleaned up its own


@pytest.mark.parametrize("by", ["next_task", "reap"])
def test_a_killed_tasks_jobs_are_cancelled_by_the_next_task(fake_nuke, cluster_env, tmp_path, by):
    """Issue 19 item 16: a task killed without a signal (Deadline on Windows: TerminateProcess;
    here SIGKILL, which no handler sees either) left its jobs on the GPUs. The next task on the
    same version (the requeued one) finds its job ledger stale and cancels them first."""
    import json
    import signal
    import subprocess
    import sys
    import time

    import nuke

    from comfy_cluster.testing.waiting import wait_until

    script = str(tmp_path / "sh010.nk")
    fake_nuke.save_script(script)
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(out), first=1, last=3)
    name = node.name()
    nuke.scriptSave(script)
    for server in cluster_env:
        server.pause_jobs()
    env = dict(os.environ, NUKE_PATH=os.path.join(ROOT, "nuke_plugin"), PYTHONPATH=ROOT)
    command = [sys.executable, NUKE_T, "-t", EXAMPLE, script, name, "--frames=1-3", "--version=v001"]
    logs = [tmp_path / "task_a.log", tmp_path / "task_b.log"]
    version = out / "v001"

    def ledger_jobs():
        found = {}
        for path in version.glob(".jobs-*.json"):
            try:
                found.update({e["prompt_id"]: path for e in json.loads(path.read_text() or "{}").get("jobs", [])})
            except ValueError:  # being rewritten
                pass
        return found

    with open(logs[0], "wb") as log:
        task_a = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: _queued(cluster_env) >= 3 or task_a.poll() is not None, 40, message="task A's jobs")
            orphans = {p for s in cluster_env for part in s.queue_snapshot() for p in part}
            wait_until(lambda: orphans <= set(ledger_jobs()) or task_a.poll() is not None, 40, message="task A's ledger")
            assert task_a.poll() is None, logs[0].read_text()
        finally:
            task_a.send_signal(signal.SIGKILL)
            task_a.wait()
    assert {p for s in cluster_env for part in s.queue_snapshot() for p in part} == orphans  # left on the GPUs
    ledger_file = next(iter(ledger_jobs().values()))
    dead_inputs = list(version.glob(".inputs-*"))
    assert dead_inputs
    old = time.time() - 300  # the dead task's ledger stopped beating long ago
    os.utime(ledger_file, (old, old))
    if by == "reap":  # no task of the job will run again: --reap alone (a post-job script)
        fake_nuke.set_gui(False)
        assert fake_nuke.run_nuke_t(EXAMPLE, [script, name, "--version=v001", "--reap"]) == 0
        assert not orphans & {p for s in cluster_env for part in s.queue_snapshot() for p in part}
        for server in cluster_env:
            server.resume_jobs()
            assert server.wait_idle(30.0) and server.executed_prompt_ids == []
        assert [f for f in os.listdir(version) if f.startswith(".")] == []
        return
    with open(logs[1], "wb") as log:
        task_b = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            # The requeued task cancels the orphans before its own jobs reach the servers.
            wait_until(lambda: not orphans & {p for s in cluster_env for part in s.queue_snapshot() for p in part}, 40, message="the orphans cancelled")
            assert task_b.poll() is None, logs[1].read_text()
            for server in cluster_env:
                server.resume_jobs()
            status = task_b.wait(60)
        finally:
            if task_b.poll() is None:
                task_b.kill()
                task_b.wait()
    assert status == 0, logs[1].read_text()
    executed = {p for s in cluster_env for p in s.executed_prompt_ids}
    assert not orphans & executed and len(executed) == 3
    assert sorted(f for f in os.listdir(version) if not f.startswith(".")) == [f"{name}_{f:04d}.png" for f in (1, 2, 3)]
    assert [f for f in os.listdir(version) if f.startswith(".")] == []  # the dead task's files too


def test_farm_exit_status_says_what_went_wrong(fake_nuke, cluster_env, tmp_path, capsys):
    fake_nuke.set_gui(False)
    workflow = load_image_workflow()
    workflow["2"]["inputs"]["steps"] = "x"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2)
    main = _main()
    assert main(["sh010.nk", node.name()], open_script=lambda path: None) == 1
    assert "input 'steps'" in capsys.readouterr().err
    assert main(["sh010.nk", "NoSuchNode"], open_script=lambda path: None) == 2
    assert main(["sh010.nk", node.name(), "5", "1"], open_script=lambda path: None) == 2


def test_sigterm_from_the_farm_cancels_the_jobs_on_their_servers(fake_nuke, cluster_env, tmp_path):
    import signal
    import threading

    fake_nuke.set_gui(False)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(5.0, steps=50)), str(tmp_path / "out"), last=4)
    before = signal.getsignal(signal.SIGTERM)
    started = threading.Event()

    def terminate_when_running():
        # The farm manager stops the task once its jobs run (an event, not a sleep).
        for server in cluster_env:
            while not server.queue_snapshot()[0]:
                if started.wait(0.01):
                    return
        os.kill(os.getpid(), signal.SIGTERM)

    for server in cluster_env:  # no frame ends before the farm's SIGTERM, however loaded the machine
        server.pause_jobs()
    killer = threading.Thread(target=terminate_when_running)
    killer.start()
    try:
        assert _main()(["sh010.nk", node.name()], open_script=lambda path: None) == 130
    finally:
        started.set()
        killer.join()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    for server in cluster_env:
        assert server.wait_idle(30.0)
        assert server.interrupt_requests and server.executed_prompt_ids == []
