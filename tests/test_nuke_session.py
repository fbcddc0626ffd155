"""The node inside an artist's working session: Nuke's own render going on, the colorspaces of
the script's OCIO config, the undo stack, the Viewer's hold of a short sequence (issue 19)."""

from __future__ import annotations

import pytest
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    fake_nuke,
    load_image_workflow,
    make_run_node,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


def test_execute_during_the_artists_own_render_waits_for_it(fake_nuke, cluster_env, tmp_path):
    """Item 10: the input render ran inside the artist's F7 render (Nuke runs queued calls
    between the frames it renders) and failed with "already executing"."""
    import nuke

    import comfy_cluster_nuke.run as run_mod

    artist_write = nuke.nodes.Write(file=str(tmp_path / "comp" / "comp.####.png"), file_type="png", create_directories=True)
    artist_write.setInput(0, nuke.nodes.Constant())
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    fake_nuke.press(node, "execute")
    run = run_mod.current(node)

    def held_at_first_frame(write: str, frame: int) -> None:
        # The artist's render is at its first frame until the run has asked to render.
        if write == artist_write.fullName() and frame == 1:
            fake_nuke.pump_until(
                lambda: "waiting for Nuke's render" in node["status"].value() or fake_nuke.violations() or run.finished.is_set(),
                what="the run to reach its input render",
            )

    fake_nuke.on_render_frame(held_at_first_frame)
    nuke.execute(artist_write, 1, 3)  # F7: on the main thread, pumping Nuke's event loop
    fake_nuke.on_render_frame(None)
    assert fake_nuke.violations() == []
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert [r[0] for r in fake_nuke.renders()] == [artist_write.fullName(), f"{node.name()}.Write1"]


def test_the_colorspace_is_a_pulldown_of_the_scripts_config_checked_before_any_gpu_work(fake_nuke, cluster_env, tmp_path):
    """Item 11: "file colorspace" was free text checked only when the result was read back,
    after the GPU work, and reported as "the node was deleted while it ran"; OCIO roles and the
    names of another config (Nuke 14's ACES 1.2 against Nuke 16's studio config) were not
    offered or caught."""
    import nuke

    from comfy_cluster_nuke import colorspace

    fake_nuke.set_ocio_config("aces_1.2")  # Nuke 14: the 8-bit default is the role matte_paint
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=1)
    choices = node["colorspace"].values()
    assert choices[0] == "default" and {"ACES - ACEScg", "scene_linear", "matte_paint"} <= set(choices)
    assert colorspace.resolve(node) == "matte_paint"
    fake_nuke.user_set(node, "colorspace", "scene_linear")  # a role: survives a config change
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert fake_nuke.render_details()[-1]["colorspace"] == "scene_linear"

    fake_nuke.user_set(node, "colorspace", "ACES - ACEScg")
    fake_nuke.set_ocio_config("aces_studio_2.1")  # the show moves to Nuke 16: ACEScg now
    sent = sum(len(s.received_prompts) for s in cluster_env)
    fake_nuke.press(node, "execute")
    assert "'ACES - ACEScg' is not a colorspace of this script's OCIO config" in fake_nuke.messages()[-1]
    assert "ACEScg" in fake_nuke.messages()[-1]
    assert sum(len(s.received_prompts) for s in cluster_env) == sent  # no GPU work
    colorspace.refresh(node)
    assert "ACEScg" in node["colorspace"].values()
    fake_nuke.user_set(node, "colorspace", "default")  # Nuke 16: "default (matte_paint)"
    assert colorspace.resolve(node) == "matte_paint"
    assert nuke.root()["int8Lut"].value() == "default (matte_paint)"


def test_a_run_leaves_no_undo_step_but_marks_the_script_modified(fake_nuke, cluster_env, tmp_path):
    """Item 12: the run set the hidden result Read (file, colorspace, on_error) with undo
    recording on, so the artist's next Ctrl+Z reverted the result."""
    import nuke

    fake_nuke.save_script(str(tmp_path / "sh010.nk"))
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
    nuke.scriptSave()
    before = fake_nuke.undo_steps()
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert fake_nuke.undo_steps() == before
    assert nuke.root().modified()  # the result is part of the script: saving keeps it in view


