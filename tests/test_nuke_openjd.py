"""The Open Job Description template (``examples/openjd``) run by ``openjd-cli`` on this machine:
the farm script in chunks, each chunk a ``nuke -t`` process (the fake ``nuke``, with Nuke's
start-up and argument handling: ``tests/nuke_fake/nuke_t.py``) against the mock cluster."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from nuke_fake.support import ROOT, cluster_env, fake_nuke, load_image_workflow, make_run_node, write_json  # noqa: F401

pytestmark = pytest.mark.timeout(180)

TEMPLATE = os.path.join(ROOT, "examples", "openjd", "comfy_cluster_nuke.template.yaml")
EXAMPLE = os.path.join(ROOT, "examples", "nuke_farm_render.py")
NUKE_T = os.path.join(ROOT, "tests", "nuke_fake", "nuke_t.py")


def _openjd(*args: str, env: dict) -> subprocess.CompletedProcess:
    # openjd-cli is in the test extras; its module is what the ``openjd`` command runs.
    code = "import sys; from openjd.cli import main; sys.argv[0] = 'openjd'; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=150)


def test_the_openjd_template_renders_a_range_in_chunks_into_one_version(fake_nuke, cluster_env, tmp_path):
    import nuke

    script = str(tmp_path / "sh010.nk")
    fake_nuke.save_script(script)
    out = tmp_path / "out"
    node = make_run_node(fake_nuke, write_json(tmp_path / "wf.json", load_image_workflow()), str(out), first=1, last=100)
    name = node.name()
    nuke.scriptSave(script)
    # The workers' "nuke": an executable that starts Nuke's stand-in (as a farm's Nuke path would).
    executable = tmp_path / "bin" / "nuke"
    executable.parent.mkdir()
    executable.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{NUKE_T}" "$@"\n')
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, NUKE_PATH=os.path.join(ROOT, "nuke_plugin"), PYTHONPATH=ROOT)
    params = [
        f"NukeScript={script}", f"NodeName={name}", "Frames=11-15", "ChunkSize=2", "Version=v007",
        f"FarmScript={EXAMPLE}", f"NukeExecutable={executable}",
    ]
    summary = _openjd("summary", TEMPLATE, *[a for p in params for a in ("-p", p)], env=env)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    result = _openjd("run", TEMPLATE, *[a for p in params for a in ("-p", p)], env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    # Three chunks (11-12, 13-14, 15), each one nuke -t task with --frames=FIRST-LAST.
    assert log.count("nuke_farm_render: 2 frame(s) done") == 2 and log.count("nuke_farm_render: 1 frame(s) done") == 1, log
    assert sorted(os.listdir(out)) == ["v007"]
    assert sorted(os.listdir(out / "v007")) == [f"{name}_{f:04d}.png" for f in range(11, 16)]
    seeds = sorted(p["2"]["inputs"]["seed"] for s in cluster_env for _, p, _ in s.received_prompts)
    assert seeds == list(range(11, 16))
