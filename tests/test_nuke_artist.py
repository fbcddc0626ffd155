"""What artists expect from the node: the current frame alone, several inputs, the workflow's
parameters as (animatable) knobs, and the node's output being the result."""

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


def _prompts(cluster):
    return sorted((p["2"]["inputs"]["seed"], p) for s in cluster for _, p, _ in s.received_prompts)


def test_current_frame_runs_only_the_frame_the_viewer_shows(fake_nuke, cluster_env, tmp_path):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), first=1001, last=1100)
    fake_nuke.set_frame(1042)
    fake_nuke.press(node, "execute_frame")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    assert fake_nuke.renders() == [(f"{node.name()}.Write1", 1042, 1042)]
    assert [seed for seed, _ in _prompts(cluster_env)] == [1042]
    assert [p.rsplit("_", 1)[1] for p in run.paths] == ["1042.png"]


def test_parameters_become_knobs_and_animated_ones_are_evaluated_per_frame(fake_nuke, cluster_env, tmp_path):
    import nuke

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=3)
    fake_nuke.user_set(node, "extra_params", "2.steps 2.seconds")
    steps, seconds = node["p_2_steps"], node["p_2_seconds"]
    assert isinstance(steps, nuke.Int_Knob) and steps.value() == 2  # starts at the workflow's value
    assert isinstance(seconds, nuke.Double_Knob) and seconds.value() == pytest.approx(0.05)
    steps.setValueAt(2, 1)
    steps.setValueAt(6, 3)  # animated: 2, 4, 6
    seconds.setValue(0.01)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    sent = [(seed, p["2"]["inputs"]["steps"], p["2"]["inputs"]["seconds"]) for seed, p in _prompts(cluster_env)]
    assert sent == [(1, 2, 0.01), (2, 4, 0.01), (3, 6, 0.01)]  # the frame number still goes to 2.seed

    # Another workflow without node 2's inputs removes their knobs; the map follows.
    other = load_image_workflow()
    other["7"] = other.pop("2")
    other["3"]["inputs"]["images"] = ["7", 0]
    fake_nuke.user_set(node, "frame_input", "7.seed")
    fake_nuke.user_set(node, "workflow", write_json(tmp_path / "wf2.json", other))
    assert node.knob("p_2_steps") is None and node.knob("p_2_seconds") is None


def test_prompts_and_sampler_settings_are_found_without_asking(fake_nuke):
    from comfy_cluster_nuke.params import find_params

    workflow = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}, "_meta": {"title": "Positive"}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 7.5, "denoise": 0.6, "model": ["4", 0]}},
        "9": {"class_type": "KSampler", "inputs": {"seed": ["12", 0], "steps": 10}},
    }
    found = {(node_id, name): (value, label) for node_id, name, value, label in find_params(workflow)}
    assert found == {
        ("6", "text"): ("a red fox", "Positive text"),
        ("3", "seed"): (5, "KSampler seed"),
        ("3", "steps"): (20, "KSampler steps"),
        ("3", "cfg"): (7.5, "KSampler cfg"),
        ("3", "denoise"): (0.6, "KSampler denoise"),
        ("9", "steps"): (10, "KSampler steps"),  # 9.seed is a link, not a parameter
    }


def test_several_inputs_go_to_their_loadimage_nodes_the_mask_with_alpha(fake_nuke, cluster_env, tmp_path):
    import nuke

    workflow = load_image_workflow()
    workflow["11"] = {"class_type": "LoadImage", "inputs": {"image": "m.png"}, "_meta": {"title": "Mask"}}
    workflow["4"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "mask"}}
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", workflow), str(tmp_path / "out"), last=2)
    fake_nuke.user_set(node, "mask_node", "Mask (node 11)")
    fake_nuke.press(node, "execute")  # refused before starting: nothing connected to the mask
    assert "connect the mask input" in fake_nuke.messages()[-1]
    node.setInput(1, nuke.nodes.Constant())
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    channels = [d["channels"] for d in fake_nuke.render_details()]
    assert channels == ["rgb", "rgba"]  # the plate without alpha, the mask with
    for _, prompt in _prompts(cluster_env):
        assert "_in0." in prompt["10"]["inputs"]["image"] and "_in1." in prompt["11"]["inputs"]["image"]

    fake_nuke.user_set(node, "mask_node", "Plate (node 10)")
    fake_nuke.press(node, "execute")
    assert "two inputs go to the same LoadImage node" in fake_nuke.messages()[-1]


def test_the_output_switches_between_result_and_input(fake_nuke, cluster_env, tmp_path):
    import nuke

    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(tmp_path / "out"), last=1)
    switch = nuke.toNode(f"{node.name()}.show_switch")
    assert switch["which"].value() == 0  # nothing made yet: the plate passes through
    fake_nuke.press(node, "execute")
    wait_run(fake_nuke, node)
    assert node["show"].value() == "result" and switch["which"].value() == 1
    fake_nuke.user_set(node, "show", "input")
    assert switch["which"].value() == 0
