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
"""

from __future__ import annotations

import collections
import os
import re
import struct
import sys
import threading
import traceback
import weakref
import zlib
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

# --- module constants that exist in Nuke ------------------------------------------------------

GUI: bool = True
NUKE_VERSION_MAJOR: int = 15
NUKE_VERSION_MINOR: int = 1
NUKE_VERSION_STRING: str = "15.1v3"
env: Dict[str, Any] = {"gui": True, "NukeVersionMajor": 15, "NukeVersionMinor": 1, "NukeVersionString": "15.1v3"}

# Knob flags (values as in Nuke's headers; only their identity matters here).
INVISIBLE: int = 0x0000000000000400
STARTLINE: int = 0x0000000000001000
ENDLINE: int = 0x0000000000002000
NO_ANIMATION: int = 0x0000000000000100
READ_ONLY: int = 0x0000000010000000
DISABLED: int = 0x0000000000000080


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


# --- nodes ------------------------------------------------------------------------------------


class Knob:
    """Base of every knob: a name, a label, flags, and the node that owns it."""

    _class_name = "Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        _main_only(f"{type(self).__name__}()")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: the name must be a non-empty string")
        self._name = name
        self._label = label if label is not None else name
        self._flags = 0
        self._tooltip = ""
        self._enabled = True
        self._owner: Optional[Node] = None
        self._value: Any = None

    def _check(self, what: str) -> None:
        _main_only(f"{type(self).__name__}.{what}")
        if self._owner is not None:
            self._owner._check_alive()

    def Class(self) -> str:
        self._check("Class")
        return self._class_name

    def name(self) -> str:
        self._check("name")
        return self._name

    def label(self) -> str:
        self._check("label")
        return self._label

    def setLabel(self, label: str) -> None:
        self._check("setLabel")
        self._label = label

    def tooltip(self) -> str:
        self._check("tooltip")
        return self._tooltip

    def setTooltip(self, tooltip: str) -> None:
        self._check("setTooltip")
        self._tooltip = tooltip

    def setFlag(self, flag: int) -> None:
        self._check("setFlag")
        self._flags |= flag

    def clearFlag(self, flag: int) -> None:
        self._check("clearFlag")
        self._flags &= ~flag

    def getFlag(self, flag: int) -> bool:
        self._check("getFlag")
        return bool(self._flags & flag)

    def setVisible(self, visible: bool) -> None:
        self._check("setVisible")
        if visible:
            self._flags &= ~INVISIBLE
        else:
            self._flags |= INVISIBLE

    def visible(self) -> bool:
        self._check("visible")
        return not self._flags & INVISIBLE

    def setEnabled(self, enabled: bool) -> None:
        self._check("setEnabled")
        self._enabled = bool(enabled)

    def enabled(self) -> bool:
        self._check("enabled")
        return self._enabled

    def node(self) -> Node:
        self._check("node")
        if self._owner is None:
            raise ValueError(f"knob {self._name} belongs to no node")
        return self._owner

    def value(self) -> Any:
        self._check("value")
        return self._value

    def getValue(self) -> Any:
        self._check("getValue")
        return self._value

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _changed(self)
        self._value = val
        return True

    def __repr__(self) -> str:
        return f"<{self._class_name} {self._name}={self._value!r}>"


def _require_str(knob: Knob, val: Any) -> str:
    if not isinstance(val, str):
        raise TypeError(f"{knob._class_name}.setValue() argument must be str, not {type(val).__name__}")
    return val


def _require_number(knob: Knob, val: Any) -> Union[int, float]:
    if isinstance(val, (int, float)):
        return val
    raise TypeError(f"{knob._class_name}.setValue() argument must be a number, not {type(val).__name__}")


class Array_Knob(Knob):
    _class_name = "Array_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._value = 0.0
        self._keys: Dict[float, float] = {}  # an animation curve: frame -> value (linear between)

    def isAnimated(self, channel: int = -1) -> bool:
        self._check("isAnimated")
        return bool(self._keys)

    def setAnimated(self, channel: int = -1) -> bool:
        self._check("setAnimated")
        return True

    def setValueAt(self, val: Any, time: float, index: int = 0, view: Optional[str] = None) -> bool:
        self._check("setValueAt")
        _changed(self)
        self._keys[float(time)] = float(_require_number(self, val))
        return True

    def getValueAt(self, frame: float, index: int = 0, view: Optional[str] = None) -> Any:
        self._check("getValueAt")
        if not self._keys:
            return self._value
        times = sorted(self._keys)
        if frame <= times[0]:
            return self._keys[times[0]]
        if frame >= times[-1]:
            return self._keys[times[-1]]
        for a, b in zip(times, times[1:]):
            if a <= frame <= b:
                t = (frame - a) / (b - a)
                return self._keys[a] + t * (self._keys[b] - self._keys[a])
        return self._value

    def setValue(self, val: Any, *args: Any) -> bool:
        self._check("setValue")
        _changed(self)
        self._value = float(_require_number(self, val))
        return True

    def value(self, *args: Any) -> Any:
        self._check("value")
        return self._value


class Int_Knob(Array_Knob):
    """An integer: ``setValue`` truncates floats and refuses text, like Nuke's."""

    _class_name = "Int_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._value = 0

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _changed(self)
        self._value = int(_require_number(self, val))
        return True

    def value(self) -> int:
        self._check("value")
        return int(self._value)

    def getValue(self) -> float:
        self._check("getValue")
        return float(self._value)