def test_current_frame_keeps_the_last_full_run_in_view(fake_nuke, cluster_env, tmp_path):
    """Item 13: "Current frame" made a version of one frame and pointed the Read at it; the
    Read's hold then showed that frame over the whole range, hiding the last full run."""
    import os

    import nuke

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), first=1, last=3)
    name = node.name()
    fake_nuke.press(node, "execute")
    full = wait_run(fake_nuke, node)
    assert full.error is None, full.error
    fake_nuke.set_frame(2)
    fake_nuke.press(node, "execute_frame")
    quick = wait_run(fake_nuke, node)
    assert quick.error is None, quick.error
    assert os.path.basename(quick.version_dir) == "v002" and len(quick.paths) == 1
    read = nuke.toNode(f"{name}.result")
    assert (read["first"].value(), read["last"].value()) == (1, 3)
    for frame in (1, 3):  # the full run's frames, shown around the new one (linked, not copied)
        kind, path = fake_nuke.read_frame(read, frame)
        assert kind == "file" and path.endswith(f"v002/{name}_{frame:04d}.png")
        assert os.path.samefile(path, os.path.join(full.version_dir, f"{name}_{frame:04d}.png"))
    assert fake_nuke.read_frame(read, 2) == ("file", quick.paths[0].replace(os.sep, "/"))
    assert sorted(os.listdir(full.version_dir)) == [f"{name}_{f:04d}.png" for f in (1, 2, 3)]  # left as it was


def test_a_frame_held_a_moment_by_another_program_is_placed_after_a_retry(fake_nuke, cluster_env, tmp_path, monkeypatch):
    """Item 14: the plugin moved frames into the version folder with bare os.replace; on
    Windows a Viewer or antivirus holding the file for a moment failed the frame. A sharing
    violation cannot be made on Linux: os.replace raises it once, as Windows does."""
    import os

    from comfy_cluster import localfiles
    from helpers import OsWith

    real_replace = os.replace
    held = []

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith("_0001.png") and not held:
            held.append(dst)
            raise PermissionError(13, "The process cannot access the file because it is being used by another process")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(localfiles, "os", OsWith(replace=replace))  # the library's moves only
    monkeypatch.setattr(localfiles, "_sleep", lambda seconds: None)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), first=1, last=2)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert held, "the frame was not moved with os.replace"
    assert run.error is None, run.error
    assert sorted(os.path.basename(p) for p in run.paths) == [f"{node.name()}_0001.png", f"{node.name()}_0002.png"]


def test_a_node_made_on_a_plate_takes_the_plates_frame_range(fake_nuke):
    """Item 16: first/last copied the script's range at creation, not the input's."""
    import nuke

    import comfy_cluster_nuke.node

    plate = nuke.nodes.Read()
    plate["file"].fromUserText("/plates/sh010.####.exr 1001-1050")
    plate.setSelected(True)
    node = comfy_cluster_nuke.node.create()
    assert node.input(0) is plate
    assert (node["first"].value(), node["last"].value()) == (1001, 1050)
    node.setSelected(False)  # Nuke selects a node it creates
    alone = comfy_cluster_nuke.node.create()
    assert (alone["first"].value(), alone["last"].value()) == (1, 100)  # nothing selected: the script's
    alone.setInput(0, plate)  # connected later, the range never set: it follows the plate
    assert (alone["first"].value(), alone["last"].value()) == (1001, 1050)
    node["first"].setValue(1010)  # set by the artist: a new plate leaves it alone
    other = nuke.nodes.Read()
    other["file"].fromUserText("/plates/sh020.####.exr 1-20")
    node.setInput(0, other)
    assert (node["first"].value(), node["last"].value()) == (1010, 1050)


def test_knob_changes_do_nothing_harmful_where_the_plugin_is_missing(fake_nuke, monkeypatch):
    """Item 16: the node's knobChanged script, saved in the .nk, raised ImportError on every
    knob change in a Nuke without the plugin (a vendor's, a render node's)."""
    import sys

    import comfy_cluster_nuke.node

    node = comfy_cluster_nuke.node.create()
    for name in [n for n in sys.modules if n.split(".")[0] == "comfy_cluster_nuke"]:
        monkeypatch.setitem(sys.modules, name, None)  # import comfy_cluster_nuke... raises ImportError
    fake_nuke.user_set(node, "frame_input", "3.seed")
    fake_nuke.user_set(node, "workflow", "/elsewhere/wf.json")
    assert node["frame_input"].value() == "3.seed"


