"""A saved script opened again, and a node copied and pasted: what Nuke keeps (knob values and
scripts as text, user knobs, hidden knobs) must be enough for the node to work again."""

from __future__ import annotations

import os

import pytest
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    fake_nuke,
    load_image_workflow,
    make_run_node,
    read_nodes,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


def test_a_saved_script_opened_again_runs_into_the_same_folder(fake_nuke, cluster_env, tmp_path):
    import nuke

    script = str(tmp_path / "comp" / "sh010_comp_v003.nk")
    os.makedirs(os.path.dirname(script))
    fake_nuke.save_script(script)
    wf = load_image_workflow()
    wf["75:12"] = wf.pop("10")
    wf["2"]["inputs"]["image"] = ["75:12", 0]
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", wf), "", last=2)
    fake_nuke.user_set(node, "extra_params", "2.steps")
    node["p_2_steps"].setValue(3)
    fake_nuke.press(node, "execute")
    first = wait_run(fake_nuke, node)
    assert first.error is None, first.error
    name, uid = node.name(), node["node_uid"].value()
    nuke.scriptSave(script)

    nuke.scriptOpen(script)  # a new session, as far as the script knows
    loaded = nuke.toNode(name)
    assert loaded is not None and loaded is not node
    assert loaded["node_uid"].value() == uid
    assert loaded["load_image_node"].value() == "Plate (node 75:12)"
    assert not loaded["node_uid"].visible()  # hidden knobs stay hidden
    assert loaded["p_2_steps"].value() == 3
    assert nuke.toNode(f"{name}.result")["file"].value().endswith(f"v001/{name}_####.png")
    fake_nuke.press(loaded, "execute")  # the button's command, kept as text, still works
    second = wait_run(fake_nuke, loaded)
    assert second.error is None, second.error
    assert os.path.dirname(second.version_dir) == os.path.dirname(first.version_dir)
    assert second.version_dir.endswith("v002")
    assert sorted(p["2"]["inputs"]["steps"] for s in cluster_env for _, p, _ in s.received_prompts) == [3, 3, 3, 3]
    # The knobChanged script, kept as text, still refreshes the choices.
    fake_nuke.user_set(loaded, "workflow", write_json(tmp_path / "wf2.json", load_image_workflow()))
    assert loaded["load_image_node"].value() == "Plate (node 10)"


def test_a_pasted_node_gets_its_own_id_folder_and_read(fake_nuke, cluster_env, tmp_path, monkeypatch):
    import atexit

    import nuke

    from comfy_cluster_nuke import lifecycle

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)
    lifecycle.install()  # menu.py's hooks
    fake_nuke.save_script(str(tmp_path / "sh010.nk"))
    original = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), "", last=1)
    fake_nuke.press(original, "execute")
    first = wait_run(fake_nuke, original)
    uid = original["node_uid"].value()
    nuke.scriptSave()
    for n in nuke.allNodes():
        n.setSelected(n is original)
    nuke.nodeCopy("%clipboard%")
    pasted = nuke.nodePaste("%clipboard%")
    assert pasted is not None and pasted.name() == "ComfyUIClusterRun2"
    # Renewed when pasted (Nuke's onCreate), not at its first run: the script is to be saved.
    assert pasted["node_uid"].value() not in ("", uid) and original["node_uid"].value() == uid
    assert nuke.root().modified()
    pasted.setInput(0, nuke.nodes.Constant())
    fake_nuke.press(pasted, "execute")
    second = wait_run(fake_nuke, pasted)
    assert second.error is None, second.error
    assert os.path.dirname(second.version_dir) != os.path.dirname(first.version_dir)
    reads = {r.fullName(): r["file"].value() for r in read_nodes()}
    assert reads[f"{original.name()}.result"].startswith(first.version_dir.replace(os.sep, "/"))
    assert reads[f"{pasted.name()}.result"].startswith(second.version_dir.replace(os.sep, "/"))


def test_renaming_or_moving_the_node_into_a_group_keeps_its_id_and_folder(fake_nuke, cluster_env, tmp_path, monkeypatch):
    """Issue 19 item 1: the id followed the node's name, so a rename drew a new folder."""
    import atexit

    import nuke

    from comfy_cluster_nuke import lifecycle

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)
    lifecycle.install()
    fake_nuke.save_script(str(tmp_path / "sh010.nk"))
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), "", last=1)
    uid = node["node_uid"].value()
    fake_nuke.press(node, "execute")
    first = wait_run(fake_nuke, node)
    node.setName("Hero")
    fake_nuke.press(node, "execute")
    second = wait_run(fake_nuke, node)
    assert node["node_uid"].value() == uid
    assert os.path.basename(second.version_dir) == "v001"  # its own folder (named Hero_<id>), same id
    assert os.path.basename(os.path.dirname(second.version_dir)) == f"Hero_{uid}"
    assert first.error is None and second.error is None
    # Moving it into a group is a cut and paste: the original is gone, so the id stays.
    for n in nuke.allNodes():
        n.setSelected(n is node)
    nuke.nodeCopy("%clipboard%")
    nuke.delete(node)
    box = nuke.nodes.Group()
    with box:
        moved = nuke.nodePaste("%clipboard%")
    assert moved["node_uid"].value() == uid