class Double_Knob(Array_Knob):
    _class_name = "Double_Knob"


class Boolean_Knob(Array_Knob):
    _class_name = "Boolean_Knob"

    def __init__(self, name: str, label: Optional[str] = None, value: bool = False) -> None:
        super().__init__(name, label)
        self._value = bool(value)

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _changed(self)
        self._value = bool(_require_number(self, val))
        return True

    def value(self) -> bool:
        self._check("value")
        return bool(self._value)


class Unsigned_Knob(Array_Knob):
    _class_name = "Unsigned_Knob"


class Enumeration_Knob(Unsigned_Knob):
    """A pulldown: ``value()`` is the chosen item's text, ``getValue()`` its index (a float).

    ``setValue`` accepts an item's text or an index; anything else raises ``ValueError``.
    """

    _class_name = "Enumeration_Knob"

    def __init__(self, name: str, label: Optional[str] = None, items: Sequence[str] = ()) -> None:
        super().__init__(name, label)
        self._items: List[str] = [str(i) for i in items]
        self._value = 0

    def value(self) -> str:
        self._check("value")
        return self._items[self._value] if self._items else ""

    def getValue(self) -> float:
        self._check("getValue")
        return float(self._value)

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _changed(self)
        if isinstance(val, str):
            if val not in self._items:
                raise ValueError(f"Invalid value {val!r} for {self._name}: not one of {self._items}")
            self._value = self._items.index(val)
        elif isinstance(val, (int, float)) and not isinstance(val, bool):
            index = int(val)
            if not 0 <= index < len(self._items):
                raise ValueError(f"Invalid index {val} for {self._name}")
            self._value = index
        else:
            raise TypeError(f"Enumeration_Knob.setValue() takes an item or an index, not {type(val).__name__}")
        return True

    def values(self) -> List[str]:
        self._check("values")
        return list(self._items)

    def setValues(self, items: Sequence[str]) -> None:
        self._check("setValues")
        _changed(self)
        self._items = [str(i) for i in items]
        if self._value >= len(self._items):
            self._value = 0

    def numValues(self) -> int:
        self._check("numValues")
        return len(self._items)

    def enumName(self, n: int) -> str:
        self._check("enumName")
        return self._items[n]


class String_Knob(Knob):
    """Text; ``setValue`` refuses anything but ``str``, like Nuke."""

    _class_name = "String_Knob"

    def __init__(self, name: str, label: Optional[str] = None, value: str = "") -> None:
        super().__init__(name, label)
        self._value = _require_str(self, value)

    def value(self) -> str:
        self._check("value")
        return str(self._value)

    def getValue(self) -> str:
        self._check("getValue")
        return str(self._value)

    def getText(self) -> str:
        self._check("getText")
        return str(self._value)

    def setValue(self, val: Any) -> None:  # type: ignore[override]
        self._check("setValue")
        _changed(self)
        self._value = _require_str(self, val)


class EvalString_Knob(String_Knob):
    """``value()`` is the text as typed; ``evaluate()`` runs its Tcl (a subset, see :func:`_tcl`)."""

    _class_name = "EvalString_Knob"

    def evaluate(self, *args: Any) -> str:
        self._check("evaluate")
        return _tcl(str(self._value))


class File_Knob(EvalString_Knob):
    """A file path. ``fromUserText("path 1-10")`` sets the path and, on a Read, the range."""

    _class_name = "File_Knob"

    def __init__(self, name: str, label: Optional[str] = None) -> None:
        super().__init__(name, label, "")

    def getEvaluatedValue(self) -> str:
        self._check("getEvaluatedValue")
        return _tcl(str(self._value))

    def fromUserText(self, text: str) -> None:
        self._check("fromUserText")
        text = _require_str(self, text).strip()
        match = re.match(r"^(.*?)\s+(-?\d+)-(-?\d+)$", text)
        if match is None:
            self._value = text
            return
        self._value = match.group(1)
        owner = self._owner
        if owner is not None:
            first, last = int(match.group(2)), int(match.group(3))
            for name, value in (("first", first), ("last", last), ("origfirst", first), ("origlast", last)):
                knob = owner._knobs.get(name)
                if isinstance(knob, Int_Knob):
                    knob._value = value


