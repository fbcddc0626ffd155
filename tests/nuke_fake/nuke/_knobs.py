"""Part of the fake ``nuke`` (see its ``__init__``): knobs, and the hook that runs knobChanged after a setValue."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import nuke as _n

# --- nodes ------------------------------------------------------------------------------------


class Knob:
    """Base of every knob: a name, a label, flags, and the node that owns it."""

    _class_name = "Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        _n._main_only(f"{type(self).__name__}()")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(self).__name__}: the name must be a non-empty string")
        self._name = name
        self._label = label if label is not None else name
        self._flags = 0
        self._tooltip = ""
        self._enabled = True
        self._owner: Optional[_n.Node] = None
        self._value: Any = None

    def _check(self, what: str) -> None:
        _n._main_only(f"{type(self).__name__}.{what}")
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
            self._flags &= ~_n.INVISIBLE
        else:
            self._flags |= _n.INVISIBLE

    def visible(self) -> bool:
        self._check("visible")
        return not self._flags & _n.INVISIBLE

    def setEnabled(self, enabled: bool) -> None:
        self._check("setEnabled")
        self._enabled = bool(enabled)

    def enabled(self) -> bool:
        self._check("enabled")
        return self._enabled

    def node(self) -> _n.Node:
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
        _n._changed(self)
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
        _n._changed(self)
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
        _n._changed(self)
        self._value = float(_require_number(self, val))
        return True

    def value(self, *args: Any) -> Any:
        self._check("value")
        return self._value


INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def _require_int32(knob: Knob, val: Any) -> int:
    number = int(_require_number(knob, val))
    if not INT_MIN <= number <= INT_MAX:
        # Nuke's Int_Knob holds a C int (NDK Int_knob: ``int*``): Python's conversion of a
        # larger number fails rather than store it.
        raise OverflowError(f"{knob._class_name}.setValue(): {number} does not fit in a 32-bit int")
    return number


class Int_Knob(Array_Knob):
    """A 32-bit integer: ``setValue`` truncates floats, refuses text and refuses values outside
    a C ``int`` (Foundry NDK reference, ``Int_knob(Knob_Callback, int*, ...)``: the knob stores
    an ``int``), as the seeds of exported workflows (up to 2**64-1) would need."""

    _class_name = "Int_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._value = 0

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        number = _require_int32(self, val)
        _n._changed(self)
        self._value = number
        return True

    def setValueAt(self, val: Any, time: float, index: int = 0, view: Optional[str] = None) -> bool:
        _require_int32(self, val)
        return super().setValueAt(val, time, index, view)

    def value(self) -> int:
        self._check("value")
        return int(self._value)

    def getValue(self) -> float:
        self._check("getValue")
        return float(self._value)


class Double_Knob(Array_Knob):
    _class_name = "Double_Knob"


class AColor_Knob(Array_Knob):
    """An RGBA colour (a Constant's ``color``): ``setValue(v)`` sets all four, ``setValue(v, i)``
    one, ``setValue([r, g, b, a])`` each; ``value()`` is one float when all four are equal,
    else the list (Foundry Python reference, ``nuke.AColor_Knob``/``Array_Knob.value``)."""

    _class_name = "AColor_Knob"

    def __init__(self, name: str, label: Optional[str] = None, *args: Any) -> None:
        super().__init__(name, label)
        self._values = [0.0, 0.0, 0.0, 0.0]
        self._touched = False  # never set: the fake's Write renders its test pattern

    def setValue(self, val: Any, *args: Any) -> bool:
        self._check("setValue")
        _n._changed(self)
        if isinstance(val, (list, tuple)):
            if len(val) != 4:
                raise ValueError(f"{self._name}: expected 4 values, got {len(val)}")
            self._values = [float(_require_number(self, v)) for v in val]
        elif args:
            self._values[int(args[0])] = float(_require_number(self, val))
        else:
            self._values = [float(_require_number(self, val))] * 4
        self._touched = True
        self._value = self._values[0]
        return True

    def value(self, *args: Any) -> Any:
        self._check("value")
        if args:
            return self._values[int(args[0])]
        return self._values[0] if len(set(self._values)) == 1 else list(self._values)


class Boolean_Knob(Array_Knob):
    _class_name = "Boolean_Knob"

    def __init__(self, name: str, label: Optional[str] = None, value: bool = False) -> None:
        super().__init__(name, label)
        self._value = bool(value)

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _n._changed(self)
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
        _n._changed(self)
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
        _n._changed(self)
        self._items = [str(i) for i in items]
        if self._value >= len(self._items):
            self._value = 0

    def numValues(self) -> int:
        self._check("numValues")
        return len(self._items)

    def enumName(self, n: int) -> str:
        self._check("enumName")
        return self._items[n]


def _flush_after(method: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(method, "_flushes", False):  # wrapped already
        return method

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        _n._flush_knob_changed()
        return result

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    wrapper._flushes = True  # type: ignore[attr-defined]
    return wrapper


def _install_knob_changed_hooks() -> None:
    # The value is stored first, then knobChanged runs (it reads the new value). Run again by
    # each module that defines knob classes (_text_knobs): the wrapping happens once per method.
    pending = [Knob]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        for name in ("setValue", "setValues", "setValueAt"):
            if name in cls.__dict__:
                setattr(cls, name, _flush_after(cls.__dict__[name]))


_install_knob_changed_hooks()


