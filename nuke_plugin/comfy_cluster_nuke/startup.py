"""Start-up of the plugin: ``sys.path`` and the dependency check (``init.py``), menus (``menu.py``).

Nuke runs ``init.py`` and ``menu.py`` with ``exec`` in one namespace shared by every plugin of
the studio, so those files only call :func:`init` and :func:`menus` and leave no name behind.

* The library (the folder holding ``comfy_cluster``, the parent of ``nuke_plugin``) goes first
  on ``sys.path``, so the plugin always uses the library it was shipped with.
* The dependencies come from ``COMFY_CLUSTER_LIBS`` (default ``~/.nuke/comfy_cluster_libs``),
  from the subfolder for the running Nuke's Python version and platform
  (``py310-linux-x86_64``...). It is *appended* to ``sys.path``: a studio's own ``urllib3``
  or ``certifi`` keep winning. ``typing_extensions`` is the exception: pydantic needs a recent
  one and pipeline folders often hold an old one, so ours is loaded (it stays backward
  compatible); if another plugin imported an old one before, the message says so.
* The check really imports ``pydantic_core`` (a wheel built for another Python or machine is
  found but does not load; the pure-Python dependencies are only looked up) and, when something is missing, prints the exact command that
  installs it for this Nuke: its own Python, quoted, and its platform.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from typing import Any, List, Mapping, Optional, Tuple

__all__ = ["LIBS_ENV", "GATEWAY_ENV", "DEPENDENCIES", "plugin_dir", "libs_root", "init", "menus", "check_dependencies", "install_hint"]

LIBS_ENV = "COMFY_CLUSTER_LIBS"
GATEWAY_ENV = "NUKE_COMFYUI_GATEWAY"
DEFAULT_LIBS = os.path.join("~", ".nuke", "comfy_cluster_libs")
DEPENDENCIES = ("requests", "websocket", "pydantic", "pydantic_core")
# Compiled ones are imported by the check (a wheel for another Python or machine is found but
# does not load); the pure-Python ones are only looked up, which keeps Nuke's start-up fast.
COMPILED = ("pydantic_core",)


def plugin_dir() -> str:
    """The ``nuke_plugin`` folder."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def libs_root(environ: Optional[Mapping[str, str]] = None) -> str:
    """``COMFY_CLUSTER_LIBS`` or ``~/.nuke/comfy_cluster_libs``: the folder of the per-version folders."""
    env = os.environ if environ is None else environ
    # cmd.exe keeps the quotes of set COMFY_CLUSTER_LIBS="C:\studio\libs": one pair is removed.
    value = _setup_module().unquote(env.get(LIBS_ENV, ""))
    return os.path.abspath(os.path.expanduser(os.path.expandvars(value or DEFAULT_LIBS)))


def _setup_module() -> Any:
    # The installer is standard-library only; importing it needs no dependency.
    from comfy_cluster import nuke_setup

    return nuke_setup


def setup_paths(
    environ: Optional[Mapping[str, str]] = None, *, system: Optional[str] = None, machine: Optional[str] = None
) -> Tuple[List[str], str]:
    """Put the library first and this Nuke's dependency folder last on ``sys.path``.

    Returns (the paths added, the dependency folder for this Nuke).
    """
    added: List[str] = []
    repo = os.path.dirname(plugin_dir())
    if repo in sys.path:
        sys.path.remove(repo)
    sys.path.insert(0, repo)
    added.append(repo)
    setup = _setup_module()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    libs = setup.libs_subdir(libs_root(environ), version, setup.platform_key(system, machine))
    if os.path.isdir(libs) and libs not in sys.path:
        sys.path.append(libs)
        added.append(libs)
    importlib.invalidate_caches()
    _prefer_ours(libs)
    return added, libs


# Loaded from the dependency folder even when an older copy comes first on sys.path: pydantic
# needs a recent typing_extensions (pydantic_core imports names such as Sentinel), and studio
# pipeline folders often carry an old one. It is backward compatible by its own policy, so the
# studio's tools keep working with ours.
PREFERRED = ("typing_extensions",)


def _prefer_ours(libs: str) -> None:
    for name in PREFERRED:
        ours = os.path.join(libs, name + ".py")
        if name in sys.modules or not os.path.isfile(ours):
            continue  # already imported (by another plugin): see foreign_module()
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and os.path.dirname(os.path.abspath(spec.origin)) == libs:
            continue
        mine = importlib.util.spec_from_file_location(name, ours)
        if mine is None or mine.loader is None:
            continue
        module = importlib.util.module_from_spec(mine)
        sys.modules[name] = module
        try:
            mine.loader.exec_module(module)
        except Exception:
            del sys.modules[name]