class Multiline_Eval_String_Knob(EvalString_Knob):
    _class_name = "Multiline_Eval_String_Knob"


class PythonKnob(String_Knob):
    _class_name = "PythonKnob"


class Script_Knob(String_Knob):
    """A button; ``execute()`` runs the command as Nuke does for a click (see ``_fake.press``)."""

    _class_name = "Script_Knob"

    def __init__(self, name: str, label: Optional[str] = None, command: str = "") -> None:
        super().__init__(name, label, command)

    def command(self) -> str:
        self._check("command")
        return str(self._value)

    def setCommand(self, cmd: str) -> None:
        self._check("setCommand")
        self._value = _require_str(self, cmd)

    def execute(self) -> None:
        self._check("execute")
        if self._owner is None:
            raise ValueError(f"knob {self._name} belongs to no node")
        _run_script(str(self._value), self._owner, self)


class PyScript_Knob(Script_Knob):
    _class_name = "PyScript_Knob"


class Text_Knob(Knob):
    """A line of (HTML-capable) text."""

    _class_name = "Text_Knob"

    def __init__(self, name: str, label: Optional[str] = None, text: str = "") -> None:
        super().__init__(name, label)
        self._value = _require_str(self, text)

    def value(self) -> str:
        self._check("value")
        return str(self._value)

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _changed(self)
        self._value = _require_str(self, val)
        return True


class Tab_Knob(Knob):
    _class_name = "Tab_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._value = 0


# The "default" entry is what a Write/Read uses when nobody sets it: the studio's choice.
_COLORSPACES: List[str] = ["default", "linear", "sRGB", "rec709", "Gamma2.2", "ACES - ACEScg", "Output - sRGB"]
# The knobs each node class has, besides the common ones. Only what the plugin touches.
_COMMON_KNOBS: List[Tuple[str, Callable[[str], Knob]]] = [
    ("name", lambda n: String_Knob(n)),
    ("label", lambda n: Multiline_Eval_String_Knob(n)),
    ("xpos", lambda n: Int_Knob(n)),
    ("ypos", lambda n: Int_Knob(n)),
    ("disable", lambda n: Boolean_Knob(n)),
    ("knobChanged", lambda n: PythonKnob(n)),
    ("onCreate", lambda n: PythonKnob(n)),
]
_FILE_TYPES = ["", "cin", "dpx", "exr", "jpeg", "mov", "png", "targa", "tiff"]
_CLASS_KNOBS: Dict[str, List[Tuple[str, Callable[[str], Knob]]]] = {
    "Read": [
        ("file", lambda n: File_Knob(n)),
        ("first", lambda n: Int_Knob(n)),
        ("last", lambda n: Int_Knob(n)),
        ("origfirst", lambda n: Int_Knob(n)),
        ("origlast", lambda n: Int_Knob(n)),
        ("on_error", lambda n: Enumeration_Knob(n, n, ["error", "black", "checkerboard", "nearest frame"])),
        ("raw", lambda n: Boolean_Knob(n)),
        ("colorspace", lambda n: Enumeration_Knob(n, n, _COLORSPACES)),
        ("reload", lambda n: Script_Knob(n, "Reload", "")),
    ],
    "Write": [
        ("file", lambda n: File_Knob(n)),
        ("proxy", lambda n: File_Knob(n)),
        ("file_type", lambda n: Enumeration_Knob(n, n, _FILE_TYPES)),
        # Nuke's default: all four channels.
        ("channels", lambda n: _enum_default(Enumeration_Knob(n, n, ["rgb", "rgba", "alpha", "all"]), "rgba")),
        ("colorspace", lambda n: Enumeration_Knob(n, n, _COLORSPACES)),
        ("views", lambda n: String_Knob(n)),
        ("raw", lambda n: Boolean_Knob(n)),
        ("create_directories", lambda n: Boolean_Knob(n)),
        ("beforeRender", lambda n: PythonKnob(n)),
        ("beforeFrameRender", lambda n: PythonKnob(n)),
        ("afterFrameRender", lambda n: PythonKnob(n)),
        ("afterRender", lambda n: PythonKnob(n)),
    ],
    "Input": [("number", lambda n: Int_Knob(n))],
    "Switch": [("which", lambda n: Int_Knob(n))],
    "Constant": [("color", lambda n: Array_Knob(n))],
    "Root": [
        ("first_frame", lambda n: Int_Knob(n)),
        ("last_frame", lambda n: Int_Knob(n)),
        ("fps", lambda n: Array_Knob(n)),
        ("project_directory", lambda n: File_Knob(n)),
        ("proxy", lambda n: Boolean_Knob(n)),
        ("int8Lut", lambda n: _enum_default(Enumeration_Knob(n, n, _COLORSPACES), "sRGB")),
    ],
}
_MAX_INPUTS = {"Read": 0, "Write": 1, "Input": 0, "Output": 1, "Constant": 0, "ColorBars": 0, "NoOp": 1, "Dot": 1, "Root": 0, "Switch": 10}
_KNOWN_CLASSES = set(_MAX_INPUTS) | {"Group"}
_SOURCE_CLASSES = {"Read", "Constant", "ColorBars"}


