"""A strict fake of Foundry Nuke's ``nuke`` module, for the tests of ``nuke_plugin`` only.

It implements just the calls the plugin makes, and is strict where real Nuke is strict or
where a mistake would only show up inside Nuke:

* Every public name here exists in Nuke's API (``tests/test_nuke_types.py`` checks them
  against the ``types-nuke`` stubs); any other attribute raises ``AttributeError``.
* Node, knob, dialog and render calls are main-thread only. A call from another thread raises
  :class:`_ThreadViolation` *and* is recorded, so a test fails even if the plugin swallows the
  exception (the fixture asserts that :func:`nuke._fake.violations` is empty).
* ``executeInMainThread`` queues the call; the test's main thread runs the queue with
  :func:`nuke._fake.pump_until` (this is what Nuke's event loop does).
  ``executeInMainThreadWithResult`` blocks the worker until the main thread ran the call,
  returns ``None`` (and prints the traceback) when the call raised, and is a violation when
  called from the main thread (real Nuke hangs) or without a GUI (``nuke -t`` may never run
  the queue).
* ``execute`` inside a knob callback fails with "already executing", like Nuke. Otherwise it
  renders a Write node by writing small real PNG files to its ``file`` pattern.
* Knob values behave like Nuke's: ``Int_Knob`` coerces numbers and refuses text,
  ``Enumeration_Knob.value()`` is the item text and ``setValue`` takes an item or an index,
  string knobs refuse non-strings, ``node['missing']`` raises ``NameError``, and a deleted
  node's Python object raises ``ValueError``.

Test-side controls (pumping the main loop, simulating clicks on Cancel, reading recorded
dialogs) live in :mod:`nuke._fake`; everything private here starts with an underscore.

Parts, one concern each, all re-exported here: :mod:`._knobs` (numbers, pulldowns),
:mod:`._text_knobs` (text, files, buttons), :mod:`._ocio` (colorspace knobs from an OCIO
config), :mod:`._nodes` (nodes, the classes' knobs, undo, the modified flag), :mod:`._ui`
(ProgressTask, menus), :mod:`._callbacks` (global callbacks, Tcl), :mod:`._render`
(``execute``, Read errors and hold), :mod:`._session` (frame, views, dialogs, menus, plugin
paths), :mod:`._script` (saving, opening, copy and paste). ``nuke -t`` in a process of its
own: ``tests/nuke_fake/nuke_t.py``. They reach shared state through ``nuke._x`` at call time.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import threading
import traceback
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

# --- module constants that exist in Nuke ------------------------------------------------------

GUI: bool = True
NUKE_VERSION_MAJOR: int = 15
NUKE_VERSION_MINOR: int = 1
NUKE_VERSION_STRING: str = "15.1v3"
env: Dict[str, Any] = {"gui": True, "NukeVersionMajor": 15, "NukeVersionMinor": 1, "NukeVersionString": "15.1v3"}
# Every command-line argument Nuke got, before it stripped a trailing frame range from the
# script's sys.argv (Foundry, "Using the Command-line": "To access all the command-line
# arguments passed to nuke you can use: nuke.rawArgs"). Set by _fake.run_nuke_t.
rawArgs: List[str] = []

# Knob flags (values as in Nuke's headers; only their identity matters here).
INVISIBLE: int = 0x0000000000000400
STARTLINE: int = 0x0000000000001000
ENDLINE: int = 0x0000000000002000
NO_ANIMATION: int = 0x0000000000000100
READ_ONLY: int = 0x0000000010000000
DISABLED: int = 0x0000000000000080
STRIP_CASCADE_PREFIX: int = 0x0000000000000001  # a pulldown whose value has no menu path


# --- thread discipline ------------------------------------------------------------------------


class _ThreadViolation(AssertionError):
    """A Nuke call that real Nuke would forbid here (wrong thread, or a queue that never runs)."""


_main_thread = threading.main_thread()
_violations: List[str] = []
_errors: List[str] = []  # tracebacks of main-thread calls that raised (Nuke prints them)
_state_lock = threading.Lock()


def _violation(text: str) -> _ThreadViolation:
    with _state_lock:
        _violations.append(text)
    return _ThreadViolation(text)


def _main_only(what: str) -> None:
    """Raise (and record) when ``what`` is called from a thread other than the main thread."""
    current = threading.current_thread()
    if current is not _main_thread:
        raise _violation(f"nuke: {what} called from thread {current.name!r}; Nuke allows it only on the main thread")


# --- the main-thread queue (Nuke's event loop) ------------------------------------------------


class _QueuedCall:
    __slots__ = ("call", "args", "kwargs", "done", "result", "raised", "wants_result")

    def __init__(self, call: Callable[..., Any], args: Tuple[Any, ...], kwargs: Mapping[str, Any], wants_result: bool) -> None:
        self.call = call
        self.args = args
        self.kwargs = dict(kwargs)
        self.done = threading.Event()
        self.result: Any = None
        self.raised = False
        self.wants_result = wants_result


_queue: Deque[_QueuedCall] = collections.deque()
_queue_cond = threading.Condition()
_shutdown = threading.Event()  # set by the test teardown: release workers blocked on the queue


def _as_args(args: Any) -> Tuple[Any, ...]:
    # Nuke wraps a non-tuple ``args`` into a 1-tuple.
    return args if isinstance(args, tuple) else (args,)


def executeInMainThread(call: Callable[..., Any], args: Any = (), kwargs: Optional[Mapping[str, Any]] = None) -> None:
    """Queue ``call`` for the main thread and return at once (any thread)."""
    if not GUI:
        raise _violation("nuke: executeInMainThread without a GUI: under nuke -t the queue may never run")
    item = _QueuedCall(call, _as_args(args), kwargs or {}, wants_result=False)
    with _queue_cond:
        _queue.append(item)
        _queue_cond.notify_all()


def executeInMainThreadWithResult(call: Callable[..., Any], args: Any = (), kwargs: Optional[Mapping[str, Any]] = None) -> Any:
    """Run ``call`` on the main thread and return its result; ``None`` if it raised."""
    if not GUI:
        raise _violation("nuke: executeInMainThreadWithResult without a GUI: under nuke -t the queue may never run")
    if threading.current_thread() is _main_thread:
        raise _violation("nuke: executeInMainThreadWithResult called from the main thread: Nuke hangs")
    item = _QueuedCall(call, _as_args(args), kwargs or {}, wants_result=True)
    with _queue_cond:
        _queue.append(item)
        _queue_cond.notify_all()
    while not item.done.wait(0.05):
        if _shutdown.is_set():
            return None
    result = item.result
    item.result = None  # the queue item must not keep the result (a ProgressTask) alive
    return result


def _run_queued(item: _QueuedCall) -> None:
    try:
        item.result = item.call(*item.args, **item.kwargs)
    except BaseException:  # Nuke prints the traceback and carries on
        text = traceback.format_exc()
        sys.stderr.write(text)
        item.result = None
        item.raised = True
        with _state_lock:
            _errors.append(text)
    finally:
        item.done.set()



# The fake in parts, one concern each; everything is reachable here as in Nuke.
from ._knobs import (  # noqa: E402,F401
    AColor_Knob, Array_Knob, Boolean_Knob, Double_Knob, Enumeration_Knob, Int_Knob, Knob, Unsigned_Knob,
    _flush_after, _install_knob_changed_hooks, _require_number, _require_str,
)
from ._text_knobs import (  # noqa: E402,F401
    EvalString_Knob, File_Knob, Multiline_Eval_String_Knob, PyScript_Knob, PythonKnob, Script_Knob, String_Knob,
    Tab_Knob, Text_Knob,
)
from . import _ocio  # noqa: E402,F401
from ._ocio import _ColorspaceKnob, getColorspaceList  # noqa: E402,F401
from ._nodes import (  # noqa: E402,F401
    Group, Node, Root, Undo, _CLASS_KNOBS, _COMMON_KNOBS, _FILE_TYPES,
    _KNOWN_CLASSES, _MAX_INPUTS, _SOURCE_CLASSES, _changed, _enum_default, _flush_knob_changed,
    _in_knob_changed, _modified, _pending_knob_changed, _undo_state, _undo_steps,
)
from ._ui import (  # noqa: E402,F401
    Menu, ProgressTask, _MenuCommand, _tasks,
)
from ._callbacks import (  # noqa: E402,F401
    _add_callback, _fire, _tcl, addAfterRender, addBeforeRender, addFilenameFilter, addOnCreate,
    addOnScriptClose, afterRenders, beforeRenders, filenameFilter, filenameFilters, onCreates,
    onScriptCloses,
)
from ._render import (  # noqa: E402,F401
    _frame_path, _png, _pump_during_render, _upstream_source, execute,
)

# --- module state -----------------------------------------------------------------------------


def _new_node(cls: str, parent: Optional[Group]) -> Node:
    node: Node = object.__new__(Root if cls == "Root" else Group if cls == "Group" else Node)
    node._setup(cls, parent)
    return node


_root: Root = _new_node("Root", None)  # type: ignore[assignment]
_root._knobs["name"]._value = ""
_root._knobs["first_frame"]._value = 1
_root._knobs["last_frame"]._value = 100
_context: List[Group] = [_root]
_this: List[Tuple[Node, Optional[Knob]]] = []
_in_callback = 0  # > 0 while a knob callback (button, knobChanged) runs
_messages: List[str] = []
_renders: List[Tuple[str, int, int]] = []
_render_cancel_after: Optional[int] = None  # the test makes the user press Cancel in a render
_menus: Dict[str, Menu] = {}
_plugin_paths: List[str] = []
_views: List[str] = ["main"]
_frame = [1]
_last_hit: List[Optional[Group]] = [None]
_executing = [False]
_render_details: List[Dict[str, Any]] = []
_render_frame_hooks: List[Callable[[str, int], None]] = []  # the test acts between a render's frames
_hiero = [False]
_script_editor = [False]  # a Script Editor call is running on the main thread


def _unique_name(group: Group, base: str) -> str:
    taken = {n._knobs["name"]._value for n in group._children}
    i = 1
    while f"{base}{i}" in taken:
        i += 1
    return f"{base}{i}"


def _find(group: Group, path: str) -> Optional[Node]:
    head, _, rest = path.partition(".")
    for child in group._children:
        if not child._deleted and child._knobs["name"]._value == head:
            if not rest:
                return child
            return _find(child, rest) if isinstance(child, Group) else None
    return None


def _create(cls: str, knobs: Mapping[str, Any]) -> Node:
    if cls not in _KNOWN_CLASSES:
        raise RuntimeError(f"{cls}: unknown command")
    parent = _context[-1]
    node = _new_node(cls, parent)
    node._knobs["name"]._value = _unique_name(parent, cls)
    if cls == "Input":  # Nuke numbers a group's Inputs in creation order
        node._knobs["number"]._value = sum(1 for c in parent._children if c._cls == "Input" and not c._deleted)
    parent._children.append(node)
    for key, value in knobs.items():
        if key == "inputs":
            for i, n in enumerate(value):
                node.setInput(i, n)
            continue
        knob = node._knobs.get(key)
        if knob is None:
            raise ValueError(f"{cls} has no knob named {key}")
        knob.setValue(value)
    _modified[0] = True
    if not _undo_state["disabled"]:
        _undo_steps.append(f"create {node._knobs['name']._value}")
    _fire(onCreates, node)  # Nuke runs the studio's onCreate callbacks for every new node
    return node


class _Nodes:
    """``nuke.nodes.Read(...)``: a constructor per node class, creating in the current group."""

    def __getattr__(self, cls: str) -> Callable[..., Node]:
        if cls.startswith("_"):
            raise AttributeError(cls)

        def make(**knobs: Any) -> Node:
            _main_only(f"nodes.{cls}")
            return _create(cls, knobs)

        return make


nodes = _Nodes()


# --- module functions -------------------------------------------------------------------------


def createNode(typ: str, knobs: str = "", inpanel: bool = True) -> Node:
    """Create a node in the current group; ``knobs`` is ``"name value name value"``."""
    _main_only("createNode")
    values: Dict[str, Any] = {}
    parts = knobs.split()
    for key, value in zip(parts[::2], parts[1::2]):
        values[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    node = _create(typ, values)
    # Like Nuke: the new node becomes the only selected one.
    for other in _context[-1]._children:
        other._selected = other is node
    return node


def selectedNode() -> Node:
    """The selected node of the current group; ValueError when none is (as in Nuke)."""
    _main_only("selectedNode")
    chosen = [n for n in _context[-1]._children if not n._deleted and n._selected]
    if not chosen:
        raise ValueError("no node selected")
    return chosen[-1]


def delete(n: Optional[Node]) -> None:
    _main_only("delete")
    if n is None:
        return
    n._check_alive()
    if isinstance(n, Root):
        raise ValueError("cannot delete the root")
    _mark_deleted(n)
    if n._parent is not None:
        n._parent._children.remove(n)
        for other in n._parent._children:
            other._inputs = [None if x is n else x for x in other._inputs]


def _mark_deleted(n: Node) -> None:
    n._deleted = True
    if isinstance(n, Group):
        for child in n._children:
            _mark_deleted(child)


def toNode(s: str) -> Optional[Node]:
    _main_only("toNode")
    if s == "root":
        return _root
    return _find(_context[-1], s)


def allNodes(filter: Optional[str] = None, group: Optional[Group] = None, recurseGroups: bool = False) -> List[Node]:
    _main_only("allNodes")
    start = group if group is not None else _context[-1]
    out: List[Node] = []

    def walk(g: Group) -> None:
        for n in g._children:
            if n._deleted:
                continue
            if filter is None or n._cls == filter:
                out.append(n)
            if recurseGroups and isinstance(n, Group):
                walk(n)

    walk(start)
    return out


def root() -> Root:
    _main_only("root")
    return _root


def thisNode() -> Node:
    _main_only("thisNode")
    return _this[-1][0] if _this else _context[-1]


def thisKnob() -> Optional[Knob]:
    _main_only("thisKnob")
    return _this[-1][1] if _this else None


def thisGroup() -> Group:
    _main_only("thisGroup")
    return _context[-1]



def _script_globals() -> Dict[str, Any]:
    # Nuke runs knob and menu commands in __main__, where ``nuke`` is imported.
    return {"__name__": "__main__", "nuke": sys.modules[__name__]}


def _run_script(code: str, node: Node, knob: Optional[Knob]) -> None:
    """Run a knob's Python as Nuke does: thisNode()/thisKnob() set, inside a callback."""
    global _in_callback
    _this.append((node, knob))
    _in_callback += 1
    try:
        exec(compile(code, f"<knob {knob._name if knob else ''}>", "exec"), _script_globals())
    finally:
        _in_callback -= 1
        _this.pop()


def __getattr__(name: str) -> Any:
    raise AttributeError(
        f"fake nuke has no attribute {name!r}: if Nuke has it, add it to tests/nuke_fake (and check the stubs)"
    )


def _delete_all_for_close() -> None:
    """(fake only, private to _fake) the closed script's nodes are gone; a fresh empty root."""
    _mark_deleted(_root)
    fresh = _new_node("Root", None)
    assert isinstance(fresh, Root)
    fresh._knobs["name"]._value = ""
    globals()["_root"] = fresh
    _context[:] = [fresh]
    _modified[0] = False


def _iter_tasks() -> Iterator[ProgressTask]:
    with _state_lock:
        refs = list(_tasks)
    for ref in refs:
        task = ref()
        if task is not None:
            yield task


# The session (frame, views, dialogs, menus...) and saving, opening, copy and paste live in
# modules of their own (re-exported: Nuke has them here).
from ._session import (  # noqa: E402,F401
    alert, executing, frame, lastHitGroup, menu, message, modified, pluginAddPath, pluginPath, script_directory,
    scriptName, tprint, views, warning,
)
from ._script import nodeCopy, nodePaste, scriptOpen, scriptSave  # noqa: E402,F401
