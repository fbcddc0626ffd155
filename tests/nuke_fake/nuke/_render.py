"""Part of the fake ``nuke`` (see its ``__init__``): execute(): rendering a Write node."""

from __future__ import annotations

import os
import re
import struct
import zlib
from typing import List, Optional, Tuple, Union

import nuke as _n

def execute(nameOrNode: Union[_n.Node, str], start: int, end: int, incr: int = 1, views: Optional[List[str]] = None, continueOnError: bool = False) -> None:
    """Render a Write node: a small real PNG or EXR per frame, at the path its ``file`` knob gives.

    The pixels are the colour reaching the Write: a Constant's ``color`` (any other source, or a
    Constant whose colour was never set, gives a test pattern that changes per frame), through
    the Expression nodes on the way; written with the Write's ``channels``, as EXR (``datatype``
    half or float, values kept) or 8-bit PNG (converted to ``colorspace`` unless ``raw``,
    clipped to 0-1 and quantised, as Nuke's Write does).

    Strict like Nuke: a render inside a knob callback or inside another render fails; Nuke's
    event loop runs queued main-thread calls between frames; the Write's own callback knobs and
    the global before/after render callbacks run; every view is rendered unless ``views`` says
    otherwise; proxy mode renders at proxy size. What was rendered how is recorded.

    A Read upstream that cannot read its frame (:func:`_read_frame`: a missing file with
    ``on_error`` = error, Nuke's default) stops the render with Nuke's error naming the file,
    unless ``continueOnError`` (Foundry, Python API reference, ``nuke.execute(nameOrNode,
    start, end, incr, views, continueOnError=False)``): then that frame writes nothing and the
    others go on.
    """
    _n._main_only("execute")
    if _n._in_callback:
        raise _n._violation("nuke: execute() inside a knob callback: Nuke fails with 'I'm already executing something else'")
    if _n._executing[0]:
        raise _n._violation("nuke: execute() inside another execute(): Nuke fails with 'I'm already executing something else'")
    node = _n.toNode(nameOrNode) if isinstance(nameOrNode, str) else nameOrNode
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
    expressions = _upstream_expressions(node)
    if source is None:
        raise RuntimeError(f"{node.name()}: nothing is connected to input 0")
    pattern = str(node._knobs["file"]._value)
    if not pattern:
        raise RuntimeError(f"{node.name()}: no filename set")
    file_type = node["file_type"].value() or os.path.splitext(pattern)[1].lstrip(".").lower()
    channels = str(node["channels"].value())
    rendered_views = list(views) if views is not None else list(_n._views)
    callbacks_run: List[str] = []
    for knob_name in ("beforeRender", "afterRender"):
        if str(node._knobs[knob_name]._value).strip():
            callbacks_run.append(knob_name)
    callbacks_run += ["global beforeRender"] * len(_n._fire(_n.beforeRenders, node))
    _n._render_details.append(
        {
            "node": node.fullName(),
            "colorspace": str(node["colorspace"].value()),
            "channels": channels,
            "file_type": file_type,
            "raw": bool(node["raw"].value()),
            "proxy": bool(_n._root._knobs["proxy"]._value),
            "views": rendered_views,
            "callbacks": callbacks_run,
            "undo_disabled": _n._undo_state["disabled"] > 0,
        }
    )
    _n._renders.append((node.fullName(), start, end))
    _n._executing[0] = True
    try:
        for i, frame_number in enumerate(range(start, end + 1, incr)):
            if _n._render_cancel_after is not None and i >= _n._render_cancel_after:
                raise RuntimeError("Cancelled")
            if source._cls == "Read":
                try:
                    _read_frame(source, frame_number)
                except RuntimeError:
                    if continueOnError:
                        continue
                    raise
            # Every view is written to its own path only when the path says %V (or %v): Foundry,
            # Nuke User Guide, "Stereoscopic Scripts > Rendering Stereoscopic Images": %V in the
            # Write's file name is replaced by the view's name, %v by its initial; else each
            # view overwrites the one before.
            for view in rendered_views:
                path = _frame_path(pattern, frame_number, view)
                folder = os.path.dirname(path)
                if folder and not os.path.isdir(folder) and not node._knobs["create_directories"]._value:
                    raise RuntimeError(f"{node.name()}: Can't write {path}: No such file or directory")
                os.makedirs(folder or ".", exist_ok=True)
                view_index = list(_n._views).index(view) if view in _n._views else 0
                _write_frame(node, path, file_type, channels, _colour(source, expressions, frame_number, view_index))
            _pump_during_render()
            for hook in list(_n._render_frame_hooks):
                hook(node.fullName(), frame_number)
    finally:
        _n._executing[0] = False
    _n._fire(_n.afterRenders, node)