def _enum_default(knob: Enumeration_Knob, item: str) -> Enumeration_Knob:
    knob._value = knob._items.index(item)
    return knob


class Node:
    """A node in the DAG. Methods are main-thread only; a deleted node raises ValueError."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Real nodes come from nuke.nodes.X() / createNode(); direct construction is refused.
        raise TypeError("nuke.Node cannot be created directly; use nuke.nodes.<Class>() or nuke.createNode()")

    def _setup(self, cls: str, parent: Optional[Group]) -> None:
        self._cls = cls
        self._parent = parent
        self._deleted = False
        self._selected = False
        self._inputs: List[Optional[Node]] = []
        self._knobs: Dict[str, Knob] = {}
        self._knob_order: List[str] = []
        for name, make in _COMMON_KNOBS + _CLASS_KNOBS.get(cls, []):
            self._attach(make(name))
        self._knobs["knobChanged"].setFlag(INVISIBLE)
        self._knobs["onCreate"].setFlag(INVISIBLE)

    def _attach(self, knob: Knob) -> None:
        knob._owner = self
        self._knobs[knob._name] = knob
        self._knob_order.append(knob._name)

    def _check_alive(self) -> None:
        if self._deleted:
            raise ValueError("A PythonObject is not attached to a node")

    def _check(self, what: str) -> None:
        _main_only(f"{self._cls}.{what}")
        self._check_alive()

    # identity
    def Class(self) -> str:
        self._check("Class")
        return self._cls

    def name(self) -> str:
        self._check("name")
        return str(self._knobs["name"]._value)

    def setName(self, name: str, uncollide: bool = True, updateExpressions: bool = False) -> None:
        self._check("setName")
        parent = self._parent
        if parent is not None:
            taken = {n._knobs["name"]._value for n in parent._children if n is not self}
            if name in taken:
                if not uncollide:
                    raise ValueError(f"{name} already exists")
                name = _unique_name(parent, re.sub(r"\d+$", "", name) or name)
        self._knobs["name"]._value = name

    def fullName(self) -> str:
        self._check("fullName")
        parts = [str(self._knobs["name"]._value)]
        parent = self._parent
        while parent is not None and parent._cls != "Root":
            parts.append(str(parent._knobs["name"]._value))
            parent = parent._parent
        return ".".join(reversed(parts))

    def parent(self) -> Group:
        self._check("parent")
        if self._parent is None:
            raise ValueError("root has no parent")
        return self._parent

    # knobs
    def knob(self, p: Union[str, int]) -> Optional[Knob]:
        self._check("knob")
        if isinstance(p, int):
            return self._knobs[self._knob_order[p]] if 0 <= p < len(self._knob_order) else None
        return self._knobs.get(p)

    def knobs(self) -> Dict[str, Knob]:
        self._check("knobs")
        return dict(self._knobs)

    def allKnobs(self) -> List[Knob]:
        self._check("allKnobs")
        return [self._knobs[n] for n in self._knob_order]

    def addKnob(self, knob: Knob) -> None:
        self._check("addKnob")
        if not isinstance(knob, Knob):
            raise TypeError("addKnob needs a Knob")
        if knob._owner is not None:
            raise ValueError(f"knob {knob._name} already belongs to a node")
        if knob._name in self._knobs:
            raise ValueError(f"{self.name()} already has a knob named {knob._name}")
        self._attach(knob)

    def removeKnob(self, knob: Knob) -> None:
        self._check("removeKnob")
        if self._knobs.get(knob._name) is not knob:
            raise ValueError(f"knob {knob._name} is not on {self.name()}")
        del self._knobs[knob._name]
        self._knob_order.remove(knob._name)
        knob._owner = None

    def __getitem__(self, name: str) -> Knob:
        self._check("__getitem__")
        try:
            return self._knobs[name]
        except KeyError:
            raise NameError(f"knob {name} does not exist") from None

    # graph
    def maxInputs(self) -> int:
        self._check("maxInputs")
        return self._max_inputs()

    def _max_inputs(self) -> int:
        return _MAX_INPUTS.get(self._cls, 1)

    def inputs(self) -> int:
        self._check("inputs")
        while self._inputs and self._inputs[-1] is None:
            self._inputs.pop()
        return len(self._inputs)

    def input(self, index: int) -> Optional[Node]:
        self._check("input")
        node = self._inputs[index] if 0 <= index < len(self._inputs) else None
        return node if node is not None and not node._deleted else None

    def setInput(self, i: int, node: Optional[Node]) -> bool:
        self._check("setInput")
        if node is not None:
            node._check_alive()
            if node._parent is not self._parent:
                return False
        if not 0 <= i < self._max_inputs():
            return False
        while len(self._inputs) <= i:
            self._inputs.append(None)
        self._inputs[i] = node
        return True

    def dependent(self, mask: int = 0, forceEvaluate: bool = True) -> List[Node]:
        self._check("dependent")
        parent = self._parent
        return [n for n in (parent._children if parent else []) if self in n._inputs]

    # position
    def xpos(self) -> int:
        self._check("xpos")
        return int(self._knobs["xpos"]._value)

    def ypos(self) -> int:
        self._check("ypos")
        return int(self._knobs["ypos"]._value)

    def setXpos(self, x: int) -> None:
        self._check("setXpos")
        self._knobs["xpos"]._value = int(x)

    def setYpos(self, y: int) -> None:
        self._check("setYpos")
        self._knobs["ypos"]._value = int(y)

    def setXYpos(self, x: int, y: int) -> None:
        self._check("setXYpos")
        self._knobs["xpos"]._value = int(x)
        self._knobs["ypos"]._value = int(y)

    def screenWidth(self) -> int:
        self._check("screenWidth")
        return 80

    def screenHeight(self) -> int:
        self._check("screenHeight")
        return 18

    # frames
    def firstFrame(self) -> int:
        self._check("firstFrame")
        knob = self._knobs.get("first") or self._knobs.get("first_frame")
        return int(knob._value) if knob is not None else _root._knobs["first_frame"]._value

    def lastFrame(self) -> int:
        self._check("lastFrame")
        knob = self._knobs.get("last") or self._knobs.get("last_frame")
        return int(knob._value) if knob is not None else _root._knobs["last_frame"]._value

    # panels
    def showControlPanel(self, forceFloat: bool = False) -> None:
        self._check("showControlPanel")
        self._panel_open = True

    def hideControlPanel(self) -> None:
        self._check("hideControlPanel")
        self._panel_open = False

    def shown(self) -> bool:
        self._check("shown")
        return bool(getattr(self, "_panel_open", False))

    def setSelected(self, selected: bool) -> None:
        self._check("setSelected")
        self._selected = bool(selected)

    def isSelected(self) -> bool:
        self._check("isSelected")
        return self._selected

    def __repr__(self) -> str:
        state = " (deleted)" if self._deleted else ""
        return f"<{self._cls} {self._knobs['name']._value}{state}>"


class Group(Node):
    """A node holding nodes; ``begin()``/``end()`` or ``with group:`` make it the context."""

    def _setup(self, cls: str, parent: Optional[Group]) -> None:
        super()._setup(cls, parent)
        self._children: List[Node] = []

    def _max_inputs(self) -> int:
        numbers = [int(c._knobs["number"]._value) for c in self._children if c._cls == "Input" and not c._deleted]
        return max(numbers) + 1 if numbers else 0

    def begin(self) -> Group:
        self._check("begin")
        _context.append(self)
        return self

    def end(self) -> None:
        self._check("end")
        if len(_context) <= 1 or _context[-1] is not self:
            raise RuntimeError("Group.end() without a matching begin()")
        _context.pop()

    def __enter__(self) -> Group:
        return self.begin()

    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.end()

    def nodes(self) -> List[Node]:
        self._check("nodes")
        return [n for n in self._children if not n._deleted]

    def node(self, s: str) -> Optional[Node]:
        self._check("node")
        return _find(self, s)

    def numNodes(self) -> int:
        self._check("numNodes")
        return len(self.nodes())


class Root(Group):
    """The script's root group. Its ``name`` knob holds the script's path ('' until saved)."""

    def modified(self) -> bool:
        self._check("modified")
        return _modified[0]

    def setModified(self, modified: bool) -> None:
        self._check("setModified")
        _modified[0] = bool(modified)


class Undo:
    """Nuke's undo stack: knob changes add steps unless it is disabled."""

    @classmethod
    def disable(cls) -> None:
        _main_only("Undo.disable")
        _undo_state["disabled"] += 1

    @classmethod
    def enable(cls) -> None:
        _main_only("Undo.enable")
        if _undo_state["disabled"] <= 0:
            raise RuntimeError("Undo.enable() without disable()")
        _undo_state["disabled"] -= 1

    @classmethod
    def disabled(cls) -> bool:
        _main_only("Undo.disabled")
        return _undo_state["disabled"] > 0


