"""What a compositor judges the node by: its pixels (issue 19 items 5-8).

Seeds and other 64-bit INT inputs held exactly; masks with ComfyUI's polarity; every view
rendered and run; linear EXR end to end. Driven through the strict fake ``nuke`` against mock
servers (the EXR and mask round trips also against real ComfyUI: tests/test_real_comfyui.py).
"""

from __future__ import annotations

import pytest
from comfy_cluster.testing.workflows import txt2img_workflow
from nuke_fake.support import (  # noqa: F401 - fixtures
    cluster_env,
    fake_nuke,
    make_run_node,
    wait_run,
    write_json,
)

pytestmark = pytest.mark.timeout(60)


# --- seeds and other 64-bit INT inputs ---------------------------------------------------------


def test_seeds_above_32_bits_are_held_and_sent_exactly(fake_nuke, cluster_env, tmp_path):
    import nuke

    big = 156680208700286  # as exported workflows hold them; Nuke's Int_Knob stops at 2**31-1
    wf = txt2img_workflow(seed=big, steps=2)
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", wf), str(tmp_path / "out"), last=1,
                         frame_input="", with_input=False)
    seed = node["p_3_seed"]
    assert not isinstance(seed, nuke.Array_Knob) and seed.value() == str(big)
    assert isinstance(node["p_3_steps"], nuke.Int_Knob)  # small INTs stay integer knobs
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    sent = [p["3"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts]
    assert sent == [big] and isinstance(sent[0], int)

    top = 2**64 - 1  # ComfyUI's KSampler seed maximum
    fake_nuke.user_set(node, "p_3_seed", str(top))
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node)
    assert run.error is None, run.error
    sent = sorted(p["3"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts)
    assert sent == [big, top]


def test_a_seed_that_is_not_a_whole_number_is_refused_before_any_job(fake_nuke, cluster_env, tmp_path):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", txt2img_workflow(seed=5)), str(tmp_path / "out"), last=1,
                         frame_input="", with_input=False)
    fake_nuke.user_set(node, "p_3_seed", "12x")
    fake_nuke.press(node, "execute")
    assert fake_nuke.messages() and "KSampler seed: '12x' is not a whole number" in fake_nuke.messages()[-1]
    assert [p for s in cluster_env for p in s.received_prompts] == []


def test_the_fake_int_knob_is_32_bit_like_nukes(fake_nuke):
    import nuke

    knob = nuke.Int_Knob("n")
    knob.setValue(2**31 - 1)
    with pytest.raises(OverflowError):
        knob.setValue(2**31)
    with pytest.raises(OverflowError):
        knob.setValueAt(-(2**31) - 1, 1)
    assert knob.value() == 2**31 - 1