def _read_frame(read: _n.Node, frame: int, view: str = "") -> Tuple[str, str]:
    """What a Read node gives at ``frame``: ``("file", path)``, ``("black", "")`` or
    ``("checkerboard", "")``; raises RuntimeError (Nuke's "Read error") for a frame it cannot
    read when its ``on_error`` is ``error``.

    Foundry, Nuke Reference Guide, "Read": outside first-last the ``before``/``after`` knobs
    choose (default ``hold``: the nearest frame of the range is shown, so a Read of one frame
    shows it over the whole timeline); ``missing frames`` (``on_error``): error, black,
    checkerboard, or nearest frame.
    """
    pattern = str(read._knobs["file"]._value)
    first, last = int(read._knobs["first"]._value), int(read._knobs["last"]._value)
    wanted = frame
    if frame < first or frame > last:
        mode = str(read["before" if frame < first else "after"].value())
        if mode == "black":
            return ("black", "")
        span = last - first + 1
        if mode == "hold" or span <= 1:
            wanted = first if frame < first else last
        elif mode == "loop":
            wanted = first + (frame - first) % span
        else:  # bounce
            period = 2 * (span - 1)
            offset = (frame - first) % period
            wanted = first + (offset if offset < span else period - offset)
    view = view or (_n._views[0] if _n._views else "main")  # the Viewer shows the main view
    path = _frame_path(pattern, wanted, view)
    if pattern and os.path.isfile(path):
        return ("file", path)
    on_error = str(read["on_error"].value())
    if on_error == "black":
        return ("black", "")
    if on_error == "checkerboard":
        return ("checkerboard", "")
    if on_error == "nearest frame":
        for distance in range(1, last - first + 1):
            for candidate in (wanted - distance, wanted + distance):
                near = _frame_path(pattern, candidate, view)
                if first <= candidate <= last and os.path.isfile(near):
                    return ("file", near)
    raise RuntimeError(f"{read.fullName()}: Read error: {path}: No such file or directory")


def _pump_during_render() -> None:
    # Nuke keeps its event loop going while it renders: queued main-thread calls run here.
    while True:
        with _n._queue_cond:
            if not _n._queue:
                return
            item = _n._queue.popleft()
        _n._run_queued(item)


def _frame_path(pattern: str, frame: int, view: str = "") -> str:
    pattern = pattern.replace("%V", view).replace("%v", view[:1].lower())
    pattern = re.sub(r"#+", lambda m: f"{frame:0{len(m.group(0))}d}", pattern)
    return re.sub(r"%(0?\d*)d", lambda m: ("%" + m.group(1) + "d") % frame, pattern)


def _upstream_expressions(node: _n.Node) -> List[_n.Node]:
    """The Expression nodes between the Write and its source, upstream first."""
    out: List[_n.Node] = []
    current = node._inputs[0] if node._inputs else None
    seen = set()
    while current is not None and current._cls == "Expression" and id(current) not in seen and not current._deleted:
        seen.add(id(current))
        out.insert(0, current)
        current = current._inputs[0] if current._inputs else None
    return out