_modified = [False]
_undo_state = {"disabled": 0}
_undo_steps: List[str] = []


def _changed(knob: Knob) -> None:
    """A knob of a node changed: an undo step (unless disabled) and a modified script; with the
    node's panel open, its ``knobChanged`` script runs, as in Nuke, for a change made by Python
    too (not re-entered for the same node while it runs)."""
    owner = knob._owner
    if owner is None or owner._deleted:
        return
    _modified[0] = True
    if not _undo_state["disabled"]:
        _undo_steps.append(f"{owner._knobs['name']._value}.{knob._name}")
    code = owner._knobs["knobChanged"]._value if "knobChanged" in owner._knobs else ""
    if (
        code
        and knob._name != "knobChanged"
        and getattr(owner, "_panel_open", False)
        and owner not in _in_knob_changed
    ):
        _pending_knob_changed.append((owner, knob))


_in_knob_changed: List[Any] = []
_pending_knob_changed: List[Tuple[Any, Any]] = []


def _flush_knob_changed() -> None:
    """Run the knobChanged scripts the last setValue asked for (after the value is stored)."""
    while _pending_knob_changed:
        owner, knob = _pending_knob_changed.pop(0)
        if owner._deleted or owner in _in_knob_changed:
            continue
        _in_knob_changed.append(owner)
        try:
            _run_script(str(owner._knobs["knobChanged"]._value), owner, knob)
        finally:
            _in_knob_changed.remove(owner)


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
        with _state_lock:
            _tasks.append(weakref.ref(self))

    def _check_frozen(self) -> None:
        # A Script Editor call blocks the event loop: a bar it updates is never redrawn.
        if _script_editor[0] and threading.current_thread() is _main_thread:
            raise _violation("nuke: a Script Editor call blocks Nuke's main thread while it updates a ProgressTask: the GUI is frozen")

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
        _main_only("Menu.name")
        return self._name

    def addMenu(self, name: str, icon: str = "", index: int = -1) -> Menu:
        _main_only("Menu.addMenu")
        head, _, rest = name.partition("/")
        item = self._items.get(head)
        if not isinstance(item, Menu):
            item = Menu(head)
            self._items[head] = item
        return item.addMenu(rest, icon) if rest else item

    def addCommand(self, name: str, command: Union[str, Callable[[], Any]] = "", shortcut: str = "", icon: str = "", tooltip: str = "", index: int = -1) -> Any:
        _main_only("Menu.addCommand")
        path, _, leaf = name.rpartition("/")
        menu = self.addMenu(path) if path else self
        item = _MenuCommand(leaf, command)
        menu._items[leaf] = item
        return item

    def findItem(self, name: str) -> Optional[Any]:
        _main_only("Menu.findItem")
        node: Any = self
        for part in name.split("/"):
            if not isinstance(node, Menu) or part not in node._items:
                return None
            node = node._items[part]
        return node

    def items(self) -> List[Any]:
        _main_only("Menu.items")
        return list(self._items.values())


