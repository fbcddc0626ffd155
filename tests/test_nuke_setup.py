"""``comfy_cluster/nuke_setup.py``: installing the dependencies for Nuke's Python."""

from __future__ import annotations

import glob
import os
import shlex
import subprocess
import sys

import pytest

from comfy_cluster import nuke_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "comfy_cluster", "nuke_setup.py")


def test_dry_run_prints_the_pip_command(capsys, tmp_path):
    target = str(tmp_path / "libs")
    assert nuke_setup.main(["--python-version", "3.10", "--platform", "manylinux2014_x86_64", "--target", target, "--dry-run"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert cmd == [
        sys.executable, "-m", "pip", "install", "--upgrade", "--target", target,
        "--python-version", "3.10", "--only-binary=:all:",
        "--platform", "manylinux2014_x86_64", "--implementation", "cp",
        "requests>=2.25", "websocket-client>=1.6", "pydantic>=2.5,<3",
    ]
    assert not os.path.exists(target)  # a dry run installs nothing


def test_nuke_release_picks_its_python_and_platform_defaults_to_this_machine(capsys, tmp_path):
    assert nuke_setup.main(["--nuke", "16", "--target", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "this machine" in out
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--platform") + 1] == nuke_setup.default_platforms()[0]


def test_several_platforms(capsys, tmp_path):
    nuke_setup.main(["--nuke", "15", "--platform", "win_amd64", "--platform", "macosx_11_0_arm64", "--target", str(tmp_path), "--dry-run"])
    cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--platform"] == ["win_amd64", "macosx_11_0_arm64"]


@pytest.mark.parametrize(
    "system, machine, tag",
    [
        ("linux", "x86_64", "manylinux2014_x86_64"),
        ("linux", "aarch64", "manylinux2014_aarch64"),
        ("win32", "AMD64", "win_amd64"),
        ("darwin", "arm64", "macosx_11_0_arm64"),
        ("darwin", "x86_64", "macosx_10_12_x86_64"),
    ],
)
def test_default_platforms(system, machine, tag):
    assert nuke_setup.default_platforms(system, machine) == [tag]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nuke", "13"], "3.9 or later"),
        (["--nuke", "17"], "is not known here"),
        (["--python-version", "3.8"], "3.9 or later"),
        (["--python-version", "310"], "expected 3.X"),
    ],
)
def test_wrong_versions_are_explained(capsys, tmp_path, args, message):
    assert nuke_setup.main(args + ["--target", str(tmp_path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_runs_by_path_on_a_python_without_the_dependencies(tmp_path):
    # -S: no site-packages, so no pydantic; the file must need the standard library only.
    result = subprocess.run(
        [sys.executable, "-S", SCRIPT, "--nuke", "15", "--platform", "win_amd64", "--target", str(tmp_path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--python-version 3.10" in result.stdout and "win_amd64" in result.stdout


def test_failing_pip_is_reported(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(nuke_setup.subprocess, "call", lambda cmd: 3)
    assert nuke_setup.main(["--nuke", "15", "--platform", "win_amd64", "--target", str(tmp_path / "t")]) == 3
    assert "pip failed" in capsys.readouterr().err


def test_success_says_what_to_do_next(monkeypatch, capsys, tmp_path):
    seen = []
    monkeypatch.setattr(nuke_setup.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    assert nuke_setup.main(["--nuke", "15", "--platform", "win_amd64", "--target", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert f"COMFY_CLUSTER_LIBS={tmp_path / 't'}" in out and "NUKE_PATH" in out
    assert seen and seen[0][seen[0].index("--target") + 1] == str(tmp_path / "t")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_install_for_nuke_15_on_linux(tmp_path):
    """Really downloads wheels from PyPI: pydantic-core must be the cp310 manylinux build."""
    target = tmp_path / "libs"
    code = nuke_setup.main(["--python-version", "3.10", "--platform", "manylinux2014_x86_64", "--target", str(target)])
    assert code == 0
    cores = glob.glob(str(target / "pydantic_core" / "_pydantic_core*.so"))
    assert len(cores) == 1 and "cpython-310-x86_64-linux-gnu" in os.path.basename(cores[0])
    assert glob.glob(str(target / "pydantic_core-*.dist-info"))
    for package in ("requests", "websocket", "pydantic"):
        assert (target / package / "__init__.py").is_file()


def test_module_form_runs_without_the_dependencies(tmp_path):
    """``python -m comfy_cluster.nuke_setup`` on a Python without pydantic (the artist's)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-S", "-m", "comfy_cluster.nuke_setup", "--python-version", "3.10",
         "--platform", "manylinux2014_x86_64", "--target", str(tmp_path / "libs"), "--dry-run"],
        capture_output=True, text=True, cwd=root, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--only-binary=:all:" in out.stdout and "pydantic" in out.stdout
