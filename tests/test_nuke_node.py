"""Installing the plugin (init.py, menu.py) and the node it creates, before any run."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    fake_nuke,
    load_image_workflow,
    write_json,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "nuke_plugin")

pytestmark = pytest.mark.timeout(30)


def test_menu_adds_the_node_and_the_servers_panel(fake_nuke, cluster_env, monkeypatch):
    import atexit
    import runpy

    import nuke

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)  # not this test process's exit
    runpy.run_path(os.path.join(PLUGIN, "menu.py"), run_name="__main__")
    menu = nuke.menu("Nuke")
    item = menu.findItem("ComfyUI Cluster/ComfyUI Cluster Run")
    assert item is not None
    assert nuke.menu("Nodes").findItem("ComfyUI Cluster/ComfyUI Cluster Run") is not None
    item.invoke()
    groups = nuke.allNodes("Group")
    assert len(groups) == 1 and groups[0].knob("comfy_cluster_run") is not None

    menu.findItem("ComfyUI Cluster/Servers...").invoke()
    import comfy_cluster_nuke.panel as panel_mod

    panel = panel_mod._panel
    assert panel is not None and panel._shown
    fake_nuke.pump_until(lambda: not panel.refreshing and "online" in panel.summary_knob.value(), what="the panel's refresh")


def test_created_node_has_the_knobs_a_user_needs(fake_nuke):
    import nuke

    import comfy_cluster_nuke.node as node_mod

    fake_nuke.set_frame_range(1001, 1100)
    node = node_mod.create()
    assert node.Class() == "Group" and node.name() == "ComfyUIClusterRun1"
    expected = {
        "workflow": "File_Knob",
        "load_image_node": "Enumeration_Knob",
        "frame_input": "String_Knob",
        "first": "Int_Knob",
        "last": "Int_Knob",
        "strategy": "Enumeration_Knob",
        "output_dir": "File_Knob",
        "mask_node": "Enumeration_Knob",
        "ref_node": "Enumeration_Knob",
        "send_alpha": "Boolean_Knob",
        "colorspace": "Enumeration_Knob",  # the script's own colorspaces (issue 19 item 11)
        "extra_params": "String_Knob",
        "execute": "PyScript_Knob",
        "execute_frame": "PyScript_Knob",
        "rerun_failed": "PyScript_Knob",
        "cancel": "PyScript_Knob",
        "status": "Text_Knob",
        "show": "Enumeration_Knob",
    }
    for name, cls in expected.items():
        knob = node.knob(name)
        assert knob is not None, name
        assert knob.Class() == cls, name
    assert (node["first"].value(), node["last"].value()) == (1001, 1100)
    assert node["strategy"].values() == ["default", "fastest_completion", "least_loaded", "priority", "round_robin", "warm_models"]
    assert node["strategy"].value() == "default"
    assert node["load_image_node"].values() == ["(none)"]
    assert node["status"].value() == "idle"
    # The buttons' commands are one line each, binding no name in Nuke's shared namespace.
    assert node["execute"].command() == '__import__("comfy_cluster_nuke.run").run.execute(nuke.thisNode())'
    assert 'run.cancel(nuke.thisNode())' in node["cancel"].command()
    # Inside: plate, mask and ref inputs; the result Read; a Switch that passes the plate
    # through until there is a result.
    inner = {n.name(): n for n in node.nodes()}
    assert {"plate", "mask", "ref", "result", "show_switch"} <= set(inner)
    assert inner["show_switch"].input(0) is inner["plate"] and inner["show_switch"].input(1) is inner["result"]
    assert node.maxInputs() == 3
    assert nuke.allNodes("Output", group=node)[0].input(0) is inner["show_switch"]
    assert inner["show_switch"]["which"].value() == 0

    second = node_mod.create()
    assert second.name() == "ComfyUIClusterRun2"
    assert nuke.thisNode() is nuke.root()


def test_choosing_a_workflow_lists_its_load_image_nodes(fake_nuke, tmp_path):
    import comfy_cluster_nuke.node as node_mod

    workflow = load_image_workflow()
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "b.png"}}
    node = node_mod.create()
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf.json", workflow))
    knob = node["load_image_node"]
    assert knob.values() == ["(none)", "Plate (node 10)", "LoadImage (node 11)"]
    assert knob.value() == "Plate (node 10)"  # the first LoadImage is chosen
    fake_nuke.user_set(node, "load_image_node", "LoadImage (node 11)")

    # Another workflow that still has node 11 keeps the choice; one without it falls back.
    del workflow["10"]
    workflow["2"]["inputs"]["image"] = ["11", 0]
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf2.json", workflow))
    assert knob.value() == "LoadImage (node 11)"
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf3.json", {"1": {"class_type": "EmptyImage", "inputs": {}}}))
    assert knob.values() == ["(none)"] and knob.value() == "(none)"

    (tmp_path / "ui.json").write_text('{"nodes": [], "links": []}')
    fake_nuke.user_set(node, "workflow", str(tmp_path / "ui.json"))
    assert "API" in node["status"].value()


def test_read_settings_resolves_paths_and_the_default_strategy(fake_nuke, tmp_path, monkeypatch):
    import nuke

    import comfy_cluster_nuke.node as node_mod
    import comfy_cluster_nuke.run as run_mod

    monkeypatch.setenv("WF_DIR", str(tmp_path))
    write_json(tmp_path / "wf.json", load_image_workflow())
    node = node_mod.create()
    node.setInput(0, nuke.nodes.Constant())
    fake_nuke.user_set(node, "workflow", "$WF_DIR/wf.json")
    settings = run_mod.read_settings(node)
    assert settings.workflow_path == str(tmp_path / "wf.json")
    assert settings.load_image_node == "10" and settings.needs_render
    assert settings.strategy is None  # the environment's, or least_loaded
    assert settings.output_base.startswith(os.path.expanduser("~"))  # an unsaved script
    run_mod.set_default_strategy("round_robin")
    try:
        assert run_mod.read_settings(node).strategy == "round_robin"
        fake_nuke.user_set(node, "strategy", "priority")
        assert run_mod.read_settings(node).strategy == "priority"
    finally:
        run_mod.set_default_strategy(None)
    with pytest.raises(ValueError):
        run_mod.set_default_strategy("fastest")


def test_describe_error_uses_comfyuis_words(fake_nuke):
    from comfy_cluster import JobFailed, NodeError, ServerError, WorkflowError

    from comfy_cluster_nuke.report import describe_error, ranges as _ranges

    refused = WorkflowError(
        "gpu1: Prompt outputs failed validation",
        server="gpu1",
        node_errors=[NodeError("3", "KSampler", "steps", "Value -1 smaller than min of 1", "value_smaller_than_min")],
    )
    assert describe_error(refused) == (
        "ComfyUI refused the workflow by gpu1:\n  node 3 (KSampler), input 'steps': Value -1 smaller than min of 1"
    )
    failed = JobFailed("x", server="gpu2", node_id="7", node_type="VAEDecode", exception_type="torch.OutOfMemoryError", exception_message="CUDA out of memory")
    assert describe_error(failed) == "ComfyUI failed on gpu2 in node 7 (VAEDecode):\n  torch.OutOfMemoryError: CUDA out of memory"
    lost = ServerError("job failed", attempts=[("gpu1", "connection refused"), ("gpu2", "timed out")])
    assert describe_error(lost) == "the servers failed:\n  gpu1: connection refused\n  gpu2: timed out"
    assert _ranges([5, 1, 2, 3, 7, 8]) == "1-3, 5, 7-8"


def test_created_node_connects_to_the_selected_node(fake_nuke):
    import nuke

    import comfy_cluster_nuke.node as node_mod

    plate = nuke.createNode("Constant")
    node = node_mod.create()
    assert node.input(0) is plate
    assert nuke.selectedNode() is node
    node.setSelected(False)
    with pytest.raises(ValueError):
        nuke.selectedNode()
    assert node_mod.create().input(0) is None