class _MenuCommand:
    def __init__(self, name: str, command: Union[str, Callable[[], Any]]) -> None:
        self._name = name
        self._command = command

    def name(self) -> str:
        return self._name

    def invoke(self) -> None:
        _main_only("MenuItem.invoke")
        if callable(self._command):
            self._command()
        else:
            exec(compile(self._command, f"<menu {self._name}>", "exec"), _script_globals())


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
_hiero = [False]
_script_editor = [False]  # a Script Editor call is running on the main thread

# Global callbacks, as nuke.callbacks keeps them: {nodeClass: [(call, args, kwargs)]}.
onCreates: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
onScriptCloses: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
beforeRenders: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
afterRenders: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
filenameFilters: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}


def _add_callback(registry: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]], call: Callable[..., Any], args: Any, kwargs: Any, nodeClass: str) -> None:
    _main_only("add callback")
    registry.setdefault(nodeClass, []).append((call, _as_args(args), dict(kwargs or {})))


def _fire(registry: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]], node: Optional[Node]) -> List[Any]:
    keys = ["*"] + ([node._cls] if node is not None else [])
    out = []
    for key in keys:
        for call, args, kwargs in list(registry.get(key, [])):
            if node is not None:
                _this.append((node, None))
            try:
                out.append(call(*args, **kwargs))
            finally:
                if node is not None:
                    _this.pop()
    return out


def addOnCreate(call: Callable[..., Any], args: Any = (), kwargs: Any = None, nodeClass: str = "*") -> None:
    _add_callback(onCreates, call, args, kwargs, nodeClass)


def addOnScriptClose(call: Callable[..., Any], args: Any = (), kwargs: Any = None, nodeClass: str = "Root") -> None:
    _add_callback(onScriptCloses, call, args, kwargs, nodeClass)


def addBeforeRender(call: Callable[..., Any], args: Any = (), kwargs: Any = None, nodeClass: str = "Write") -> None:
    _add_callback(beforeRenders, call, args, kwargs, nodeClass)


