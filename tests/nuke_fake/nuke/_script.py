"""Saving and opening scripts, copy and paste, for the fake ``nuke`` (re-exported by it).

What survives is what Nuke's .nk keeps: every knob's value as text or number, user knobs with
their class, label, flags and (pulldowns) items, animation keys, the nodes inside groups and
the connections. Nothing else: no Python object, no module state. Knob scripts (buttons,
``knobChanged``) are kept as text and run again after opening. The file here is JSON, not
Tcl: the format is not the point, what is kept is.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import nuke as _n

_clipboard: List[Dict[str, Any]] = []


def _builtin_names(cls: str) -> set:
    return {name for name, _ in _n._COMMON_KNOBS + _n._CLASS_KNOBS.get(cls, [])}


def _dump_knob(knob: Any, user: bool) -> Dict[str, Any]:
    data: Dict[str, Any] = {"name": knob._name, "type": type(knob).__name__, "user": user, "value": knob._value}
    if user:
        data.update(label=knob._label, flags=knob._flags, tooltip=knob._tooltip)
    if isinstance(knob, _n.Enumeration_Knob):
        data["items"] = list(knob._items)
    if isinstance(knob, _n.Array_Knob) and knob._keys:
        data["keys"] = [[t, v] for t, v in sorted(knob._keys.items())]
    return data


def _dump_node(node: Any) -> Dict[str, Any]:
    builtin = _builtin_names(node._cls)
    data: Dict[str, Any] = {
        "class": node._cls,
        "knobs": [_dump_knob(node._knobs[k], k not in builtin) for k in node._knob_order],
        "inputs": [None if i is None or i._deleted else i._knobs["name"]._value for i in node._inputs],
    }
    if isinstance(node, _n.Group) and not isinstance(node, _n.Root):
        data["children"] = [_dump_node(c) for c in node._children if not c._deleted]
    return data


def _make_knob(data: Dict[str, Any]) -> Any:
    cls = getattr(_n, data["type"])
    name, label = data["name"], data.get("label", data["name"])
    if issubclass(cls, _n.Enumeration_Knob):
        knob = cls(name, label, data.get("items", []))
    elif issubclass(cls, (_n.Script_Knob, _n.Text_Knob)):
        knob = cls(name, label, "")
    else:
        knob = cls(name, label)
    knob._flags = int(data.get("flags", 0))
    knob._tooltip = data.get("tooltip", "")
    return knob


def _load_node(data: Dict[str, Any], parent: Any) -> Any:
    node = _n._new_node(data["class"], parent)
    parent._children.append(node)
    for kd in data["knobs"]:
        knob: Any = node._knobs.get(kd["name"])
        if knob is None:
            knob = _make_knob(kd)
            node._attach(knob)
        if "items" in kd:
            knob._items = list(kd["items"])
        knob._value = kd["value"]
        if "keys" in kd:
            knob._keys = {float(t): float(v) for t, v in kd["keys"]}
    for child in data.get("children", []):
        _load_node(child, node)
    if data.get("children"):
        _connect(node, data["children"])
    return node


def _connect(group: Any, children: List[Dict[str, Any]]) -> None:
    by_name = {c._knobs["name"]._value: c for c in group._children if not c._deleted}
    live = [c for c in group._children if not c._deleted][-len(children):]
    for node, data in zip(live, children):
        node._inputs = [by_name.get(n) if n is not None else None for n in data["inputs"]]


def _fire_on_create(node: Any) -> None:
    # Nuke runs the node's own onCreate script (kept as text) and the global onCreate
    # callbacks for every node it loads or pastes.
    code = str(node._knobs["onCreate"]._value) if "onCreate" in node._knobs else ""
    if code.strip():
        _n._run_script(code, node, None)
    _n._fire(_n.onCreates, node)
    if isinstance(node, _n.Group):
        for child in node._children:
            _fire_on_create(child)


def scriptSave(filename: Optional[str] = None) -> bool:
    """Write the script (every node of the root) to ``filename`` (default: the script's name)."""
    _n._main_only("scriptSave")
    path = filename or str(_n._root._knobs["name"]._value)
    if not path:
        raise RuntimeError("scriptSave: the script has no name; give a file name")
    root_knobs = [_dump_knob(_n._root._knobs[k], False) for k in _n._root._knob_order if k != "name"]
    nodes = [_dump_node(c) for c in _n._root._children if not c._deleted]
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"root": root_knobs, "nodes": nodes}, fh)
    _n._root._knobs["name"]._value = path
    _n._modified[0] = False
    return True


def scriptOpen(filename: Optional[str] = None) -> None:
    """Close the current script (its onScriptClose callbacks run) and open ``filename``."""
    _n._main_only("scriptOpen")
    if not filename:
        raise RuntimeError("scriptOpen: no file name")
    with open(filename, encoding="utf-8") as fh:
        data = json.load(fh)
    _n._fire(_n.onScriptCloses, _n._root)
    _n._delete_all_for_close()
    root = _n._root
    for kd in data["root"]:
        knob = root._knobs.get(kd["name"])
        if knob is not None:
            knob._value = kd["value"]
    root._knobs["name"]._value = filename
    for nd in data["nodes"]:
        _load_node(nd, root)
    _connect(root, data["nodes"])
    for child in list(root._children):
        _fire_on_create(child)
    _n._modified[0] = False


def nodeCopy(s: str) -> None:
    """Copy the selected nodes of the current group (``%clipboard%`` or a file)."""
    _n._main_only("nodeCopy")
    chosen = [_dump_node(c) for c in _n._context[-1]._children if not c._deleted and c._selected]
    if s == "%clipboard%":
        _clipboard[:] = chosen
    else:
        with open(s, "w", encoding="utf-8") as fh:
            json.dump(chosen, fh)


def nodePaste(s: str) -> Optional[Any]:
    """Paste into the current group with new names (like Nuke: ``Name1`` -> ``Name2``); the
    pasted nodes become the selection; returns the last one."""
    _n._main_only("nodePaste")
    if s == "%clipboard%":
        chosen = json.loads(json.dumps(_clipboard))
    else:
        with open(s, encoding="utf-8") as fh:
            chosen = json.load(fh)
    group = _n._context[-1]
    for other in group._children:
        other._selected = False
    last = None
    for data in chosen:
        names = [k for k in data["knobs"] if k["name"] == "name"]
        base = _n.re.sub(r"\d+$", "", str(names[0]["value"])) if names else data["class"]
        names[0]["value"] = _n._unique_name(group, base)
        node = _load_node(data, group)
        node._inputs = []
        node._selected = True
        _fire_on_create(node)
        last = node
    return last
