"""What would break at a studio (issue 12), each against the stricter fake ``nuke``.

Outputs next to the script and versioned; the input render fully specified; subgraph node ids;
file knobs evaluated as Nuke does; creation in the group last clicked; renders serialised;
``mainthread.call`` trusting its box; status updates without undo steps; the panel reopening;
jobs cancelled when the script closes or Nuke quits; failed frames visible and re-runnable.
"""

from __future__ import annotations

import os
import threading

import pytest
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    empty_image_workflow,
    fake_nuke,
    load_image_workflow,
    make_run_node,
    read_nodes,
    use_cluster,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


def _run(fake_nuke, node, button="execute"):
    fake_nuke.press(node, button)
    return wait_run(fake_nuke, node)


# --- 1. the default output folder -------------------------------------------------------------


def test_default_output_is_next_to_the_script_per_script_and_node_and_versioned(fake_nuke, cluster_env, tmp_path):
    import nuke

    wf = write_json(tmp_path / "wf.json", empty_image_workflow())
    shots = {}
    for shot in ("sh010_comp_v003", "sh020_comp_v001"):
        fake_nuke.reset()
        fake_nuke.save_script(str(tmp_path / "comp" / f"{shot}.nk"))
        node = make_run_node(fake_nuke, wf, "", last=2, with_input=False)
        assert node.name() == "ComfyUIClusterRun1"  # every script's first node has this name
        run = _run(fake_nuke, node)
        assert run.error is None, run.error
        shots[shot] = (node, run)
        base = tmp_path / "comp" / "comfyui" / shot / f"ComfyUIClusterRun1_{node['node_uid'].value()}"
        assert run.version_dir == str(base / "v001")
        assert sorted(os.listdir(base / "v001")) == ["ComfyUIClusterRun1_0001.png", "ComfyUIClusterRun1_0002.png"]
    assert shots["sh010_comp_v003"][1].version_dir != shots["sh020_comp_v001"][1].version_dir

    # A re-run never overwrites the previous result; the Read shows the newest.
    node, first_run = shots["sh020_comp_v001"]
    before = open(first_run.paths[0], "rb").read()
    second = _run(fake_nuke, node)
    assert second.version_dir.endswith("v002")
    assert open(first_run.paths[0], "rb").read() == before
    assert "/v002/" in nuke.toNode(f"{node.name()}.result")["file"].value()


def test_the_project_directory_wins_over_the_script_folder_and_unsaved_scripts_go_home(fake_nuke, cluster_env, tmp_path, monkeypatch):
    import nuke

    wf = write_json(tmp_path / "wf.json", empty_image_workflow())
    fake_nuke.save_script(str(tmp_path / "scripts" / "sh010.nk"))
    nuke.root()["project_directory"].setValue("[file dirname [file dirname [value root.name]]]/project")
    node = make_run_node(fake_nuke, wf, "", last=1, with_input=False)
    run = _run(fake_nuke, node)
    assert run.version_dir.startswith(str(tmp_path / "project" / "comfyui" / "sh010" / node.name()))

    # A studio's Python in it (Tcl's [python {...}], code with brackets of its own included).
    nuke.root()["project_directory"].setValue("[python {nuke.script_directory().rsplit('/', 1)[0]}]/studio")
    run = _run(fake_nuke, node)
    assert run.version_dir.startswith(str(tmp_path / "studio" / "comfyui" / "sh010" / node.name()))

    fake_nuke.reset()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    node = make_run_node(fake_nuke, wf, "", last=1, with_input=False)
    run = _run(fake_nuke, node)
    assert run.version_dir.startswith(str(tmp_path / "home" / "comfyui_renders" / "untitled" / node.name()))