def addAfterRender(call: Callable[..., Any], args: Any = (), kwargs: Any = None, nodeClass: str = "Write") -> None:
    _add_callback(afterRenders, call, args, kwargs, nodeClass)


def addFilenameFilter(call: Callable[..., Any], args: Any = (), kwargs: Any = None, nodeClass: str = "*") -> None:
    _add_callback(filenameFilters, call, args, kwargs, nodeClass)


def filenameFilter(filename: str) -> str:
    """The studio's filename filters applied in turn (as Nuke does before opening a file)."""
    for call, args, kwargs in filenameFilters.get("*", []):
        result = call(filename, *args, **kwargs)
        if result is not None:
            filename = result
    return filename


def views() -> List[str]:
    _main_only("views")
    return list(_views)


def frame(f: Optional[int] = None) -> int:
    _main_only("frame")
    if f is not None:
        _frame[0] = int(f)
    return _frame[0]


def lastHitGroup() -> Group:
    """The group whose node graph the user clicked last (the context group if none)."""
    _main_only("lastHitGroup")
    group = _last_hit[0]
    return group if group is not None and not group._deleted else _context[-1]


def scriptName() -> str:
    _main_only("scriptName")
    name = str(_root._knobs["name"]._value)
    if not name:
        raise RuntimeError("no script name (the script was never saved)")
    return name


def modified() -> bool:
    _main_only("modified")
    return _modified[0]


def _tcl(text: str) -> str:
    """The Tcl in file paths a plugin meets: [value root.name], [file dirname ...], [file rootname
    [file tail ...]], [value root.project_directory], $env(NAME)."""
    def value_of(path: str) -> str:
        node_name, _, knob_name = path.partition(".")
        node = _root if node_name == "root" else _find(_root, node_name)
        if node is None or knob_name not in node._knobs:
            raise ValueError(f"Tcl: no knob {path}")
        return str(node._knobs[knob_name]._value)

    def inner(expr: str) -> str:
        expr = expr.strip()
        m = re.fullmatch(r"value\s+(\S+)", expr)
        if m:
            return value_of(m.group(1))
        m = re.fullmatch(r"file\s+(dirname|tail|rootname)\s+(.*)", expr)
        if m:
            arg = evaluate_brackets(m.group(2))
            fn = {"dirname": os.path.dirname, "tail": os.path.basename, "rootname": lambda p: os.path.splitext(p)[0]}[m.group(1)]
            return fn(arg)
        raise ValueError(f"fake Tcl cannot evaluate [{expr}]")

    def evaluate_brackets(t: str) -> str:
        while "[" in t:
            start = t.rindex("[")
            end = t.index("]", start)
            t = t[:start] + inner(t[start + 1 : end]) + t[end + 1 :]
        return t

    text = re.sub(r"\$env\((\w+)\)", lambda m: os.environ.get(m.group(1), ""), text)
    return evaluate_brackets(text)


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


def message(prompt: str) -> None:
    """A dialog (recorded); without a GUI Nuke prints it to the terminal."""
    _main_only("message")
    if not isinstance(prompt, str):
        raise TypeError("message() argument must be str")
    _messages.append(prompt)
    if not GUI:
        print(prompt)


def alert(prompt: str) -> None:
    message(prompt)


def tprint(*args: Any, sep: str = " ", end: str = "\n", file: Any = None) -> None:
    print(*args, sep=sep, end=end, file=file or sys.stdout)


def warning(message: str) -> None:
    sys.stderr.write(f"Warning: {message}\n")


def menu(name: str) -> Optional[Menu]:
    """A menu; a Hiero session (``env['hiero']``) has no node graph, hence no "Nodes" toolbar."""
    _main_only("menu")
    if name == "Nodes" and env.get("hiero"):
        return None
    if name not in _menus:
        _menus[name] = Menu(name)
    return _menus[name]


def pluginAddPath(args: str, addToSysPath: bool = True) -> None:
    _main_only("pluginAddPath")
    if args not in _plugin_paths:
        _plugin_paths.insert(0, args)
    if addToSysPath and args not in sys.path:
        sys.path.insert(0, args)


def pluginPath() -> List[str]:
    return list(_plugin_paths)


