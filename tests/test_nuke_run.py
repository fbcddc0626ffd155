"""The "ComfyUI Cluster Run" node driven as a compositor would, against a mock cluster.

Knobs are set through the fake's panel (``user_set`` runs ``knobChanged``), Execute and Cancel
are clicked (``press`` runs the button's command with ``nuke.thisNode()``), and the test's main
thread is Nuke's event loop (``pump_until``). The ``fake_nuke`` fixture fails a test whenever
the plugin made a call Nuke forbids, even one it caught.
"""

from __future__ import annotations

import os
import threading

import pytest
from comfy_cluster.testing import Fault
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    empty_image_workflow,
    fake_nuke,
    load_image_workflow,
    make_run_node,
    read_nodes,
    settle_threads,
    use_cluster,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


def _uploaded_names(cluster):
    """The image names the LoadImage node (10) got in every prompt the servers accepted, by file
    name (each is in a subfolder named by its content hash)."""
    return sorted((p["10"]["inputs"]["image"] for s in cluster for _, p, _ in s.received_prompts), key=lambda n: n.rsplit("/", 1)[-1])


def test_execute_renders_the_input_runs_every_frame_and_makes_a_read_node(fake_nuke, cluster_env, tmp_path):
    import nuke

    import comfy_cluster_nuke.run as run_mod

    before = set(threading.enumerate())
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(0.1)), str(out), first=1001, last=1006)
    node.setXYpos(100, 200)
    assert node["load_image_node"].value() == "Plate (node 10)"

    # Jobs held on their servers until the bar has shown them there: the run polls every
    # POLL_SECONDS, and on a loaded machine a batch this short once ended between two polls
    # (the bar never said "working:" and the test waited for it in vain).
    for server in cluster_env:
        server.pause_jobs()
    fake_nuke.press(node, "execute")
    # The click returned with the run going on in the background: Nuke stays responsive.
    run = run_mod.current(node)
    assert run is not None and not run.finished.is_set()
    # The bar gets every update; the status knob at most every STATUS_INTERVAL (throttled).
    fake_nuke.pump_until(
        lambda: any("working:" in m for t in fake_nuke.progress_tasks() for m in t._messages), what="progress on the bar"
    )
    for server in cluster_env:
        server.resume_jobs()
    tasks = fake_nuke.progress_tasks()
    assert len(tasks) == 1 and tasks[0]._title.endswith(node.name())
    wait_run(fake_nuke, node)

    # The input was rendered once, by a temporary Write inside the group, for the range.
    assert fake_nuke.renders() == [(f"{node.name()}.Write1", 1001, 1006)]
    assert nuke.allNodes("Write", group=node) == []
    version = out / "v001"
    # Each frame's rendered file went to the LoadImage node of that frame's job.
    names = _uploaded_names(cluster_env)
    assert len(names) == 6 and all(f"_in0.{f:04d}" in n for f, n in zip(range(1001, 1007), names))
    # Named after the node and its id: another artist's ComfyUIClusterRun1 sends other names.
    assert all(f"{node.name()}_{node['node_uid'].value()}_in0." in n for n in names)
    assert sorted(p["2"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts) == list(range(1001, 1007))

    reads = read_nodes()
    assert len(reads) == 1
    read = reads[0]
    assert read.fullName() == f"{node.name()}.result"  # inside the node: renaming cannot orphan it
    assert read["file"].value() == f"{version.as_posix()}/{node.name()}_####.png"
    assert (read["first"].value(), read["last"].value()) == (1001, 1006)
    assert (read["origfirst"].value(), read["origlast"].value()) == (1001, 1006)
    assert node["show"].value() == "result"  # the node outputs the result now
    for frame in range(1001, 1007):
        path = version / f"{node.name()}_{frame:04d}.png"
        assert path.read_bytes().startswith(b"\x89PNG")
    assert sorted(os.listdir(version)) == [f"{node.name()}_{f:04d}.png" for f in range(1001, 1007)]  # no leftovers
    assert os.listdir(out) == ["v001"]

    assert node["status"].value().startswith("done: 6 frame(s)")
    assert fake_nuke.messages() == []
    task = tasks[0]
    assert any("frames done" in m for m in task._messages) and task._history[-1] == 100
    assert all(name.startswith("comfy-cluster-nuke") for name in task._threads)  # updated from the worker
    del tasks, task
    assert fake_nuke.progress_tasks() == []  # released: the bar is gone from Nuke's screen
    assert run_mod.current(node) is None
    assert settle_threads(before) == []  # the pool and the worker left no thread behind


def test_execute_without_input_uses_an_empty_image_workflow_and_rerun_updates_the_same_read(fake_nuke, cluster_env, tmp_path):
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", empty_image_workflow()), str(out), first=1, last=3, with_input=False)
    assert node["load_image_node"].values() == ["(none)"]
    fake_nuke.press(node, "execute")
    wait_run(fake_nuke, node)
    assert fake_nuke.renders() == []  # nothing to render
    assert fake_nuke.messages() == []

    fake_nuke.user_set(node, "last", 5)
    fake_nuke.press(node, "execute")
    wait_run(fake_nuke, node)
    reads = read_nodes()
    assert len(reads) == 1, "a re-run updates its Read node"
    assert (reads[0]["first"].value(), reads[0]["last"].value()) == (1, 5)
    # A re-run never overwrites the previous result: a new version folder.
    assert len(list((out / "v001").glob("*.png"))) == 3 and len(list((out / "v002").glob("*.png"))) == 5
    assert "/v002/" in reads[0]["file"].value()


def _start_long_run(fake_nuke, cluster, tmp_path, frames=6):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(5.0, steps=50)), str(tmp_path / "out"), last=frames)
    for server in cluster:  # no frame ends before the test cancels, however loaded the machine
        server.pause_jobs()
    fake_nuke.press(node, "execute")
    fake_nuke.pump_until(lambda: all(s.queue_snapshot()[0] for s in cluster), what="a job running on every server")
    return node