def test_two_sessions_never_take_the_same_version(tmp_path, fake_nuke):
    from comfy_cluster_nuke.destinations import new_version

    results = []
    threads = [threading.Thread(target=lambda: results.append(new_version(str(tmp_path)))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(os.path.basename(p) for p in results) == [f"v{i:03d}" for i in range(1, 9)]


# --- 3. the input render ----------------------------------------------------------------------


def test_the_input_render_is_fully_specified(fake_nuke, cluster_env, tmp_path):
    import nuke

    fired = []
    # A studio's callbacks: set a Write's path and colorspace on creation, log before render.
    nuke.addOnCreate(lambda: nuke.thisNode()["beforeRender"].setValue("studio_hook()"), nodeClass="Write")
    nuke.addBeforeRender(lambda: fired.append("before"), nodeClass="Write")
    fake_nuke.set_proxy(True)
    fake_nuke.set_views(["left", "right"])
    fake_nuke.save_script(str(tmp_path / "sh010.nk"))
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    nuke.root().setModified(False)
    undo_before = fake_nuke.undo_steps()
    fake_nuke.press(node, "execute")
    fake_nuke.pump_until(lambda: fake_nuke.render_details(), what="the input render")
    detail = fake_nuke.render_details()[0]
    assert detail == {
        "node": f"{node.name()}.Write1",
        "colorspace": "sRGB",  # explicit: the script's 8-bit default, not the Write's studio default
        "channels": "rgb",  # ComfyUI's LoadImage would turn alpha 0 into a full mask
        "file_type": "png",  # no server has LoadEXR/SaveEXR
        "raw": False,  # converted to the colorspace above
        "proxy": False,  # full resolution even in proxy mode
        "views": ["left", "right"],  # every view, each to its own file (%V)
        "callbacks": [],  # no studio callback ran for our temporary Write
        "undo_disabled": True,
    }
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert fired == []
    assert nuke.root()["proxy"].value() is True  # the artist's proxy mode is back
    assert not any("Write" in step for step in fake_nuke.undo_steps()[len(undo_before):])
    read = nuke.toNode(f"{node.name()}.result")
    assert read["colorspace"].value() == "sRGB"  # read back with the colorspace it was written in


def test_alpha_is_sent_when_asked_and_a_wrong_colorspace_is_named(fake_nuke, cluster_env, tmp_path):
    fake_nuke.set_ocio_config("aces_1.2")
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=1)
    fake_nuke.user_set(node, "send_alpha", True)
    fake_nuke.user_set(node, "colorspace", "ACES - ACEScg")
    run = _run(fake_nuke, node)
    assert run.error is None, run.error
    assert fake_nuke.render_details()[0]["channels"] == "rgba"
    assert fake_nuke.render_details()[0]["colorspace"] == "ACES - ACEScg"

    with pytest.raises(ValueError):  # a pulldown: only the script's own names can be chosen
        fake_nuke.user_set(node, "colorspace", "no such space")


# --- 4. subgraph ids, 5. evaluated file knobs, 6. lastHitGroup ----------------------------------


def test_a_loadimage_inside_a_subgraph_keeps_its_id(fake_nuke, cluster_env, tmp_path):
    wf = load_image_workflow()
    wf["75:12"] = wf.pop("10")
    wf["2"]["inputs"]["image"] = ["75:12", 0]
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", wf), str(tmp_path / "out"), last=2)
    assert node["load_image_node"].value() == "Plate (node 75:12)"
    run = _run(fake_nuke, node)
    assert run.error is None, run.error
    images = [p["75:12"]["inputs"]["image"] for s in cluster_env for _, p, _ in s.received_prompts]
    assert len(images) == 2 and all("_in0." in name for name in images)


def test_file_knobs_are_evaluated_like_nuke_tcl_filters_and_project_relative(fake_nuke, tmp_path):
    import nuke

    from comfy_cluster_nuke import node as node_mod
    from comfy_cluster_nuke.settings import read_settings

    (tmp_path / "shot").mkdir()
    write_json(tmp_path / "shot" / "wf.json", load_image_workflow())
    fake_nuke.save_script(str(tmp_path / "shot" / "sh010.nk"))
    node = node_mod.create()
    node.setInput(0, nuke.nodes.Constant())
    fake_nuke.user_set(node, "workflow", "[file dirname [value root.name]]/wf.json")
    assert read_settings(node).workflow_path == str(tmp_path / "shot" / "wf.json")
    assert node["load_image_node"].value() == "Plate (node 10)"  # the choices used the evaluated path too

    fake_nuke.user_set(node, "workflow", "wf.json")  # relative: to the script's folder
    assert read_settings(node).workflow_path == str(tmp_path / "shot" / "wf.json")

    # The studio maps another OS's mount point with a filename filter.
    nuke.addFilenameFilter(lambda path: path.replace("/mnt/projects", str(tmp_path)))
    fake_nuke.user_set(node, "workflow", "/mnt/projects/shot/wf.json")
    assert read_settings(node).workflow_path == str(tmp_path / "shot" / "wf.json")


def test_the_node_is_created_in_the_group_the_artist_works_in(fake_nuke):
    import atexit

    import nuke

    import comfy_cluster_nuke.menu as menu

    atexit_register = atexit.register
    try:
        atexit.register = lambda fn, *a, **k: fn  # type: ignore[assignment]
        menu.add_menus()
    finally:
        atexit.register = atexit_register  # type: ignore[assignment]
    group = nuke.nodes.Group()
    fake_nuke.click_in_group(group)  # the artist has the group's node graph open
    nuke.menu("Nodes").findItem("ComfyUI Cluster/ComfyUI Cluster Run").invoke()
    created = [n for n in nuke.allNodes("Group", group=group)]
    assert len(created) == 1 and created[0].knob("comfy_cluster_run") is not None
    assert [n for n in nuke.allNodes("Group") if n is not group] == []


# --- 8. renders serialised, 9. mainthread.call -------------------------------------------------


def test_two_executes_at_once_never_render_inside_each_other(fake_nuke, cluster_env, tmp_path):
    wf = write_json(tmp_path / "wf.json", load_image_workflow(0.01))
    a = make_run_node(fake_nuke, wf, str(tmp_path / "a"), last=12)
    b = make_run_node(fake_nuke, wf, str(tmp_path / "b"), last=12)
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.press(a, "execute")
    fake_nuke.press(b, "execute")
    runs = [run_mod.current(a), run_mod.current(b)]
    fake_nuke.pump_until(lambda: all(r.finished.is_set() for r in runs), timeout=20, what="both runs")
    assert [r.error for r in runs] == [None, None]
    # The fake records a violation for an execute() inside another (the fixture checks it).
    assert len(fake_nuke.renders()) == 2


def test_mainthread_call_trusts_its_box_not_nukes_return_value(fake_nuke, monkeypatch):
    import nuke

    from comfy_cluster_nuke import mainthread

    real = nuke.executeInMainThreadWithResult

    def returns_none(call, args=(), kwargs=None):  # Nuke versions that drop the result
        real(call, args, kwargs)
        return None

    monkeypatch.setattr(nuke, "executeInMainThreadWithResult", returns_none)
    box = {}
    worker = threading.Thread(target=lambda: box.update(a=mainthread.call(lambda: 5), b=mainthread.call(lambda: None)))
    worker.start()
    fake_nuke.pump_until(lambda: not worker.is_alive(), what="the worker")
    assert box == {"a": 5, "b": None}


# --- 10. status, 11. panel -------------------------------------------------------------------


def test_status_updates_are_plain_text_without_undo_or_modified_script(fake_nuke, tmp_path):
    import nuke

    from comfy_cluster_nuke import node as node_mod

    node = node_mod.create()
    fake_nuke.save_script(str(tmp_path / "sh010.nk"))
    steps = len(fake_nuke.undo_steps())
    node_mod.set_status(node, "failed - <class 'torch.OutOfMemoryError'>: CUDA & more")
    assert node["status"].value() == "failed - &lt;class 'torch.OutOfMemoryError'&gt;: CUDA &amp; more"
    assert len(fake_nuke.undo_steps()) == steps and nuke.root().modified() is False


def test_the_servers_panel_reopens_after_it_was_closed(fake_nuke, cluster_env):
    from comfy_cluster_nuke import panel as panel_mod

    first = panel_mod.show()
    fake_nuke.pump_until(lambda: not first.refreshing, what="the first refresh")
    fake_nuke.close_panel(first)
    second = panel_mod.show()
    assert second is not first and second._shown
    fake_nuke.pump_until(lambda: not second.refreshing and "online" in second.summary_knob.value(), what="the refresh")


# --- 14. cancel on script close and at exit -----------------------------------------------------


def _long_run(fake_nuke, cluster, tmp_path):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(5.0, steps=50)), str(tmp_path / "out"), last=4)
    for server in cluster:  # no frame ends before the test stops the run, however loaded the machine
        server.pause_jobs()
    fake_nuke.press(node, "execute")
    fake_nuke.pump_until(lambda: all(s.queue_snapshot()[0] for s in cluster), what="a job running on every server")
    import comfy_cluster_nuke.run as run_mod

    return run_mod.current(node)