def execute(nameOrNode: Union[Node, str], start: int, end: int, incr: int = 1, views: Optional[List[str]] = None, continueOnError: bool = False) -> None:
    """Render a Write node: a small real PNG per frame, at the path its ``file`` knob gives.

    Strict like Nuke: a render inside a knob callback or inside another render fails; Nuke's
    event loop runs queued main-thread calls between frames; the Write's own callback knobs and
    the global before/after render callbacks run; every view is rendered unless ``views`` says
    otherwise; proxy mode renders at proxy size. What was rendered how is recorded.
    """
    _main_only("execute")
    if _in_callback:
        raise _violation("nuke: execute() inside a knob callback: Nuke fails with 'I'm already executing something else'")
    if _executing[0]:
        raise _violation("nuke: execute() inside another execute(): Nuke fails with 'I'm already executing something else'")
    node = toNode(nameOrNode) if isinstance(nameOrNode, str) else nameOrNode
    if node is None:
        raise ValueError(f"No such node {nameOrNode}")
    node._check_alive()
    if node._cls != "Write":
        raise RuntimeError(f"{node.name()} cannot be executed")
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool):
        raise TypeError("execute() frame numbers must be int")
    if end < start:
        raise RuntimeError(f"{node.name()}: bad frame range {start}-{end}")
    source = _upstream_source(node)
    if source is None:
        raise RuntimeError(f"{node.name()}: nothing is connected to input 0")
    pattern = str(node._knobs["file"]._value)
    if not pattern:
        raise RuntimeError(f"{node.name()}: no filename set")
    file_type = node["file_type"].value() or os.path.splitext(pattern)[1].lstrip(".").lower()
    channels = str(node["channels"].value())
    rendered_views = list(views) if views is not None else list(_views)
    callbacks_run: List[str] = []
    for knob_name in ("beforeRender", "afterRender"):
        if str(node._knobs[knob_name]._value).strip():
            callbacks_run.append(knob_name)
    callbacks_run += ["global beforeRender"] * len(_fire(beforeRenders, node))
    _render_details.append(
        {
            "node": node.fullName(),
            "colorspace": str(node["colorspace"].value()),
            "channels": channels,
            "proxy": bool(_root._knobs["proxy"]._value),
            "views": rendered_views,
            "callbacks": callbacks_run,
            "undo_disabled": _undo_state["disabled"] > 0,
        }
    )
    _renders.append((node.fullName(), start, end))
    _executing[0] = True
    try:
        for i, frame_number in enumerate(range(start, end + 1, incr)):
            if _render_cancel_after is not None and i >= _render_cancel_after:
                raise RuntimeError("Cancelled")
            path = _frame_path(pattern, frame_number)
            folder = os.path.dirname(path)
            if folder and not os.path.isdir(folder) and not node._knobs["create_directories"]._value:
                raise RuntimeError(f"{node.name()}: Can't write {path}: No such file or directory")
            os.makedirs(folder or ".", exist_ok=True)
            with open(path, "wb") as fh:
                rgb = ((frame_number * 37) % 256, 64, 128)
                fh.write(_png(8, 8, rgb, alpha=channels != "rgb") if file_type == "png" else b"fake " + file_type.encode())
            _pump_during_render()
    finally:
        _executing[0] = False
    _fire(afterRenders, node)


def _pump_during_render() -> None:
    # Nuke keeps its event loop going while it renders: queued main-thread calls run here.
    while True:
        with _queue_cond:
            if not _queue:
                return
            item = _queue.popleft()
        _run_queued(item)


def _frame_path(pattern: str, frame: int) -> str:
    pattern = re.sub(r"#+", lambda m: f"{frame:0{len(m.group(0))}d}", pattern)
    return re.sub(r"%(0?\d*)d", lambda m: ("%" + m.group(1) + "d") % frame, pattern)


def _upstream_source(node: Node) -> Optional[Node]:
    """The node whose image reaches ``node``'s input 0 (through Dots, Inputs and Outputs)."""
    seen = set()
    current = node._inputs[0] if node._inputs else None
    while current is not None and id(current) not in seen and not current._deleted:
        seen.add(id(current))
        if current._cls in _SOURCE_CLASSES:
            return current
        if current._cls == "Input":
            group = current._parent
            number = int(current._knobs["number"]._value)
            if group is None or group is _root:
                return None
            current = group._inputs[number] if number < len(group._inputs) else None
        elif current._cls == "Switch":
            which = int(current._knobs["which"]._value)
            current = current._inputs[which] if which < len(current._inputs) else None
        elif isinstance(current, Group):
            out = next((c for c in current._children if c._cls == "Output" and not c._deleted), None)
            current = out
        else:
            current = current._inputs[0] if current._inputs else None
    return None


def _png(width: int, height: int, rgb: Tuple[int, int, int], alpha: bool = False) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixel = bytes(rgb) + (b"\xff" if alpha else b"")
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


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


def _flush_after(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        _flush_knob_changed()
        return result

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _install_knob_changed_hooks() -> None:
    # The value is stored first, then knobChanged runs (it reads the new value).
    pending = [Knob]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        for name in ("setValue", "setValues", "setValueAt"):
            if name in cls.__dict__:
                setattr(cls, name, _flush_after(cls.__dict__[name]))


_install_knob_changed_hooks()


# Saving, opening, copy and paste live in their own module (re-exported: Nuke has them here).
from ._script import nodeCopy, nodePaste, scriptOpen, scriptSave  # noqa: E402,F401