def test_nodes_running_at_the_same_time_share_one_pool_closed_by_the_last(fake_nuke, cluster_env, tmp_path):
    """Item 16: every run built its own ServerPool, so nodes scheduled blind to each other's
    jobs. Seen from the servers: one client (one pool's websocket) for both nodes' jobs."""
    import threading

    import comfy_cluster_nuke.run as run_mod
    from comfy_cluster_nuke import session
    from nuke_fake.support import settle_threads

    before = set(threading.enumerate())
    workflow = write_json(tmp_path / "wf.json", load_image_workflow())
    for server in cluster_env:
        server.pause_jobs()
    nodes = [make_run_node(fake_nuke, workflow, str(tmp_path / f"out{i}"), first=1, last=2) for i in range(2)]
    from comfy_cluster_nuke import serverinfo

    for thread in serverinfo.started():  # the pickers' own look at /object_info, over by now
        thread.join(30)
    fake_nuke.pump()
    for node in nodes:
        fake_nuke.press(node, "execute")
    runs = [run_mod.current(node) for node in nodes]
    try:
        def sent() -> int:
            return sum(len(s.received_prompts) for s in cluster_env)

        # 2 nodes x 2 frames, all on the servers (2 servers x max_queue 2), before any ends.
        fake_nuke.pump_until(lambda: sent() >= 4 or any(r.finished.is_set() for r in runs), what="both nodes' jobs")
        assert session.open_pools() == 1
        clients = {extra.get("client_id") for s in cluster_env for _, _, extra in s.received_prompts}
        assert len(clients) == 1, clients
    finally:
        for server in cluster_env:
            server.resume_jobs()
    fake_nuke.pump_until(lambda: all(r.finished.is_set() for r in runs), what="both runs to end")
    for run in runs:
        assert run.error is None, run.error
        run.thread.join(10)
    assert session.open_pools() == 0
    assert settle_threads(before) == []  # the last run closed it: an idle Nuke keeps no socket


def test_quitting_nuke_cancels_the_jobs_through_nukes_own_hook(fake_nuke, cluster_env, tmp_path, monkeypatch):
    """Item 16: cancelling at quit relied on ``atexit`` (undocumented in Nuke) and, on script
    close, on a worker thread that a quitting Nuke does not wait for. Nuke's own hook
    (onScriptClose, run when Nuke quits) must have the jobs cancelled by the time it returns."""
    import atexit

    import comfy_cluster_nuke.run as run_mod
    from comfy_cluster_nuke import lifecycle

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)  # the fake's quit runs no atexit
    lifecycle.install()
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow(5.0, steps=50)), str(tmp_path / "out"), last=4)
    for server in cluster_env:
        server.pause_jobs()
    fake_nuke.press(node, "execute")
    run = run_mod.current(node)
    fake_nuke.pump_until(lambda: all(s.queue_snapshot()[0] for s in cluster_env), what="a job running on every server")
    fake_nuke.quit()
    # Nuke may be gone from here on: the servers already let the jobs go.
    assert all(s.interrupt_requests for s in cluster_env)
    assert all(not any(s.queue_snapshot()) for s in cluster_env), [s.queue_snapshot() for s in cluster_env]
    for server in cluster_env:
        server.resume_jobs()
        assert server.wait_idle(30.0) and server.executed_prompt_ids == []
    assert run.wait(30)


def test_with_the_gateway_running_in_nuke_runs_use_its_pool(fake_nuke, cluster_env, tmp_path, monkeypatch):
    """Item 16: the nodes and the gateway's other clients share one schedule: a run with the
    default strategy sends its jobs through the gateway's pool (its client id on the servers)."""
    import atexit

    from comfy_cluster_nuke import gateway, session

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)
    gateway.start("127.0.0.1:0")
    try:
        node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=2)
        fake_nuke.press(node, "execute")
        run = wait_run(fake_nuke, node)
        assert run.error is None, run.error
        clients = {extra.get("client_id") for s in cluster_env for _, _, extra in s.received_prompts}
        assert clients == {gateway.pool().client_id}
        assert session.open_pools() == 0
    finally:
        gateway.stop()
