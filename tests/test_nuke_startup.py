"""Nuke start-up: init.py and menu.py as Nuke runs them, the dependency folders, the hint.

Nuke runs every plugin's init.py/menu.py with ``exec`` in one shared namespace, with each
NUKE_PATH folder on ``sys.path``. These tests do the same.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

import pytest
from nuke_fake.support import PLUGIN_DIR, ROOT, fake_nuke  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def saved_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def _exec_like_nuke(filename: str, namespace: dict) -> None:
    path = os.path.join(PLUGIN_DIR, filename)
    with open(path, encoding="utf-8") as fh:
        exec(compile(fh.read(), path, "exec"), namespace)


def _startup():
    import comfy_cluster_nuke.startup as startup

    return startup


def test_init_and_menu_leave_no_name_in_nukes_shared_namespace(fake_nuke, saved_sys_path, monkeypatch, tmp_path):
    import atexit

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)  # not this test process's exit
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(tmp_path))
    import nuke

    namespace = {"__name__": "__main__", "nuke": nuke, "studio_name": 1}
    _exec_like_nuke("init.py", namespace)
    _exec_like_nuke("menu.py", namespace)
    assert set(namespace) == {"__name__", "nuke", "studio_name", "__builtins__"}
    assert nuke.menu("Nuke").findItem("ComfyUI Cluster/Servers...") is not None
    # Start-up imports none of the node's machinery (it comes with the first use).
    assert not {"comfy_cluster_nuke.run", "comfy_cluster_nuke.node", "comfy_cluster_nuke.gateway"} & set(sys.modules)


def test_the_plugin_folder_adds_one_top_level_name(fake_nuke):
    """A studio's ``import run`` (or node, panel, mainthread) must not get ours."""
    names = {os.path.splitext(n)[0] for n in os.listdir(PLUGIN_DIR) if not n.startswith((".", "__"))}
    assert names == {"init", "menu", "comfy_cluster_nuke"}  # init/menu: what Nuke itself runs
    for name in ("run", "node", "panel", "mainthread", "settings", "render"):
        spec = importlib.util.find_spec(name)
        assert spec is None or not str(spec.origin).startswith(PLUGIN_DIR), name


def _key():
    from comfy_cluster import nuke_setup

    return nuke_setup.platform_key()


def test_init_picks_the_folder_of_this_python_and_platform_and_appends_it(fake_nuke, saved_sys_path, monkeypatch, tmp_path):
    version = f"{sys.version_info[0]}{sys.version_info[1]}"
    ours = tmp_path / f"py{version}-{_key()}"
    other = tmp_path / f"py30-{_key()}"  # another Python version (3.0: never this one)
    for folder in (ours, other):
        folder.mkdir()
        (folder / "cc_probe_shadow.py").write_text("WHO = 'libs'\n")
    studio = tmp_path / "studio"
    studio.mkdir()
    (studio / "cc_probe_shadow.py").write_text("WHO = 'studio'\n")  # the studio's own urllib3, say
    sys.path.insert(0, str(studio))
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(tmp_path))
    added, libs = _startup().setup_paths()
    assert libs == str(ours)
    assert sys.path[-1] == str(ours) and str(other) not in sys.path
    assert sys.path[0] == ROOT  # the library the plugin was shipped with comes first
    spec = importlib.util.find_spec("cc_probe_shadow")
    assert spec is not None and spec.origin == str(studio / "cc_probe_shadow.py")


def test_a_wheel_that_is_found_but_does_not_load_is_reported(fake_nuke, saved_sys_path, monkeypatch, tmp_path, capsys):
    """A pydantic_core built for another Python is found by find_spec, and fails on import."""
    broken = tmp_path / "cc_broken_core"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('cannot import _pydantic_core: wrong ABI')\n")
    sys.path.append(str(tmp_path))
    startup = _startup()
    assert importlib.util.find_spec("cc_broken_core") is not None
    monkeypatch.setattr(startup, "DEPENDENCIES", ("requests", "cc_broken_core"))
    monkeypatch.setattr(startup, "COMPILED", ("cc_broken_core",))
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(tmp_path / "libs"))
    assert startup.init() is False
    err = capsys.readouterr().err
    assert "cc_broken_core (ImportError: cannot import _pydantic_core: wrong ABI)" in err
    assert "nuke_setup.py" in err
    monkeypatch.setattr(startup, "DEPENDENCIES", ("requests", "surely_not_installed_pkg"))
    assert startup.init() is False
    assert "surely_not_installed_pkg (not found)" in capsys.readouterr().err
    monkeypatch.setattr(startup, "DEPENDENCIES", ("requests",))
    assert startup.init() is True
    assert capsys.readouterr().err == ""


