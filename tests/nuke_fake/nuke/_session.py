"""Part of the fake ``nuke`` (see its ``__init__``): the session around the node graph: the
frame, views, whether a render goes on, the script's name and folder, dialogs, menus, plugin
paths. Module state is reached through ``nuke._x`` at call time."""

from __future__ import annotations

import os
import sys
from typing import Any, List, Optional

import nuke as _n


def executing(f: Optional[float] = None) -> bool:
    """Whether a render (an Executable node: a Write through ``execute``, or the artist's F7)
    is going on (Foundry, Python API reference, ``nuke.executing``: "Returns whether an
    Executable Node is currently active or not")."""
    _n._main_only("executing")
    return bool(_n._executing[0])


def views() -> List[str]:
    _n._main_only("views")
    return list(_n._views)


def frame(f: Optional[int] = None) -> int:
    _n._main_only("frame")
    if f is not None:
        _n._frame[0] = int(f)
    return _n._frame[0]


def lastHitGroup() -> _n.Group:
    """The group whose node graph the user clicked last (the context group if none)."""
    _n._main_only("lastHitGroup")
    group = _n._last_hit[0]
    return group if group is not None and not group._deleted else _n._context[-1]


def scriptName() -> str:
    _n._main_only("scriptName")
    name = str(_n._root._knobs["name"]._value)
    if not name:
        raise RuntimeError("no script name (the script was never saved)")
    return name


def script_directory() -> str:
    """The saved script's folder ('' for an unsaved script), as ``nuke.script_directory()``
    (nuke/utils.py of Nuke's Python package) gives it."""
    _n._main_only("script_directory")
    name = str(_n._root._knobs["name"]._value)
    return os.path.dirname(name) if name else ""


def modified() -> bool:
    _n._main_only("modified")
    return _n._modified[0]


def message(prompt: str) -> None:
    """A dialog (recorded); without a GUI Nuke prints it to the terminal."""
    _n._main_only("message")
    if not isinstance(prompt, str):
        raise TypeError("message() argument must be str")
    _n._messages.append(prompt)
    if not _n.GUI:
        print(prompt)


def alert(prompt: str) -> None:
    message(prompt)


def tprint(*args: Any, sep: str = " ", end: str = "\n", file: Any = None) -> None:
    print(*args, sep=sep, end=end, file=file or sys.stdout)


def warning(message: str) -> None:
    sys.stderr.write(f"Warning: {message}\n")


def menu(name: str) -> Optional[_n.Menu]:
    """A menu; a Hiero session (``env["hiero"]``) has no node graph, hence no "Nodes" toolbar."""
    _n._main_only("menu")
    if name == "Nodes" and _n.env.get("hiero"):
        return None
    if name not in _n._menus:
        _n._menus[name] = _n.Menu(name)
    return _n._menus[name]


def pluginAddPath(args: str, addToSysPath: bool = True) -> None:
    _n._main_only("pluginAddPath")
    if args not in _n._plugin_paths:
        _n._plugin_paths.insert(0, args)
    if addToSysPath and args not in sys.path:
        sys.path.insert(0, args)


def pluginPath() -> List[str]:
    return list(_n._plugin_paths)
