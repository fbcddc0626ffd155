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
        sys.executable, "-m", "pip", "install", "--upgrade", "--target", os.path.join(target, "py310-linux-x86_64"),
        "--python-version", "3.10", "--only-binary=:all:",
        "--platform", "manylinux2014_x86_64", "--implementation", "cp",
        "requests>=2.25", "websocket-client>=1.6", "pydantic>=2.5,<3",
    ]
    assert not os.path.exists(target)  # a dry run installs nothing


def test_nuke_release_picks_its_python_and_platform_defaults_to_this_machine(capsys, tmp_path):
    assert nuke_setup.main(["--nuke", "16", "--target", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "this Python's; use --platform" in out
    cmd = shlex.split(out.strip().splitlines()[-1])
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--platform") + 1] == nuke_setup.default_platforms()[0]


def test_several_platforms_each_get_their_own_folder(capsys, tmp_path):
    """pip installs one platform per run: two platforms in one command gave one platform only."""
    code = nuke_setup.main(
        ["--nuke", "15", "--platform", "win_amd64", "--platform", "macosx_11_0_arm64",
         "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64", "--target", str(tmp_path), "--dry-run"]
    )
    assert code == 0
    cmds = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines() if " -m pip " in line]
    plan = {os.path.basename(c[c.index("--target") + 1]): [c[i + 1] for i, a in enumerate(c) if a == "--platform"] for c in cmds}
    assert plan == {
        "py310-windows-x86_64": ["win_amd64"],
        "py310-macos-arm64": ["macosx_11_0_arm64"],
        "py310-linux-x86_64": ["manylinux2014_x86_64", "manylinux_2_28_x86_64"],  # one platform, two tags
    }


def test_versions_install_side_by_side(capsys, tmp_path):
    """Installing for Nuke 16 must not replace Nuke 15's pydantic_core."""
    for nuke in ("15", "16"):
        nuke_setup.main(["--nuke", nuke, "--platform", "win_amd64", "--target", str(tmp_path), "--dry-run"])
    targets = [shlex.split(line)[shlex.split(line).index("--target") + 1] for line in capsys.readouterr().out.splitlines() if " -m pip " in line]
    assert [os.path.basename(t) for t in targets] == ["py310-windows-x86_64", "py311-windows-x86_64"]


def test_universal2_and_unknown_tags_are_refused(capsys, tmp_path):
    assert nuke_setup.main(["--nuke", "15", "--platform", "macosx_11_0_universal2", "--target", str(tmp_path), "--dry-run"]) == 2
    assert "arm64 or x86_64" in capsys.readouterr().err
    assert nuke_setup.main(["--nuke", "15", "--platform", "solaris_sparc", "--target", str(tmp_path), "--dry-run"]) == 2


def test_without_a_version_it_installs_for_the_python_running_it(capsys, tmp_path):
    """Run with Nuke's own Python (the first choice): its version and platform, by construction."""
    assert nuke_setup.main(["--target", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cmd = shlex.split(out.strip().splitlines()[-1])
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert cmd[cmd.index("--python-version") + 1] == version
    expected = nuke_setup.libs_subdir(str(tmp_path), version, nuke_setup.platform_key())
    assert cmd[cmd.index("--target") + 1] == expected


def test_gateway_adds_aiohttp(capsys, tmp_path):
    nuke_setup.main(["--nuke", "15", "--platform", "win_amd64", "--target", str(tmp_path), "--dry-run"])
    assert "aiohttp>=" not in capsys.readouterr().out
    nuke_setup.main(["--nuke", "15", "--platform", "win_amd64", "--target", str(tmp_path), "--dry-run", "--gateway"])
    assert shlex.split(capsys.readouterr().out.strip().splitlines()[-1])[-1] == "aiohttp>=3.9"


@pytest.mark.parametrize(
    "tag, key",
    [
        ("manylinux2014_x86_64", "linux-x86_64"),
        ("manylinux_2_28_aarch64", "linux-arm64"),
        ("win_amd64", "windows-x86_64"),
        ("win_arm64", "windows-arm64"),
        ("macosx_11_0_arm64", "macos-arm64"),
        ("macosx_10_12_x86_64", "macos-x86_64"),
    ],
)
def test_platform_key_of_tag_matches_the_running_python_key(tag, key):
    assert nuke_setup.platform_key_of_tag(tag) == key
    system = {"linux": "linux", "windows": "win32", "macos": "darwin"}[key.split("-")[0]]
    machine = {"x86_64": "x86_64", "arm64": "arm64"}[key.split("-")[1]]
    assert nuke_setup.platform_key(system, machine) == key


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
    assert seen and seen[0][seen[0].index("--target") + 1] == str(tmp_path / "t" / "py310-windows-x86_64")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_install_for_nuke_15_on_linux(tmp_path):
    """Really downloads wheels from PyPI: pydantic-core must be the cp310 manylinux build."""
    target = tmp_path / "libs"
    code = nuke_setup.main(["--python-version", "3.10", "--platform", "manylinux2014_x86_64", "--target", str(target)])
    assert code == 0
    target = target / "py310-linux-x86_64"
    cores = glob.glob(str(target / "pydantic_core" / "_pydantic_core*.so"))
    assert len(cores) == 1 and "cpython-310-x86_64-linux-gnu" in os.path.basename(cores[0])
    assert glob.glob(str(target / "pydantic_core-*.dist-info"))
    for package in ("requests", "websocket", "pydantic"):
        assert (target / package / "__init__.py").is_file()

    # A Python 3.10 without site-packages, as Nuke 15's: init.py picks this folder and the
    # plugin imports; Python 3.11's (Nuke 16) finds nothing there and prints what to run.
    pythons = {v: _pyenv_python(v) for v in ("3.10", "3.11")}
    probe = (
        "import sys; sys.path[:0] = [{fake!r}, {plugin!r}]; "
        "exec(compile(open({init!r}).read(), 'init.py', 'exec'), {{'__name__': '__main__'}}); "
        "import comfy_cluster_nuke.run, pydantic; print(pydantic.__file__)"
    ).format(fake=os.path.join(ROOT, "tests", "nuke_fake"), plugin=os.path.join(ROOT, "nuke_plugin"), init=os.path.join(ROOT, "nuke_plugin", "init.py"))
    env = dict(os.environ, COMFY_CLUSTER_LIBS=str(tmp_path / "libs"))
    nuke15 = subprocess.run([pythons["3.10"], "-S", "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert nuke15.returncode == 0 and nuke15.stderr == "", nuke15.stderr
    assert nuke15.stdout.strip().startswith(str(target))
    nuke16 = subprocess.run([pythons["3.11"], "-S", "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert nuke16.returncode != 0
    assert "Python 3.11, linux-x86_64" in nuke16.stderr and "--python-version 3.11" in nuke16.stderr


def _pyenv_python(version: str) -> str:
    """An interpreter of that version (as .ci/run finds them), or the test fails saying so."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python")))
    assert found, f"Python {version} is needed for this test (as for .ci/run): not found under {root}/versions"
    return found[-1]


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


def test_a_python_without_pip_is_told_what_to_do(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(nuke_setup, "_has_pip", lambda: False)
    called = []
    monkeypatch.setattr(nuke_setup.subprocess, "call", lambda cmd: called.append(cmd) or 0)
    assert nuke_setup.main(["--target", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no pip" in err and "-m ensurepip --user" in err
    assert called == []
