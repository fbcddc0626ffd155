"""Part of the fake ``nuke`` (see its ``__init__``): colorspace knobs as an OCIO config fills them.

What is modelled, and where it comes from:

* A colorspace knob (Read/Write ``colorspace``, the root's ``int8Lut``) is an Enumeration_Knob
  whose items come from the script's OCIO config, not a fixed list: they change with the
  config (Foundry, NDK reference, ``DD::Image::Colorspace_KnobI::configChanged``: "This will
  cause the knob to repopulate its Roles and Colorspace menus").
* Items carry their family as a cascading menu path (``ACES/ACES - ACEScg``); ``value()`` is
  the name without it, and ``setValue`` takes the name or the path (the knob has the
  ``STRIP_CASCADE_PREFIX`` flag). A Read/Write also lists ``default``, the root's choice for
  its file type.
* Roles are items too: ``nuke.getColorspaceList(knob)`` lists each as ``role<TAB>role (space)``,
  and ``setValue("scene_linear")`` works (Foundry, Python API reference,
  ``nuke.getColorspaceList``: "Get a list of all colorspaces listed in an enumeration knob";
  the tab-separated role entries are how public pipelines, e.g. AYON's Nuke integration, read
  them back).
* Configs name spaces differently: Nuke 14's ACES 1.2 config says ``ACES - ACEScg``, Nuke 16's
  built-in ACES studio config (OCIO v2) says ``ACEScg``; the 8-bit default (``int8Lut``) is a
  role (``matte_paint``) or a ``default (...)`` entry there, ``sRGB`` in nuke-default.
* Anything else is refused with ``ValueError``, as Nuke does for an unknown item.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import nuke as _n

# name -> (colorspaces with their family path, roles -> colorspace, the 8-bit default)
_CONFIGS: Dict[str, Dict[str, Any]] = {
    "nuke-default": {
        "spaces": ["linear", "sRGB", "rec709", "Gamma2.2", "Cineon", "raw"],
        "roles": {"scene_linear": "linear", "color_picking": "sRGB", "matte_paint": "sRGB", "texture_paint": "sRGB", "data": "raw"},
        "int8": "sRGB",
    },
    "aces_1.2": {  # Nuke 14 with the ACES 1.2 config
        "spaces": [
            "ACES/ACES - ACES2065-1", "ACES/ACES - ACEScg", "Utility/Utility - Raw", "Utility/Utility - Linear - sRGB",
            "Utility/Utility - sRGB - Texture", "Output/Output - sRGB", "Output/Output - Rec.709",
        ],
        "roles": {
            "scene_linear": "ACES - ACEScg", "matte_paint": "Utility - sRGB - Texture", "texture_paint": "Utility - sRGB - Texture",
            "color_picking": "Output - sRGB", "data": "Utility - Raw",
        },
        "int8": "matte_paint",
    },
    "aces_studio_2.1": {  # Nuke 16's built-in ACES studio config (OCIO v2 names)
        "spaces": [
            "ACES/ACES2065-1", "ACES/ACEScg", "Utility/Raw", "Utility/Linear Rec.709 (sRGB)", "Texture/sRGB Encoded Rec.709 (sRGB)",
            "Display/sRGB - Display",
        ],
        "roles": {
            "scene_linear": "ACEScg", "matte_paint": "sRGB Encoded Rec.709 (sRGB)", "texture_paint": "sRGB Encoded Rec.709 (sRGB)",
            "color_picking": "sRGB Encoded Rec.709 (sRGB)", "data": "Raw",
        },
        "int8": "default (matte_paint)",
    },
}
_config = ["nuke-default"]


def _current() -> Dict[str, Any]:
    return _CONFIGS[_config[0]]


def _names() -> List[str]:
    """Every name a colorspace knob accepts: spaces (without family) and roles."""
    config = _current()
    return [s.rsplit("/", 1)[-1] for s in config["spaces"]] + list(config["roles"])


def _set_config(name: str) -> None:
    """(fake only) The script's OCIO config: its colorspace knobs repopulate."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown fake OCIO config {name!r} (known: {', '.join(_CONFIGS)})")
    _config[0] = name
    root = _n._root
    knob = root._knobs.get("int8Lut")
    if knob is not None:
        knob._value = _current()["int8"]


class _ColorspaceKnob(_n.Enumeration_Knob):
    """A colorspace pulldown filled by the OCIO config (see the module's docstring)."""

    def __init__(self, name: str, label: Optional[str] = None, root: bool = False) -> None:
        super().__init__(name, label, [])
        self._root_knob = root
        self._value = _current()["int8"] if root else "default"
        self._flags |= _n.STRIP_CASCADE_PREFIX

    @property
    def _items(self) -> List[str]:
        config = _current()
        head = [f"default ({config['int8']})"] if self._root_knob else ["default"]
        roles = [f"{role}\t{role} ({space})" for role, space in config["roles"].items()]
        return head + list(config["spaces"]) + roles

    @_items.setter
    def _items(self, items: List[str]) -> None:  # a saved script's list: the config decides
        pass

    def _accepts(self, text: str) -> Optional[str]:
        if text == "default" and not self._root_knob:
            return text
        if self._root_knob and text == f"default ({_current()['int8']})":
            return text
        short = text.rsplit("/", 1)[-1]
        return short if short in _names() else None

    def value(self) -> str:
        self._check("value")
        return str(self._value)

    def getValue(self) -> float:
        self._check("getValue")
        items = [i.split("\t", 1)[0].rsplit("/", 1)[-1] for i in self._items]
        return float(items.index(self._value)) if self._value in items else 0.0

    def setValue(self, val: Any) -> bool:
        self._check("setValue")
        _n._changed(self)
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            items = self._items
            if not 0 <= int(val) < len(items):
                raise ValueError(f"Invalid index {val} for {self._name}")
            val = items[int(val)].split("\t", 1)[0]
        if not isinstance(val, str):
            raise TypeError(f"Enumeration_Knob.setValue() takes an item or an index, not {type(val).__name__}")
        accepted = self._accepts(val)
        if accepted is None:
            raise ValueError(f"Invalid value {val!r} for {self._name}: not a colorspace of the OCIO config {_config[0]}")
        self._value = accepted
        return True


_ColorspaceKnob.setValue = _n._flush_after(_ColorspaceKnob.setValue)  # type: ignore


def getColorspaceList(colorspaceKnob: _n.Knob) -> List[str]:
    """The colorspaces of a colorspace knob: names without their family path, roles as
    ``role<TAB>role (space)`` (Foundry, Python API reference, ``nuke.getColorspaceList``)."""
    _n._main_only("getColorspaceList")
    if not isinstance(colorspaceKnob, _n.Enumeration_Knob):
        raise TypeError("getColorspaceList needs a colorspace knob")
    return [i if "\t" in i else i.rsplit("/", 1)[-1] for i in colorspaceKnob._items]