def test_the_hint_names_nukes_own_python_quoted_and_nukes_platform(fake_nuke, tmp_path):
    startup = _startup()
    install = tmp_path / "Nuke 15.1v3"  # a space, as in C:\Program Files
    install.mkdir()
    (install / "python3").write_text("")
    libs = str(tmp_path / "libs" / "py310-macos-x86_64")
    # An x86_64 Nuke under Rosetta on an arm64 Mac: Nuke's own platform, not the installer's.
    hint = startup.install_hint(libs, executable=str(install / "Nuke15.1"), system="darwin", machine="x86_64", version="3.10")
    lines = hint.splitlines()
    assert "Python 3.10, macos-x86_64" in lines[0]
    own = shlex.split(lines[1])
    assert own[0] == str(install / "python3") and own[1].endswith(os.path.join("comfy_cluster", "nuke_setup.py"))
    assert own[2:] == ["--target", str(tmp_path / "libs")]
    other = shlex.split(lines[3])
    assert other[0] == "python3"  # stock macOS has no `python`
    assert other[other.index("--platform") + 1] == "macosx_10_12_x86_64"
    assert other[other.index("--python-version") + 1] == "3.10"


def test_the_hint_on_windows_uses_double_quotes_and_python_exe(fake_nuke, tmp_path):
    startup = _startup()
    install = tmp_path / "Program Files" / "Nuke16.0v2"
    install.mkdir(parents=True)
    (install / "python.exe").write_text("")
    libs = os.path.join(startup.libs_root({}), "py311-windows-x86_64")
    hint = startup.install_hint(libs, executable=str(install / "Nuke16.0.exe"), system="win32", machine="AMD64", version="3.11")
    lines = hint.splitlines()
    assert lines[1].strip().startswith(f'"{install / "python.exe"}" ')
    assert "--target" not in lines[1]  # the default folder needs no option
    assert lines[3].strip().startswith("py -3.11 ") and "--platform win_amd64" in lines[3]


def test_the_default_libs_folder(fake_nuke):
    assert _startup().libs_root({}) == os.path.abspath(os.path.expanduser("~/.nuke/comfy_cluster_libs"))


def test_menu_in_a_hiero_session_has_no_node_entries(fake_nuke, monkeypatch):
    import atexit

    import nuke

    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: fn)
    fake_nuke.set_hiero(True)
    _exec_like_nuke("menu.py", {"__name__": "__main__", "nuke": nuke})
    assert nuke.menu("Nodes") is None
    assert nuke.menu("Nuke").findItem("ComfyUI Cluster/Servers...") is not None
    assert nuke.menu("Nuke").findItem("ComfyUI Cluster/ComfyUI Cluster Run") is None


def test_under_nuke_t_init_arranges_the_cancel_at_exit(fake_nuke, saved_sys_path, monkeypatch, tmp_path):
    """menu.py does not run under nuke -t (the farm): init.py registers the clean-up itself."""
    import atexit

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn) or fn)
    monkeypatch.setenv("COMFY_CLUSTER_LIBS", str(tmp_path))
    fake_nuke.set_gui(False)
    assert _startup().init() is True
    from comfy_cluster_nuke import lifecycle

    assert lifecycle.at_exit in registered


def test_an_older_typing_extensions_earlier_on_sys_path_does_not_break_pydantic(fake_nuke, tmp_path):
    """Issue 19 item 15: an old typing_extensions earlier on sys.path (a studio pipeline folder)
    broke pydantic_core, and init.py advised installing again, which changed nothing. In a
    process of its own (``nuke -t`` with the fake): nothing of it may linger in this one."""
    import shutil
    import subprocess
    import typing_extensions

    from comfy_cluster import nuke_setup

    old = tmp_path / "pipeline"
    old.mkdir()
    (old / "typing_extensions.py").write_text("Protocol = object  # a typing_extensions of long ago\n")
    libs = tmp_path / "libs"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    folder = nuke_setup.libs_subdir(str(libs), version, nuke_setup.platform_key())
    os.makedirs(folder)
    shutil.copyfile(typing_extensions.__file__, os.path.join(folder, "typing_extensions.py"))
    probe = tmp_path / "probe.py"
    probe.write_text("import pydantic_core, typing_extensions\nprint('loaded', typing_extensions.__file__)\n")
    env = dict(os.environ, NUKE_PATH=PLUGIN_DIR, COMFY_CLUSTER_LIBS=str(libs), PYTHONPATH=os.pathsep.join([str(old), ROOT]))
    nuke_t = os.path.join(ROOT, "tests", "nuke_fake", "nuke_t.py")
    done = subprocess.run([sys.executable, nuke_t, "-t", str(probe)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stdout + done.stderr  # init.py prints nothing
    assert f"loaded {os.path.join(folder, 'typing_extensions.py')}" in done.stdout

    # Another plugin, earlier on NUKE_PATH, imported the old one before our init.py: ours can no
    # longer replace it, and installing again would change nothing: the message says what would.
    other = tmp_path / "other_plugin"
    other.mkdir()
    (other / "init.py").write_text("import typing_extensions\n")
    env["NUKE_PATH"] = os.pathsep.join([str(other), PLUGIN_DIR])
    done = subprocess.run([sys.executable, nuke_t, "-t", str(probe)], capture_output=True, text=True, env=env, timeout=120)
    assert f"An older {old / 'typing_extensions.py'} was imported before comfy-cluster's init.py" in done.stderr, done.stderr
    assert "put comfy-cluster's nuke_plugin folder before that plugin on NUKE_PATH" in done.stderr
    assert "Install them" not in done.stderr
