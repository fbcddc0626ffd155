"""Run by Nuke at start-up (GUI, ``nuke -t`` and render farm alike): put comfy-cluster and its
dependencies on ``sys.path``.

* The folder holding ``comfy_cluster`` (the parent of this ``nuke_plugin`` folder) goes first
  on ``sys.path``, so the plugin always uses the library it was shipped with.
* The dependencies folder, ``COMFY_CLUSTER_LIBS`` or ``~/.nuke/comfy_cluster_libs``, is put
  first too when it exists: fill it for Nuke's Python with
  ``python comfy_cluster/nuke_setup.py --nuke 15`` (see README, section Nuke).

Nothing is imported here (start-up stays fast); a missing dependency is reported on the
terminal with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import List, Mapping, Optional

LIBS_ENV = "COMFY_CLUSTER_LIBS"
DEFAULT_LIBS = os.path.join("~", ".nuke", "comfy_cluster_libs")
DEPENDENCIES = ("requests", "websocket", "pydantic")


def plugin_dir() -> str:
    """This folder (``nuke_plugin``)."""
    try:
        return os.path.dirname(os.path.abspath(__file__))
    except NameError:  # run without __file__ (exec by an old Nuke): find us on the path
        for entry in sys.path:
            if os.path.isfile(os.path.join(entry, "run.py")) and os.path.basename(os.path.normpath(entry)) == "nuke_plugin":
                return os.path.abspath(entry)
        raise


def libs_dir(environ: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if environ is None else environ
    return os.path.abspath(os.path.expanduser(os.path.expandvars(env.get(LIBS_ENV) or DEFAULT_LIBS)))


def setup_paths(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Add the library and the dependencies folder to ``sys.path``; returns what was added."""
    added: List[str] = []
    repo = os.path.dirname(plugin_dir())
    libs = libs_dir(environ)
    # Inserted in reverse: the dependencies folder ends up first, then the library.
    for path in (repo, libs):
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)
            added.append(path)
    importlib.invalidate_caches()
    missing = [name for name in DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"comfy-cluster: missing {', '.join(missing)} in Nuke's Python {sys.version_info[0]}.{sys.version_info[1]}. "
            f"Install them with: python {os.path.join(repo, 'comfy_cluster', 'nuke_setup.py')} "
            f"--python-version {sys.version_info[0]}.{sys.version_info[1]} --target {libs}\n"
        )
    return added


setup_paths()
