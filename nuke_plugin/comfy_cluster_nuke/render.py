"""Rendering the node's inputs to image files for ComfyUI (main thread, one render at a time).

A temporary Write inside the group renders each used input for the frames of the run. Nothing
is left to the studio's defaults, which differ per show:

* EXR (:mod:`.exchange`): ``raw``, half or full float; PNG: the colorspace set explicitly (the
  node's "file colorspace"; the result Read uses the same);
* ``rgb`` unless the input is a mask or the plate's alpha is asked for: ComfyUI's LoadImage turns
  an alpha of 0 into a full mask;
* the mask through an Expression node: its matte in R, G, B and ``1 - matte`` in alpha, written
  raw, so ComfyUI's ``mask = 1 - alpha`` gives the matte;
* full resolution even in proxy mode: the script's proxy switch is turned off for the render
  and back on right after, inside one main-thread call (no undo step, modified flag kept).
  Decision (issue 19): Nuke offers no other way to render a Write at full size in proxy mode
  (``execute`` has no proxy argument; a Write in proxy mode writes its proxy file at proxy
  size), and ComfyUI must get the full-size plate; the Viewer may redraw once;
* every view of a stereo (or multi-view) script, each to its own file (``%V``), each sent as a
  job of its own; a single-view script's files carry no view name;
* a frame that fails (a plate frame missing upstream) fails alone, with Nuke's words naming
  the file; the other frames are rendered and run (``continueOnError``);
* the studio's Write callbacks (``onCreate``, ``beforeRender``...) do not run, the Write has
  none of its own, and nothing lands on the undo stack or marks the script modified.

Nuke runs queued main-thread calls while it renders, so a second run's render could start
inside the first one's (Nuke: "already executing"): :func:`render_inputs` serialises them with a
lock held by the calling worker thread, never by the main thread, and waits while
``nuke.executing()`` says Nuke renders something else (the artist's F7).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import nuke

from .settings import InputMap, RunError

__all__ = ["FileFormat", "render_inputs", "input_pattern", "input_file", "frame_file", "frame_segments", "WRITE_CALLBACK_KNOBS"]

WRITE_CALLBACK_KNOBS = ("beforeRender", "beforeFrameRender", "afterFrameRender", "afterRender")
# nuke.callbacks' registries of global callbacks that would fire for our temporary Write.
_GLOBAL_CALLBACKS = ("onCreates", "onUserCreates", "beforeRenders", "beforeFrameRenders", "afterFrameRenders", "afterRenders", "renderProgresses")
_render_lock = threading.Lock()


def input_pattern(folder: str, stem: str, number: int, ext: str = "png", views: bool = False) -> str:
    """``<folder>/<stem>_in<number>.####.<ext>`` with forward slashes (Nuke's file knobs);
    ``<stem>_in<number>_%V.####.<ext>`` with ``views``: every view to its own file.

    ``stem`` is the node's name and id: the files keep these names when uploaded, and two
    artists' ``ComfyUIClusterRun1`` must not send same-named plates to one server.
    """
    view = "_%V" if views else ""
    return os.path.join(folder, f"{stem}_in{number}{view}.####.{ext}").replace("\\", "/")


def input_file(folder: str, stem: str, number: int, frame: int, ext: str = "png", view: str = "") -> str:
    """The file :func:`input_pattern` gives for ``frame`` (and ``view``, with views)."""
    return frame_file(input_pattern(folder, stem, number, ext, bool(view)), frame, view)


def frame_segments(frames: Sequence[int]) -> List[Tuple[int, int]]:
    """``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]``: contiguous ranges for ``nuke.execute``."""
    out: List[Tuple[int, int]] = []
    for f in sorted(frames):
        if out and f == out[-1][1] + 1:
            out[-1] = (out[-1][0], f)
        else:
            out.append((f, f))
    return out


@contextlib.contextmanager
def _no_studio_callbacks() -> Iterator[None]:
    """Suspend the global callbacks registered for every node or for Write nodes."""
    saved: List[Tuple[Dict[str, list], str, list]] = []
    for attr in _GLOBAL_CALLBACKS:
        registry = getattr(nuke, attr, None)
        if not isinstance(registry, dict):
            continue
        for key in ("*", "Write"):
            if key in registry:
                saved.append((registry, key, registry.pop(key)))
    try:
        yield
    finally:
        for registry, key, value in saved:
            registry[key] = value


@contextlib.contextmanager
def _quiet_script() -> Iterator[None]:
    """No undo steps, full resolution, and the script's modified flag as it was."""
    root = nuke.root()
    was_modified = root.modified()
    undo_was_disabled = bool(nuke.Undo.disabled())
    if not undo_was_disabled:
        nuke.Undo.disable()
    proxy = root.knob("proxy")
    was_proxy = bool(proxy.value()) if proxy is not None else False
    try:
        if was_proxy and proxy is not None:
            proxy.setValue(False)
        yield
    finally:
        if was_proxy and proxy is not None:
            proxy.setValue(True)
        if not undo_was_disabled:
            nuke.Undo.enable()
        if not was_modified:
            root.setModified(False)


_MATTE = {"alpha": "a", "red": "r", "green": "g", "blue": "b"}


