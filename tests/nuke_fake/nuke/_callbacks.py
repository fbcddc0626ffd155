"""Part of the fake ``nuke`` (see its ``__init__``): global callbacks (nuke.callbacks) and the Tcl that file knobs evaluate."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import nuke as _n

# Global callbacks, as nuke.callbacks keeps them: {nodeClass: [(call, args, kwargs)]}.
onCreates: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
onScriptCloses: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
beforeRenders: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
afterRenders: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}
filenameFilters: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]] = {}


def _add_callback(registry: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]], call: Callable[..., Any], args: Any, kwargs: Any, nodeClass: str) -> None:
    _n._main_only("add callback")
    registry.setdefault(nodeClass, []).append((call, _n._as_args(args), dict(kwargs or {})))


def _fire(registry: Dict[str, List[Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]]], node: Optional[_n.Node]) -> List[Any]:
    keys = ["*"] + ([node._cls] if node is not None else [])
    out = []
    for key in keys:
        for call, args, kwargs in list(registry.get(key, [])):
            if node is not None:
                _n._this.append((node, None))
            try:
                out.append(call(*args, **kwargs))
            finally:
                if node is not None:
                    _n._this.pop()
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



_PYTHON_CALL = re.compile(r"\[python\s+(?:-exec\s+)?\{(.*?)\}\s*\]", re.S)


def _tcl(text: str) -> str:
    """The Tcl in file paths a plugin meets: [value root.name], [file dirname ...], [file rootname
    [file tail ...]], [value root.project_directory], $env(NAME), and [python {EXPR}], which
    studios use in ``project_directory`` (Foundry, Nuke User Guide, "Expressions": the Tcl
    ``python`` command evaluates a Python expression in Nuke's ``__main__`` and gives its value
    as text). The Python runs first: its code may hold brackets of its own."""
    def value_of(path: str) -> str:
        node_name, _, knob_name = path.partition(".")
        node = _n._root if node_name == "root" else _n._find(_n._root, node_name)
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

    text = _PYTHON_CALL.sub(lambda m: str(eval(m.group(1), _n._script_globals())), text)
    text = re.sub(r"\$env\((\w+)\)", lambda m: os.environ.get(m.group(1), ""), text)
    return evaluate_brackets(text)


