"""Part of the fake ``nuke`` (see its ``__init__``): nodes and groups, the classes' knobs, undo and the modified flag."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import nuke as _n

# The knobs each node class has, besides the common ones. Only what the plugin touches.
_COMMON_KNOBS: List[Tuple[str, Callable[[str], _n.Knob]]] = [
    ("name", lambda n: _n.String_Knob(n)),
    ("label", lambda n: _n.Multiline_Eval_String_Knob(n)),
    ("xpos", lambda n: _n.Int_Knob(n)),
    ("ypos", lambda n: _n.Int_Knob(n)),
    ("disable", lambda n: _n.Boolean_Knob(n)),
    ("knobChanged", lambda n: _n.PythonKnob(n)),
    ("onCreate", lambda n: _n.PythonKnob(n)),
]
_FILE_TYPES = ["", "cin", "dpx", "exr", "jpeg", "mov", "png", "targa", "tiff"]
_CLASS_KNOBS: Dict[str, List[Tuple[str, Callable[[str], _n.Knob]]]] = {
    "Read": [
        ("file", lambda n: _n.File_Knob(n)),
        ("first", lambda n: _n.Int_Knob(n)),
        ("last", lambda n: _n.Int_Knob(n)),
        ("origfirst", lambda n: _n.Int_Knob(n)),
        ("origlast", lambda n: _n.Int_Knob(n)),
        # Outside first-last: hold the first/last frame (Nuke's default), or loop, bounce, black.
        ("before", lambda n: _n.Enumeration_Knob(n, n, ["hold", "loop", "bounce", "black"])),
        ("after", lambda n: _n.Enumeration_Knob(n, n, ["hold", "loop", "bounce", "black"])),
        # A missing or unreadable frame: an error (the default: a render stops), or an image.
        ("on_error", lambda n: _n.Enumeration_Knob(n, n, ["error", "black", "checkerboard", "nearest frame"])),
        ("raw", lambda n: _n.Boolean_Knob(n)),
        ("colorspace", lambda n: _n._ColorspaceKnob(n)),  # from the OCIO config (_ocio)
        ("reload", lambda n: _n.Script_Knob(n, "Reload", "")),
    ],
    "Write": [
        ("file", lambda n: _n.File_Knob(n)),
        ("proxy", lambda n: _n.File_Knob(n)),
        ("file_type", lambda n: _n.Enumeration_Knob(n, n, _FILE_TYPES)),
        # Nuke's default: all four channels.
        ("channels", lambda n: _enum_default(_n.Enumeration_Knob(n, n, ["rgb", "rgba", "alpha", "all"]), "rgba")),
        ("colorspace", lambda n: _n._ColorspaceKnob(n)),  # from the OCIO config (_ocio)
        ("views", lambda n: _n.String_Knob(n)),
        ("raw", lambda n: _n.Boolean_Knob(n)),
        # The per-format knob (Foundry, Nuke Reference Guide, "Write"): png "8 bit"/"16 bit",
        # exr "16 bit half"/"32 bit float".
        ("datatype", lambda n: _n.Enumeration_Knob(n, n, ["8 bit", "16 bit", "16 bit half", "32 bit float"])),
        ("create_directories", lambda n: _n.Boolean_Knob(n)),
        ("beforeRender", lambda n: _n.PythonKnob(n)),
        ("beforeFrameRender", lambda n: _n.PythonKnob(n)),
        ("afterFrameRender", lambda n: _n.PythonKnob(n)),
        ("afterRender", lambda n: _n.PythonKnob(n)),
    ],
    "Input": [("number", lambda n: _n.Int_Knob(n))],
    "Switch": [("which", lambda n: _n.Int_Knob(n))],
    "Constant": [("color", lambda n: _n.AColor_Knob(n))],
    # Nuke's Expression node (Foundry, Nuke Reference Guide, "Expression"): expr0..expr3 write
    # the channels of channel0..channel3, by default red, green, blue and alpha (empty: unchanged).
    "Expression": [(f"expr{i}", lambda n: _n.String_Knob(n)) for i in range(4)],
    "Root": [
        ("first_frame", lambda n: _n.Int_Knob(n)),
        ("last_frame", lambda n: _n.Int_Knob(n)),
        ("fps", lambda n: _n.Array_Knob(n)),
        ("project_directory", lambda n: _n.File_Knob(n)),
        ("proxy", lambda n: _n.Boolean_Knob(n)),
        ("int8Lut", lambda n: _n._ColorspaceKnob(n, n, root=True)),  # the 8-bit default, per config
    ],
}
_MAX_INPUTS = {"Read": 0, "Write": 1, "Input": 0, "Output": 1, "Constant": 0, "ColorBars": 0, "NoOp": 1, "Dot": 1, "Root": 0, "Switch": 10, "Expression": 1}
_KNOWN_CLASSES = set(_MAX_INPUTS) | {"Group"}
_SOURCE_CLASSES = {"Read", "Constant", "ColorBars"}


def _enum_default(knob: _n.Enumeration_Knob, item: str) -> _n.Enumeration_Knob:
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
        self._knobs: Dict[str, _n.Knob] = {}
        self._knob_order: List[str] = []
        for name, make in _COMMON_KNOBS + _CLASS_KNOBS.get(cls, []):
            self._attach(make(name))
        self._knobs["knobChanged"].setFlag(_n.INVISIBLE)
        self._knobs["onCreate"].setFlag(_n.INVISIBLE)

    def _attach(self, knob: _n.Knob) -> None:
        knob._owner = self
        self._knobs[knob._name] = knob
        self._knob_order.append(knob._name)

    def _check_alive(self) -> None:
        if self._deleted:
            raise ValueError("A PythonObject is not attached to a node")

    def _check(self, what: str) -> None:
        _n._main_only(f"{self._cls}.{what}")
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
                name = _n._unique_name(parent, re.sub(r"\d+$", "", name) or name)
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
    def knob(self, p: Union[str, int]) -> Optional[_n.Knob]:
        self._check("knob")
        if isinstance(p, int):
            return self._knobs[self._knob_order[p]] if 0 <= p < len(self._knob_order) else None
        return self._knobs.get(p)

    def knobs(self) -> Dict[str, _n.Knob]:
        self._check("knobs")
        return dict(self._knobs)

    def allKnobs(self) -> List[_n.Knob]:
        self._check("allKnobs")
        return [self._knobs[n] for n in self._knob_order]

    def addKnob(self, knob: _n.Knob) -> None:
        self._check("addKnob")
        if not isinstance(knob, _n.Knob):
            raise TypeError("addKnob needs a Knob")
        if knob._owner is not None:
            raise ValueError(f"knob {knob._name} already belongs to a node")
        if knob._name in self._knobs:
            raise ValueError(f"{self.name()} already has a knob named {knob._name}")
        self._attach(knob)

    def removeKnob(self, knob: _n.Knob) -> None:
        self._check("removeKnob")
        if self._knobs.get(knob._name) is not knob:
            raise ValueError(f"knob {knob._name} is not on {self.name()}")
        del self._knobs[knob._name]
        self._knob_order.remove(knob._name)
        knob._owner = None

    def __getitem__(self, name: str) -> _n.Knob:
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
        changed = self._inputs[i] is not node
        self._inputs[i] = node
        if changed:
            _input_changed(self)
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
        return int(knob._value) if knob is not None else _n._root._knobs["first_frame"]._value

    def lastFrame(self) -> int:
        self._check("lastFrame")
        knob = self._knobs.get("last") or self._knobs.get("last_frame")
        return int(knob._value) if knob is not None else _n._root._knobs["last_frame"]._value

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
        _n._context.append(self)
        return self

    def end(self) -> None:
        self._check("end")
        if len(_n._context) <= 1 or _n._context[-1] is not self:
            raise RuntimeError("Group.end() without a matching begin()")
        _n._context.pop()

    def __enter__(self) -> Group:
        return self.begin()

    def __exit__(self, type: Any, value: Any, traceback: Any) -> None:
        self.end()

    def nodes(self) -> List[Node]:
        self._check("nodes")
        return [n for n in self._children if not n._deleted]

    def node(self, s: str) -> Optional[Node]:
        self._check("node")
        return _n._find(self, s)

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
        _n._main_only("Undo.disable")
        _undo_state["disabled"] += 1

    @classmethod
    def enable(cls) -> None:
        _n._main_only("Undo.enable")
        if _undo_state["disabled"] <= 0:
            raise RuntimeError("Undo.enable() without disable()")
        _undo_state["disabled"] -= 1

    @classmethod
    def disabled(cls) -> bool:
        _n._main_only("Undo.disabled")
        return _undo_state["disabled"] > 0


_modified = [False]
_undo_state = {"disabled": 0}
_undo_steps: List[str] = []


def _changed(knob: _n.Knob) -> None:
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


def _input_changed(owner: Any) -> None:
    """An input of ``owner`` changed: with its panel open, its ``knobChanged`` runs with a dummy
    knob named ``inputChange`` (Foundry, Python API reference, ``nuke.addKnobChanged``: "This
    is also called with dummy knobs when the control panel is opened or when the inputs to the
    node changes")."""
    code = owner._knobs["knobChanged"]._value if "knobChanged" in owner._knobs else ""
    if not code or not getattr(owner, "_panel_open", False) or owner in _in_knob_changed:
        return
    _in_knob_changed.append(owner)
    try:
        _n._run_script(str(code), owner, _n.Knob("inputChange"))
    finally:
        _in_knob_changed.remove(owner)


def _flush_knob_changed() -> None:
    """Run the knobChanged scripts the last setValue asked for (after the value is stored)."""
    while _pending_knob_changed:
        owner, knob = _pending_knob_changed.pop(0)
        if owner._deleted or owner in _in_knob_changed:
            continue
        _in_knob_changed.append(owner)
        try:
            _n._run_script(str(owner._knobs["knobChanged"]._value), owner, knob)
        finally:
            _in_knob_changed.remove(owner)