def _assert_cluster_idle(cluster):
    for server in cluster:
        assert server.wait_idle(30.0), f"{server.name} still has jobs: {server.queue_snapshot()}"


@pytest.mark.parametrize("how", ["progress_bar", "cancel_button"])
def test_cancel_stops_every_job_on_its_server(fake_nuke, cluster_env, tmp_path, how):
    node = _start_long_run(fake_nuke, cluster_env, tmp_path)
    if how == "progress_bar":
        fake_nuke.cancel_progress()
    else:
        fake_nuke.press(node, "cancel")
    run = wait_run(fake_nuke, node, timeout=30)
    _assert_cluster_idle(cluster_env)
    for server in cluster_env:
        assert server.interrupt_requests, f"the running job on {server.name} was not interrupted"
        assert server.executed_prompt_ids == []
    assert type(run.error).__name__ == "RunCancelled"
    assert node["status"].value().startswith("cancelled")
    assert read_nodes() == []
    assert fake_nuke.messages() == []  # the user asked for it: no dialog


@pytest.mark.parametrize("move", ["rename", "into_group"])
def test_cancel_and_execute_follow_the_node_through_a_rename_or_a_move_into_a_group(fake_nuke, cluster_env, tmp_path, move):
    """Issue 19 item 9: runs were tracked by the node's name: after a rename (or a move into a
    group: a cut and paste) Cancel said "nothing to cancel" while the jobs went on, and
    Execute started a second run of the same node."""
    import nuke

    import comfy_cluster_nuke.run as run_mod

    node = _start_long_run(fake_nuke, cluster_env, tmp_path)
    run = run_mod.current(node)
    if move == "rename":
        node.setName("Hero")
        target = node
    else:
        for n in nuke.allNodes():
            n.setSelected(n is node)
        nuke.nodeCopy("%clipboard%")
        nuke.delete(node)
        with nuke.nodes.Group():
            target = nuke.nodePaste("%clipboard%")
            target.setInput(0, nuke.nodes.Constant())  # a paste keeps no outside connection
    try:
        assert run_mod.current(target) is run
        fake_nuke.press(target, "execute")
        assert "already running" in fake_nuke.messages()[-1]
        fake_nuke.press(target, "cancel")
        assert target["status"].value() == "cancelling"
    finally:
        run.cancel()  # whatever failed above, no job is left on the servers
        fake_nuke.pump_until(run.finished.is_set, what="the run to end")
    _assert_cluster_idle(cluster_env)
    for server in cluster_env:
        assert server.interrupt_requests and server.executed_prompt_ids == []
    assert type(run.error).__name__ == "RunCancelled"


def test_cancel_without_a_run_says_so(fake_nuke, tmp_path):
    import comfy_cluster_nuke.node

    node = comfy_cluster_nuke.node.create()
    fake_nuke.press(node, "cancel")
    assert node["status"].value() == "nothing to cancel"


