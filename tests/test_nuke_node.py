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


@pytest.fixture
def saved_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def _load_init(name: str = "comfy_cluster_nuke_init"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(PLUGIN, "init.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_init_puts_the_library_and_the_libs_folder_first_on_sys_path(saved_sys_path, monkeypatch, tmp_path, capsys):
    libs = tmp_path / "libs"
    libs.mkdir()
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(libs))
    while ROOT in sys.path:
        sys.path.remove(ROOT)
    _load_init()
    assert sys.path[0] == str(libs)
    assert sys.path[1] == ROOT
    assert capsys.readouterr().err == ""  # every dependency is found


def test_init_skips_a_libs_folder_that_does_not_exist_and_names_missing_dependencies(saved_sys_path, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(tmp_path / "nope"))
    module = _load_init()
    assert str(tmp_path / "nope") not in sys.path
    monkeypatch.setattr(module, "DEPENDENCIES", ("requests", "surely_not_installed_pkg"))
    module.setup_paths()
    err = capsys.readouterr().err
    assert "missing surely_not_installed_pkg" in err
    assert "nuke_setup.py" in err and "--python-version" in err


def test_init_default_libs_folder(monkeypatch):
    module = _load_init()
    monkeypatch.delenv("COMFY_CLUSTER_LIBS", raising=False)
    assert module.libs_dir({}) == os.path.abspath(os.path.expanduser("~/.nuke/comfy_cluster_libs"))


def test_menu_adds_the_node_and_the_servers_panel(fake_nuke, cluster_env):
    import runpy

    import nuke

    runpy.run_path(os.path.join(PLUGIN, "menu.py"))
    menu = nuke.menu("Nuke")
    item = menu.findItem("ComfyUI Cluster/ComfyUI Cluster Run")
    assert item is not None
    assert nuke.menu("Nodes").findItem("ComfyUI Cluster/ComfyUI Cluster Run") is not None
    item.invoke()
    groups = nuke.allNodes("Group")
    assert len(groups) == 1 and groups[0].knob("comfy_cluster_run") is not None

    menu.findItem("ComfyUI Cluster/Servers...").invoke()
    import nuke_plugin.panel as panel_mod

    panel = panel_mod._panel
    assert panel is not None and panel._shown
    fake_nuke.pump_until(lambda: not panel.refreshing and "online" in panel.summary_knob.value(), what="the panel's refresh")


def test_created_node_has_the_knobs_a_user_needs(fake_nuke):
    import nuke

    import nuke_plugin.node as node_mod

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
        "execute": "PyScript_Knob",
        "cancel": "PyScript_Knob",
        "status": "Text_Knob",
    }
    for name, cls in expected.items():
        knob = node.knob(name)
        assert knob is not None, name
        assert knob.Class() == cls, name
    assert (node["first"].value(), node["last"].value()) == (1001, 1100)
    assert node["strategy"].values() == ["default", "fastest_completion", "least_loaded", "priority", "round_robin"]
    assert node["strategy"].value() == "default"
    assert node["load_image_node"].values() == ["(none)"]
    assert node["status"].value() == "idle"
    # The buttons' commands are one line each, importing the plugin and using thisNode().
    assert node["execute"].command() == "import nuke_plugin.run; nuke_plugin.run.execute(nuke.thisNode())"
    assert "nuke_plugin.run.cancel(nuke.thisNode())" in node["cancel"].command()
    # The group passes its input through.
    inner = {n.Class(): n for n in node.nodes()}
    assert set(inner) == {"Input", "Output"}
    assert inner["Output"].input(0) is inner["Input"]
    assert node.maxInputs() == 1

    second = node_mod.create()
    assert second.name() == "ComfyUIClusterRun2"
    assert nuke.thisNode() is nuke.root()


def test_choosing_a_workflow_lists_its_load_image_nodes(fake_nuke, tmp_path):
    import nuke_plugin.node as node_mod

    workflow = load_image_workflow()
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "b.png"}}
    node = node_mod.create()
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf.json", workflow))
    knob = node["load_image_node"]
    assert knob.values() == ["(none)", "10: Plate", "11: LoadImage"]
    assert knob.value() == "10: Plate"  # the first LoadImage is chosen
    fake_nuke.user_set(node, "load_image_node", "11: LoadImage")

    # Another workflow that still has node 11 keeps the choice; one without it falls back.
    del workflow["10"]
    workflow["2"]["inputs"]["image"] = ["11", 0]
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf2.json", workflow))
    assert knob.value() == "11: LoadImage"
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf3.json", {"1": {"class_type": "EmptyImage", "inputs": {}}}))
    assert knob.values() == ["(none)"] and knob.value() == "(none)"

    (tmp_path / "ui.json").write_text('{"nodes": [], "links": []}')
    fake_nuke.user_set(node, "workflow", str(tmp_path / "ui.json"))
    assert "API" in node["status"].value()


def test_read_settings_resolves_paths_and_the_default_strategy(fake_nuke, tmp_path, monkeypatch):
    import nuke

    import nuke_plugin.node as node_mod
    import nuke_plugin.run as run_mod

    monkeypatch.setenv("WF_DIR", str(tmp_path))
    write_json(tmp_path / "wf.json", load_image_workflow())
    node = node_mod.create()
    node.setInput(0, nuke.nodes.Constant())
    fake_nuke.user_set(node, "workflow", "$WF_DIR/wf.json")
    settings = run_mod.read_settings(node)
    assert settings.workflow_path == str(tmp_path / "wf.json")
    assert settings.load_image_node == "10" and settings.needs_render
    assert settings.strategy is None  # the environment's, or least_loaded
    assert settings.output_dir.endswith(os.path.join("comfy_cluster", node.name()))
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

    from nuke_plugin.run import _ranges, describe_error

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

    import nuke_plugin.node as node_mod

    plate = nuke.createNode("Constant")
    node = node_mod.create()
    assert node.input(0) is plate
    assert nuke.selectedNode() is node
    node.setSelected(False)
    with pytest.raises(ValueError):
        nuke.selectedNode()
    assert node_mod.create().input(0) is None