def _colour(source: _n.Node, expressions: List[_n.Node], frame: int, view_index: int = 0) -> Tuple[List[float], bool]:
    """``([r, g, b, a], encoded)``: the pixel reaching the Write; ``encoded`` for the test
    pattern (different per frame and per view, so each eye's files differ), whose 8-bit values
    are written as they are."""
    knob = source._knobs.get("color")
    if source._cls == "Constant" and isinstance(knob, _n.AColor_Knob) and knob._touched:
        rgba, encoded = list(knob._values), False
    else:
        rgba, encoded = [((frame * 37 + 101 * view_index) % 256) / 255.0, 64 / 255.0, 128 / 255.0, 1.0], True
    for expr in expressions:
        env = dict(zip("rgba", rgba))
        new = []
        for i in range(4):
            text = str(expr._knobs[f"expr{i}"]._value).strip()
            # Nuke expressions on r, g, b, a: the subset the plugin writes is Python arithmetic.
            new.append(float(eval(text, {"__builtins__": {}}, env)) if text else rgba[i])  # noqa: S307
        rgba = new
    return rgba, encoded


def _encode(value: float, colorspace: str) -> float:
    if colorspace in ("sRGB", "default", "Output - sRGB"):
        return value * 12.92 if value <= 0.0031308 else 1.055 * value ** (1 / 2.4) - 0.055
    if colorspace == "rec709":
        return value * 4.5 if value < 0.018 else 1.099 * value ** 0.45 - 0.099
    if colorspace == "Gamma2.2":
        return max(value, 0.0) ** (1 / 2.2)
    return value  # linear, ACES: the values as they are


def _write_frame(node: _n.Node, path: str, file_type: str, channels: str, colour: Tuple[List[float], bool]) -> None:
    rgba, encoded = colour
    names = {"rgb": "RGB", "rgba": "RGBA", "alpha": "A", "all": "RGBA"}.get(channels, "RGBA")
    if file_type == "exr":
        from comfy_cluster.testing.pixels import write_solid_exr

        values = {c: rgba["RGBA".index(c)] for c in names}
        write_solid_exr(path, 8, 8, values, half=str(node["datatype"].value()) != "32 bit float")
        return
    if file_type != "png":
        with open(path, "wb") as fh:
            fh.write(b"fake " + file_type.encode())
        return
    colorspace = str(node["colorspace"].value())
    raw = bool(node["raw"].value()) or encoded
    rgb = [v if raw else _encode(v, colorspace) for v in rgba[:3]]
    as_bytes = [max(0, min(255, int(round(v * 255.0)))) for v in rgb + [rgba[3]]]
    with open(path, "wb") as fh:
        fh.write(_png(8, 8, (as_bytes[0], as_bytes[1], as_bytes[2]), alpha=channels != "rgb", alpha_value=as_bytes[3]))


def _upstream_source(node: _n.Node) -> Optional[_n.Node]:
    """The node whose image reaches ``node``'s input 0 (through Dots, Inputs and Outputs)."""
    seen = set()
    current = node._inputs[0] if node._inputs else None
    while current is not None and id(current) not in seen and not current._deleted:
        seen.add(id(current))
        if current._cls in _n._SOURCE_CLASSES:
            return current
        if current._cls == "Input":
            group = current._parent
            number = int(current._knobs["number"]._value)
            if group is None or group is _n._root:
                return None
            current = group._inputs[number] if number < len(group._inputs) else None
        elif current._cls == "Switch":
            which = int(current._knobs["which"]._value)
            current = current._inputs[which] if which < len(current._inputs) else None
        elif isinstance(current, _n.Group):
            out = next((c for c in current._children if c._cls == "Output" and not c._deleted), None)
            current = out
        else:
            current = current._inputs[0] if current._inputs else None
    return None


def _png(width: int, height: int, rgb: Tuple[int, int, int], alpha: bool = False, alpha_value: int = 255) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixel = bytes(rgb) + (bytes([alpha_value]) if alpha else b"")
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