@pytest.mark.parametrize("fault", ["restart", "refuse"])
def test_a_server_failing_mid_batch_still_gives_every_frame(fake_nuke, cluster_env, tmp_path, fault):
    import comfy_cluster_nuke.run as run_mod

    run_mod.pool_options["server_lost_after"] = 1.0  # move frames off an unreachable server soon
    try:
        node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(0.3)), str(tmp_path / "out"), last=8)
        for server in cluster_env:  # no frame ends before the fault, however loaded the machine
            server.pause_jobs()
        fake_nuke.press(node, "execute")
        victim = cluster_env[1]
        fake_nuke.pump_until(lambda: victim.queue_snapshot()[0], what=f"a job running on {victim.name}")
        if fault == "restart":
            victim.restart()
        else:
            victim.set_fault(Fault.REFUSE)
        for server in cluster_env:
            server.resume_jobs()
        # A bound on a hang only: a loaded machine once made the restarted server miss its
        # answers for seconds, and each frame sent to it then waits a read time-out to move.
        run = wait_run(fake_nuke, node, timeout=90)
    finally:
        run_mod.pool_options.clear()
    assert run.error is None, run.error
    assert len(run.paths) == 8 and all(os.path.isfile(p) for p in run.paths)
    assert fake_nuke.messages() == []
    read = read_nodes()[0]
    assert (read["first"].value(), read["last"].value()) == (1, 8)


def test_a_refused_workflow_shows_comfyuis_words(fake_nuke, cluster_env, tmp_path):
    workflow = load_image_workflow()
    workflow["2"]["inputs"]["steps"] = "x"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=6)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    messages = fake_nuke.messages()
    assert len(messages) == 1
    text = messages[0]
    assert "refused the workflow" in text
    assert "node 2 (TestSleep), input 'steps'" in text
    assert "x" in text.split("input 'steps':", 1)[1]
    assert node["status"].value().startswith("failed")
    assert read_nodes() == []
    assert type(run.error).__name__ == "RunError"
    _assert_cluster_idle(cluster_env)


def test_a_failing_node_shows_the_node_the_exception_and_its_message(fake_nuke, cluster_env, tmp_path):
    workflow = empty_image_workflow()
    workflow["2"] = {"class_type": "TestFail", "inputs": {"image": ["1", 0], "message": "the model ran out of VRAM"}}
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2, frame_input="", with_input=False)
    fake_nuke.press(node, "execute")
    wait_run(fake_nuke, node)
    messages = fake_nuke.messages()
    assert len(messages) == 1
    text = messages[0]
    assert "2 of 2 frame(s) failed" in text
    assert "node 2 (TestFail)" in text
    assert "RuntimeError: the model ran out of VRAM" in text
    assert read_nodes() == []


def test_a_failure_with_the_panel_closed_waits_on_the_node_instead_of_a_dialog(fake_nuke, cluster_env, tmp_path):
    """Issue 19 item 16: a background run's failure popped a modal dialog in the middle of the
    artist's other work. With the node's panel closed it stays on the node's status line."""
    workflow = load_image_workflow()
    workflow["2"]["inputs"]["steps"] = "x"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2)
    node.hideControlPanel()  # the artist went on with other work
    fake_nuke.press(node, "execute")
    wait_run(fake_nuke, node)
    assert fake_nuke.messages() == []
    status = node["status"].value()
    assert status.startswith("failed") and "node 2 (TestSleep), input 'steps'" in status


def test_some_frames_failing_still_reads_the_others(fake_nuke, mock_cluster_factory, monkeypatch, tmp_path):
    cluster = mock_cluster_factory(speeds=(1.0,))
    use_cluster(cluster, monkeypatch)
    cluster[0].fail_next_job("frame went wrong")
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=3)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert len(run.error.errors) == 1 and len(run.error.paths) == 2
    text = fake_nuke.messages()[0]
    assert "1 of 3 frame(s) failed" in text and "frame went wrong" in text
    read = read_nodes()[0]
    # The Read covers the node's range: the failed frame is a Read error there.
    assert (read["first"].value(), read["last"].value()) == (1, 3)