@pytest.mark.parametrize("how", ["script_close", "exit"])
def test_jobs_are_cancelled_when_the_script_closes_or_nuke_quits(fake_nuke, cluster_env, tmp_path, monkeypatch, how):
    import atexit

    from comfy_cluster_nuke import lifecycle

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn) or fn)
    lifecycle.install()
    run = _long_run(fake_nuke, cluster_env, tmp_path)
    if how == "script_close":
        fake_nuke.close_script()
        fake_nuke.pump_until(run.finished.is_set, timeout=30, what="the run to end")
    else:
        assert registered == [lifecycle.at_exit]
        registered[0]()  # Nuke quitting: no main loop runs any more
        assert run.finished.is_set()
    for server in cluster_env:
        assert server.wait_idle(30.0)
        assert server.interrupt_requests and server.executed_prompt_ids == []
    assert type(run.error).__name__ == "RunCancelled"


# --- 15. failed frames, renaming ----------------------------------------------------------------


def test_failed_frames_are_read_errors_and_rerun_completes_the_same_version(fake_nuke, mock_cluster_factory, monkeypatch, tmp_path):
    import nuke

    cluster = mock_cluster_factory(speeds=(1.0,))
    use_cluster(cluster, monkeypatch)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=3)
    cluster[0].fail_next_job("frame went wrong")
    run = _run(fake_nuke, node)
    failed = sorted(run.error.errors)
    assert len(failed) == 1 and node["failed_frames"].value() == str(failed[0])
    read = nuke.toNode(f"{node.name()}.result")
    # The gap is an error, not a placeholder: a render through the node stops on it (issue 19 item 4).
    assert read["on_error"].value() == "error"
    with pytest.raises(RuntimeError, match="Read error"):
        fake_nuke.read_frame(read, failed[0])
    assert (read["first"].value(), read["last"].value()) == (1, 3)
    fake_nuke.take_errors()
    fake_nuke.messages().clear()

    prompts_before = len(cluster[0].received_prompts)
    rerun = _run(fake_nuke, node, "rerun_failed")
    assert rerun.error is None, rerun.error
    assert len(cluster[0].received_prompts) == prompts_before + 1  # only the failed frame
    assert rerun.version_dir == run.version_dir  # completes the same version
    assert sorted(os.listdir(rerun.version_dir)) == [f"{node.name()}_{f:04d}.png" for f in (1, 2, 3)]
    assert node["failed_frames"].value() == ""
    import comfy_cluster_nuke.run as run_mod

    fake_nuke.press(node, "rerun_failed")
    assert run_mod.current(node) is None  # nothing left to re-run
    assert node["status"].value() == "no failed frame to run again"

    node.setName("Hero_comfy")  # renaming cannot orphan the Read: it lives inside the node
    assert nuke.toNode("Hero_comfy.result")["file"].value() == read["file"].value()


def test_status_knob_updates_are_throttled_but_the_last_word_always_lands(fake_nuke, tmp_path, monkeypatch):
    import nuke

    from comfy_cluster_nuke import node as node_mod
    from comfy_cluster_nuke import runner
    from comfy_cluster_nuke.settings import read_settings

    node = node_mod.create()
    node.setInput(0, nuke.nodes.Constant())
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf.json", load_image_workflow()))
    run = runner.Run(node, read_settings(node), interactive=False, dialogs=False)
    shown = []
    monkeypatch.setattr(node_mod, "set_status", lambda n, text: shown.append(text))
    now = [100.0]
    monkeypatch.setattr(runner, "_clock", lambda: now[0])
    for i, step in enumerate((0.0, 0.1, 0.1, 0.1, 0.3)):  # polls every 0.1 s
        now[0] += step
        run._show(f"{i}/5 frames done", i * 20)
    run._show("done", 100, force=True)
    assert shown == ["0/5 frames done", "3/5 frames done", "4/5 frames done", "done"]
