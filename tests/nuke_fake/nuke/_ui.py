"""Part of the fake ``nuke`` (see its ``__init__``): ProgressTask and menus."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Union

import nuke as _n

class ProgressTask:
    """A progress bar. Any thread may update it (Nuke allows that); it disappears when released.

    Tests read ``_fake.progress_tasks()`` and click its Cancel with ``_fake.cancel_progress``.
    """

    def __init__(self, title: str) -> None:
        self._title = title
        self._message = ""
        self._progress = 0
        self._cancelled = False
        self._messages: List[str] = []
        self._history: List[int] = []
        self._threads: set = set()
        with _n._state_lock:
            _tasks.append(weakref.ref(self))

    def _check_frozen(self) -> None:
        # A Script Editor call blocks the event loop: a bar it updates is never redrawn.
        if _n._script_editor[0] and threading.current_thread() is _n._main_thread:
            raise _n._violation("nuke: a Script Editor call blocks Nuke's main thread while it updates a ProgressTask: the GUI is frozen")

    def setMessage(self, message: str) -> None:
        if not isinstance(message, str):
            raise TypeError("ProgressTask.setMessage() argument must be str")
        self._check_frozen()
        self._threads.add(threading.current_thread().name)
        self._message = message
        self._messages.append(message)

    def setProgress(self, progress: int) -> None:
        if not isinstance(progress, int) or isinstance(progress, bool):
            raise TypeError(f"ProgressTask.setProgress() argument must be int, not {type(progress).__name__}")
        self._check_frozen()
        self._threads.add(threading.current_thread().name)
        self._progress = max(0, min(100, progress))
        self._history.append(self._progress)

    def isCancelled(self) -> bool:
        return self._cancelled


_tasks: List["weakref.ref[ProgressTask]"] = []


class Menu:
    """A menu (``nuke.menu('Nuke')``, ``nuke.menu('Nodes')``) and its sub-menus and commands."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._items: Dict[str, Union[Menu, _MenuCommand]] = {}

    def name(self) -> str:
        _n._main_only("Menu.name")
        return self._name

    def addMenu(self, name: str, icon: str = "", index: int = -1) -> Menu:
        _n._main_only("Menu.addMenu")
        head, _, rest = name.partition("/")
        item = self._items.get(head)
        if not isinstance(item, Menu):
            item = Menu(head)
            self._items[head] = item
        return item.addMenu(rest, icon) if rest else item

    def addCommand(self, name: str, command: Union[str, Callable[[], Any]] = "", shortcut: str = "", icon: str = "", tooltip: str = "", index: int = -1) -> Any:
        _n._main_only("Menu.addCommand")
        path, _, leaf = name.rpartition("/")
        menu = self.addMenu(path) if path else self
        item = _MenuCommand(leaf, command)
        menu._items[leaf] = item
        return item

    def findItem(self, name: str) -> Optional[Any]:
        _n._main_only("Menu.findItem")
        node: Any = self
        for part in name.split("/"):
            if not isinstance(node, Menu) or part not in node._items:
                return None
            node = node._items[part]
        return node

    def items(self) -> List[Any]:
        _n._main_only("Menu.items")
        return list(self._items.values())


class _MenuCommand:
    def __init__(self, name: str, command: Union[str, Callable[[], Any]]) -> None:
        self._name = name
        self._command = command

    def name(self) -> str:
        return self._name

    def invoke(self) -> None:
        _n._main_only("MenuItem.invoke")
        if callable(self._command):
            self._command()
        else:
            exec(compile(self._command, f"<menu {self._name}>", "exec"), _n._script_globals())