def test_execute_refuses_bad_settings_with_a_clear_message(fake_nuke, cluster_env, tmp_path):
    import comfy_cluster_nuke.node

    node = comfy_cluster_nuke.node.create()
    fake_nuke.press(node, "execute")
    assert "choose a workflow file" in fake_nuke.messages()[-1]

    fake_nuke.user_set(node, "workflow", str(tmp_path / "missing.json"))
    assert "not found" in node["status"].value()
    fake_nuke.press(node, "execute")
    assert "workflow file not found" in fake_nuke.messages()[-1]

    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf.json", load_image_workflow()))
    fake_nuke.press(node, "execute")  # LoadImage chosen, nothing connected
    assert "connect the plate input" in fake_nuke.messages()[-1]

    fake_nuke.user_set(node, "load_image_node", "(none)")
    fake_nuke.user_set(node, "frame_input", "9.seed")
    fake_nuke.press(node, "execute")
    assert "no node 9" in fake_nuke.messages()[-1]

    fake_nuke.user_set(node, "frame_input", "")
    fake_nuke.user_set(node, "first", 10)
    fake_nuke.user_set(node, "last", 5)
    fake_nuke.press(node, "execute")
    assert "10-5 is empty" in fake_nuke.messages()[-1]
    assert len(fake_nuke.messages()) == 5
    assert fake_nuke.progress_tasks() == []


def test_execute_twice_while_running_is_refused(fake_nuke, cluster_env, tmp_path):
    node = _start_long_run(fake_nuke, cluster_env, tmp_path, frames=2)
    fake_nuke.press(node, "execute")
    assert "already running" in fake_nuke.messages()[-1]
    fake_nuke.press(node, "cancel")
    wait_run(fake_nuke, node)


def test_user_cancelling_the_input_render_cancels_the_run(fake_nuke, cluster_env, tmp_path):
    fake_nuke.cancel_render_after(1)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"))
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert type(run.error).__name__ == "RunCancelled"
    assert all(s.received_prompts == [] for s in cluster_env)
    assert fake_nuke.messages() == []


def test_a_deleted_node_does_not_break_the_run(fake_nuke, cluster_env, tmp_path):
    import nuke

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", empty_image_workflow(0.2)), str(tmp_path / "out"), last=2, with_input=False)
    fake_nuke.press(node, "execute")
    import comfy_cluster_nuke.run as run_mod

    run = run_mod.current(node)
    nuke.delete(node)
    fake_nuke.pump_until(lambda: run.finished.is_set(), timeout=30)
    run.thread.join(5)
    fake_nuke.pump()
    # The Read inside a node that is gone cannot be updated: the run says so, no crash.
    assert "was deleted" in str(run.error)
    assert len(run.error.paths) == 2 and all(os.path.isfile(p) for p in run.error.paths)


def test_submit_without_gui_prints_progress_and_returns_the_files(fake_nuke, cluster_env, tmp_path, capsys):
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.set_gui(False)  # nuke -t
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=3)
    paths = run_mod.submit(node.name())
    assert [os.path.basename(p) for p in paths] == [f"{node.name()}_{f:04d}.png" for f in (1, 2, 3)]
    out = capsys.readouterr().out
    assert f"[{node.name()}] rendering the input" in out
    assert "3/3 frames done" in out
    assert f"[{node.name()}] done: 3 frame(s)" in out
    assert fake_nuke.progress_tasks() == []  # no progress bar without a GUI
    assert read_nodes()[0]["last"].value() == 3


def test_submit_raises_comfyuis_words_in_a_script(fake_nuke, cluster_env, tmp_path):
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.set_gui(False)  # nuke -t
    workflow = load_image_workflow()
    workflow["2"]["inputs"]["steps"] = "x"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2)
    with pytest.raises(run_mod.RunError, match=r"node 2 \(TestSleep\), input 'steps'") as info:
        run_mod.submit(node)
    assert set(info.value.errors) <= {1, 2} and info.value.errors
    assert fake_nuke.messages() == []  # a script gets an exception, not a dialog


def test_submit_on_the_gui_main_thread_refuses_at_once_and_start_returns_a_handle(fake_nuke, cluster_env, tmp_path):
    """The Script Editor runs on the main thread, which the progress bar and every main-thread
    call of the run need: blocking there freezes Nuke for the whole batch."""
    import comfy_cluster_nuke.run as run_mod

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    with pytest.raises(run_mod.RunError, match="would freeze Nuke"):
        fake_nuke.script_editor(lambda: run_mod.submit(node))
    assert all(s.received_prompts == [] for s in cluster_env) and fake_nuke.renders() == []

    handle = fake_nuke.script_editor(lambda: run_mod.start(node))  # returns at once
    assert not handle.finished.is_set()
    fake_nuke.pump_until(handle.finished.is_set, timeout=30, what="the run started from a script")
    assert handle.error is None and len(handle.paths) == 2
    assert handle.wait(0)