@dataclass(frozen=True)
class FileFormat:
    """How the input files are written: ``exr`` (raw, ``datatype``) or ``png`` (8-bit, in
    ``colorspace``); the mask's matte is read from ``mask_channel``."""

    kind: str
    colorspace: str
    datatype: str = "16 bit half"
    mask_channel: str = "alpha"


def _mask_polarity(source: nuke.Node, channel: str) -> nuke.Node:
    """The matte in R, G and B and ``1 - matte`` in alpha: ComfyUI's LoadImage and
    LoadImageMask(alpha) compute ``mask = 1 - alpha`` (see :mod:`.exchange`)."""
    matte = _MATTE.get(channel, "a")
    expr = nuke.nodes.Expression()
    expr.setInput(0, source)
    for i in range(3):
        expr[f"expr{i}"].setValue(matte)
    expr["expr3"].setValue(f"1-{matte}")
    return expr


def _execute(write: nuke.Node, pattern: str, frames: Sequence[int], views: List[str]) -> Dict[int, str]:
    """Render ``frames`` in ``views``; a frame that cannot render (a plate frame missing
    upstream) does not stop the others. Returns frame -> Nuke's error, which names the missing
    file: the frames that wrote nothing are rendered once more alone, without
    ``continueOnError``, to get it."""
    for first, last in frame_segments(frames):
        nuke.execute(write, first, last, 1, views, continueOnError=True)
    failed: Dict[int, str] = {}
    for frame in frames:
        paths = [frame_file(pattern, frame, v) for v in views]
        if all(os.path.isfile(p) for p in paths):
            continue
        try:
            nuke.execute(write, frame, frame, 1, views)
        except RuntimeError as exc:
            if "cancel" in str(exc).lower():
                raise
            failed[frame] = str(exc).strip() or f"no image for frame {frame}"
        else:
            if not all(os.path.isfile(p) for p in paths):
                failed[frame] = f"Nuke wrote no file for frame {frame}"
    return failed


def frame_file(pattern: str, frame: int, view: str = "") -> str:
    """The file of ``frame`` (and ``view`` for ``%V``/``%v``) in a ``####`` pattern."""
    pattern = pattern.replace("%V", view).replace("%v", view[:1].lower())
    return re.sub(r"#+", lambda m: f"{frame:0{len(m.group(0))}d}", pattern)


def _render_on_main(
    node: nuke.Node, jobs: Sequence[Tuple[InputMap, str]], frames: Sequence[int], fmt: FileFormat, views: Sequence[str]
) -> Optional[Dict[int, str]]:
    assert isinstance(node, nuke.Group)
    if nuke.executing():  # the artist's own render (F7) runs queued calls between its frames
        return None
    render_views = list(views) or nuke.views()[:1]
    failed: Dict[int, str] = {}
    with _quiet_script(), _no_studio_callbacks(), node:
        sources = {int(n["number"].value()): n for n in nuke.allNodes("Input")}
        for mapping, pattern in jobs:
            source = sources.get(mapping.number)
            if source is None:
                raise RunError(f"{node.name()}: its Input node {mapping.number} is missing")
            made: List[nuke.Node] = []
            try:
                if mapping.is_mask:
                    source = _mask_polarity(source, fmt.mask_channel)
                    made.append(source)
                write = nuke.nodes.Write()
                made.append(write)
                write.setInput(0, source)
                for name in WRITE_CALLBACK_KNOBS:
                    knob = write.knob(name)
                    if knob is not None:
                        knob.setValue("")
                write["file"].setValue(pattern)
                write["file_type"].setValue(fmt.kind)
                write["channels"].setValue("rgba" if mapping.alpha else "rgb")
                if fmt.kind == "exr":
                    write["datatype"].setValue(fmt.datatype)
                # Scene-linear values as they are (EXR), and a matte is data, not colour.
                raw = fmt.kind == "exr" or mapping.is_mask
                write["raw"].setValue(raw)
                if not raw:
                    try:
                        write["colorspace"].setValue(fmt.colorspace)
                    except ValueError:
                        raise RunError(
                            f"{node.name()}: colorspace {fmt.colorspace!r} is not one of this script's; set 'file colorspace'"
                        ) from None
                for frame, error in _execute(write, pattern, frames, render_views).items():
                    failed.setdefault(frame, error)
            finally:
                for made_node in reversed(made):
                    nuke.delete(made_node)
    return failed


def render_inputs(
    node: nuke.Node,
    jobs: Sequence[Tuple[InputMap, str]],
    frames: Sequence[int],
    fmt: FileFormat,
    busy: Optional[Callable[[], bool]] = None,
    views: Sequence[str] = (),
) -> Dict[int, str]:
    """Render each ``(input, pattern)`` for ``frames`` in every one of ``views`` (the patterns
    then hold ``%V``; none: the main view); any thread but Nuke's main thread. One render at a
    time. Returns the frames that could not be rendered (in some view), with Nuke's reason.

    While Nuke renders something else (the artist's F7, which runs queued main-thread calls
    between its frames: a render started there fails with "already executing") it waits:
    ``busy()`` is called each time, waits a little and returns True to give up (a cancel).
    """
    from . import mainthread

    with _render_lock:
        while True:
            failed = mainthread.call(_render_on_main, node, jobs, frames, fmt, views)
            if failed is not None:
                return dict(failed)
            if busy is None or busy():
                raise RunError(f"{node.name()}: Nuke is rendering; run it again when the render is over")