def foreign_module(libs: str) -> Optional[str]:
    """A preferred module (typing_extensions) that was imported from elsewhere before
    ``init.py`` ran (another plugin's), whose file; None when ours or none."""
    for name in PREFERRED:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None) if module is not None else None
        if origin and os.path.isfile(os.path.join(libs, name + ".py")) and os.path.dirname(os.path.abspath(origin)) != libs:
            return str(origin)
    return None


def check_dependencies(names: Optional[Tuple[str, ...]] = None) -> List[Tuple[str, str]]:
    """(name, why) for each dependency that does not import."""
    missing: List[Tuple[str, str]] = []
    for name in DEPENDENCIES if names is None else names:
        try:
            if name in COMPILED:
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                missing.append((name, "not found"))
        except Exception as exc:  # ImportError, or a broken wheel's own error
            missing.append((name, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return missing


def nuke_python(executable: Optional[str] = None, system: Optional[str] = None) -> Optional[str]:
    """Nuke's own Python interpreter, next to the Nuke executable (None when not found).

    Inside Nuke ``sys.executable`` is Nuke itself; its Python is ``python3`` beside it on Linux
    and macOS (``Nuke15.1v3.app/Contents/MacOS/python3``) and ``python.exe`` on Windows.
    """
    exe = executable if executable is not None else sys.executable
    if not exe:
        return None
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    windows = (system or sys.platform).startswith("win")
    candidate = os.path.join(os.path.dirname(exe), "python.exe" if windows else "python3")
    return candidate if os.path.isfile(candidate) else None


def _quote(args: List[str], windows: bool) -> str:
    if windows:
        return subprocess.list2cmdline(args)
    import shlex

    return " ".join(shlex.quote(a) for a in args)


def install_hint(
    libs: str,
    *,
    executable: Optional[str] = None,
    system: Optional[str] = None,
    machine: Optional[str] = None,
    version: Optional[str] = None,
) -> str:
    """The exact commands that install the dependencies for the running Nuke into ``libs``."""
    setup = _setup_module()
    system = system or sys.platform
    windows = system.startswith("win")
    version = version or f"{sys.version_info[0]}.{sys.version_info[1]}"
    script = os.path.join(os.path.dirname(plugin_dir()), "comfy_cluster", "nuke_setup.py")
    root = os.path.dirname(libs)
    key = setup.platform_key(system, machine)
    target = [] if root == libs_root({}) else ["--target", root]
    lines = [f"Install them for this Nuke (Python {version}, {key}) with Nuke's own Python:"]
    own = nuke_python(executable, system)
    if own:
        lines.append("  " + _quote([own, script] + target, windows))
    else:
        lines.append("  (Nuke's python3/python.exe, next to the Nuke executable) " + _quote([script] + target, windows))
    tags: List[str] = []
    for tag in setup.default_platforms(system, machine):
        tags += ["--platform", tag]
    other = ["py", f"-{version}"] if windows else ["python3"]
    lines.append("or with any Python 3:")
    lines.append("  " + _quote(other + [script, "--python-version", version] + tags + target, windows))
    return "\n".join(lines)


def init(environ: Optional[Mapping[str, str]] = None) -> bool:
    """``init.py``: paths, then the dependency check. False (and a terminal message) when missing."""
    _, libs = setup_paths(environ)
    missing = check_dependencies()
    if not missing:
        import nuke

        if not nuke.GUI:  # nuke -t and the farm: menu.py does not run, cancel at exit from here
            from . import lifecycle

            lifecycle.install()
        return True
    names = ", ".join(f"{name} ({why})" for name, why in missing)
    foreign = foreign_module(libs)
    if foreign is not None:  # installing again would change nothing: say what would
        sys.stderr.write(
            f"comfy-cluster: the ComfyUI Cluster node cannot work: {names}. An older {foreign} was imported "
            f"before comfy-cluster's init.py (by a plugin earlier on NUKE_PATH); put comfy-cluster's "
            f"nuke_plugin folder before that plugin on NUKE_PATH, or upgrade that copy.\n"
        )
        return False
    sys.stderr.write(
        f"comfy-cluster: the ComfyUI Cluster node cannot work: {names} missing or not loading (looked in {libs} for this Nuke).\n"
        f"{install_hint(libs)}\n"
    )
    return False


def menus() -> None:
    """``menu.py``: the menus, and the gateway when ``NUKE_COMFYUI_GATEWAY`` asks for it."""
    from . import menu

    menu.add_menus()
    from . import lifecycle

    lifecycle.install()  # imports nothing of the library: start-up stays fast
    if os.environ.get(GATEWAY_ENV, "").strip():
        try:
            from . import gateway
        except ImportError as exc:  # the dependencies are missing: init.py said what to run
            sys.stderr.write(f"comfy-cluster: the gateway cannot start ({exc})\n")
            return
        gateway.start_from_env()
