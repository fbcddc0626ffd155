"""The Nuke node's pixels on real ComfyUI (opt-in, like tests/test_real_comfyui.py): a linear
plate through an identity workflow over EXR, and masks with ComfyUI's polarity.

Run with real servers that have ComfyUI-HQ-Image-Save (../shared/real-comfyui: ``setup.sh`` with
the pack, ``servers.sh start 2 8301 1``) named in ``COMFY_REAL_SERVERS``
(``127.0.0.1:8301,127.0.0.1:8302``); without it these tests are deselected (conftest.py).
"""

from __future__ import annotations

import json
import os

import pytest
from nuke_fake.support import fake_nuke, load_image_workflow, make_run_node, wait_run, write_json  # noqa: F401 - fixtures
from test_nuke_pixels import _first_value, _mask_node, _plate, mask_workflow

from comfy_cluster.testing.pixels import read_exr_first_pixel

pytestmark = [pytest.mark.real_comfyui, pytest.mark.timeout(300)]

REAL = [s.strip() for s in os.environ.get("COMFY_REAL_SERVERS", "").split(",") if s.strip()]


@pytest.fixture
def real_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("NUKE_COMFYUI_"):
            monkeypatch.delenv(key)
    assert all(hp.startswith("127.0.0.1:") for hp in REAL), "tests reach loopback only"
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", json.dumps([{"name": f"real{i}", "url": f"http://{hp}"} for i, hp in enumerate(REAL)]))


def identity_workflow() -> dict:
    """LoadImage (10) -> SaveImage (3): what the node sends is what it gets back."""
    wf = load_image_workflow()
    del wf["2"]
    wf["3"]["inputs"]["images"] = ["10", 0]
    return wf


def test_real_exr_round_trip_keeps_values_outside_0_1(fake_nuke, real_env, tmp_path):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", identity_workflow()), str(tmp_path / "out"), last=2, frame_input="")
    _plate(node, (4.0, -0.5, 0.25, 1.0))
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node, timeout=240)
    assert run.error is None, run.error
    assert fake_nuke.render_details()[0]["file_type"] == "exr"
    assert len(run.paths) == 2
    for path in run.paths:
        values, _ = read_exr_first_pixel(path)
        # Half-float files in, float32 out: 4.0, -0.5 and 0.25 are exact in half precision.
        assert values["R"] == pytest.approx(4.0, abs=2e-3)
        assert values["G"] == pytest.approx(-0.5, abs=5e-4)
        assert values["B"] == pytest.approx(0.25, abs=3e-4)


@pytest.mark.parametrize("pixels", ["png", "exr"])
@pytest.mark.parametrize("loader, channel", [("LoadImage", "alpha"), ("LoadImageMask", "alpha"), ("LoadImageMask", "red")])
def test_real_mask_reaches_the_workflow_with_comfyuis_polarity(fake_nuke, real_env, tmp_path, loader, channel, pixels):
    node = _mask_node(fake_nuke, tmp_path, mask_workflow(loader, channel), (0.0, 0.0, 0.0, 1.0))
    fake_nuke.user_set(node, "pixels", pixels)
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node, timeout=240)
    assert run.error is None, run.error
    if pixels == "png":
        assert _first_value(run.paths[0]) == 255  # 1 inside the roto, as the workflow saw it
    else:
        values, _ = read_exr_first_pixel(run.paths[0])
        assert values["R"] == pytest.approx(1.0, abs=1e-3)


def test_real_srgb_over_exr_brings_mid_grey_back_and_clips_the_rest(fake_nuke, real_env, tmp_path):
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", identity_workflow()), str(tmp_path / "out"), last=1, frame_input="")
    _plate(node, (0.18, 4.0, -0.5, 1.0))
    fake_nuke.user_set(node, "exr_tonemap", "sRGB")
    fake_nuke.press(node, "execute")
    run = wait_run(fake_nuke, node, timeout=240)
    assert run.error is None, run.error
    values, _ = read_exr_first_pixel(run.paths[0])
    assert values["R"] == pytest.approx(0.18, abs=2e-3)
    assert values["G"] == pytest.approx(1.0, abs=1e-3) and values["B"] == pytest.approx(0.0, abs=1e-6)