def test_submit_from_a_worker_thread_goes_through_the_main_thread(fake_nuke, cluster_env, tmp_path):
    import comfy_cluster_nuke.run as run_mod

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("paths", run_mod.submit(node)), name="pipeline-thread")
    worker.start()
    fake_nuke.pump_until(lambda: not worker.is_alive(), timeout=30)
    assert len(box["paths"]) == 2


def test_shared_storage_uses_the_servers_files_in_place(fake_nuke, mock_cluster_factory, monkeypatch, tmp_path):
    import json

    cluster = mock_cluster_factory(speeds=(1.0,))
    use_cluster(cluster, monkeypatch)
    server = cluster[0]
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", json.dumps([{"name": "shared", "url": server.url, "dir_local": server.data_dir}]))
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    server_files = [os.path.join(root, f) for root, _, files in os.walk(server.output_dir) for f in files]
    assert len(server_files) == 2
    for path in run.paths:
        # The frame is ComfyUI's own file (linked, not fetched over HTTP), under a Read-able name.
        assert any(os.path.samefile(path, s) for s in server_files)


def test_a_node_inside_a_group_gets_its_read_node_in_that_group(fake_nuke, cluster_env, tmp_path):
    import nuke

    outer = nuke.nodes.Group()
    with outer:
        node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert [n.fullName() for n in read_nodes()] == [f"{outer.name()}.{node.name()}.result"]
    assert fake_nuke.renders() == [(f"{outer.name()}.{node.name()}.Write1", 1, 2)]


def test_execute_without_gui_runs_to_the_end_and_prints_failures(fake_nuke, cluster_env, tmp_path, capsys):
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.set_gui(False)
    workflow = load_image_workflow()
    workflow["2"]["inputs"]["steps"] = "x"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2)
    run = run_mod.execute(node)  # a script under nuke -t: no event loop to come back to
    assert run is not None and run.finished.is_set()
    assert "node 2 (TestSleep), input 'steps'" in capsys.readouterr().out  # nuke.message prints in nuke -t


def test_two_nodes_run_at_once_into_the_same_folder(fake_nuke, cluster_env, tmp_path):
    out = tmp_path / "out"
    wf = write_json(tmp_path / "wf.json", load_image_workflow(0.1))
    a = make_run_node(fake_nuke, wf, str(out), last=3)
    b = make_run_node(fake_nuke, wf, str(out), first=11, last=13)
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.press(a, "execute")
    fake_nuke.press(b, "execute")
    runs = [run_mod.current(a), run_mod.current(b)]
    assert None not in runs and runs[0] is not runs[1]
    fake_nuke.pump_until(lambda: all(r.finished.is_set() for r in runs), timeout=30)
    for r in runs:
        r.thread.join(5)
    fake_nuke.pump()
    assert [r.error for r in runs] == [None, None]
    # One explicit folder for both: each run takes its own version folder.
    assert sorted(os.listdir(out)) == ["v001", "v002"]
    files = sorted(f for v in ("v001", "v002") for f in os.listdir(out / v))
    assert files == sorted([f"{a.name()}_{f:04d}.png" for f in (1, 2, 3)] + [f"{b.name()}_{f:04d}.png" for f in (11, 12, 13)])
    assert len(read_nodes()) == 2


def test_a_node_made_by_an_older_plugin_is_brought_up_to_date_and_runs(fake_nuke, cluster_env, tmp_path):
    """Issue 19 item 16: old nodes had to be made again (settings lost) after a marker bump.
    A marker-2 node as saved before: free-text colorspace, no pixels/mask knobs, a knobChanged
    script that raises without the plugin."""
    import nuke

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    for name in ("pixels", "exr_datatype", "exr_tonemap", "pixels_note", "mask_channel", "colorspace"):
        node.removeKnob(node[name])
    old_space = nuke.String_Knob("colorspace", "file colorspace")
    old_space.setValue("sRGB")
    node.addKnob(old_space)
    node["knobChanged"].setValue('__import__("comfy_cluster_nuke.node").node.knob_changed(nuke.thisNode(), nuke.thisKnob())')
    node["comfy_cluster_run"].setValue("2")
    undo_before = fake_nuke.undo_steps()
    nuke.root().setModified(False)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert node["comfy_cluster_run"].value() == "3"
    assert node["colorspace"].Class() == "Enumeration_Knob" and node["colorspace"].value() == "sRGB"
    assert node["pixels"].value() == "auto" and node.knob("mask_channel") is not None
    assert "except ImportError" in node["knobChanged"].value()
    assert node["frame_input"].value() == "2.seed" and node["last"].value() == 2  # the artist's settings kept
    assert fake_nuke.undo_steps() == undo_before and nuke.root().modified()
