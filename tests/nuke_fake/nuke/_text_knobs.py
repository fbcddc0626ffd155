"""Part of the fake ``nuke`` (see its ``__init__``): the text knobs (strings, Tcl-evaluated
strings, file paths, Python and buttons, text lines, tabs)."""

from __future__ import annotations

import re
from typing import Any, Optional

import nuke as _n
from nuke._knobs import Int_Knob, Knob, _install_knob_changed_hooks, _require_str


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
        _n._changed(self)
        self._value = _require_str(self, val)


class EvalString_Knob(String_Knob):
    """``value()`` is the text as typed; ``evaluate()`` runs its Tcl (a subset, see :func:`_tcl`)."""

    _class_name = "EvalString_Knob"

    def evaluate(self, *args: Any) -> str:
        self._check("evaluate")
        return _n._tcl(str(self._value))


class File_Knob(EvalString_Knob):
    """A file path. ``fromUserText("path 1-10")`` sets the path and, on a Read, the range."""

    _class_name = "File_Knob"

    def __init__(self, name: str, label: Optional[str] = None) -> None:
        super().__init__(name, label, "")

    def getEvaluatedValue(self) -> str:
        self._check("getEvaluatedValue")
        return _n._tcl(str(self._value))

    def fromUserText(self, text: str) -> None:
        """Set the path (and on a Read its range) as if typed: one undo step, like any change
        of a knob made from Python (Foundry, Python API reference, ``nuke.Undo``: knob
        changes are recorded unless ``Undo.disable()`` is in force)."""
        self._check("fromUserText")
        text = _require_str(self, text).strip()
        _n._changed(self)
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
        _n._run_script(str(self._value), self._owner, self)


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
        _n._changed(self)
        self._value = _require_str(self, val)
        return True


class Tab_Knob(Knob):
    _class_name = "Tab_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._value = 0


_install_knob_changed_hooks()
