"""A live look at sampling: ComfyUI's binary preview frames shown by the node while it runs.

A sampler on the server sends a small preview image per step over the websocket (binary
frames: 4-byte event type, then for type 1 a 4-byte format, 1 JPEG or 2 PNG, and the image;
for type 4 a 4-byte length, JSON metadata naming ``image_type``, and the image; ComfyUI
``server.py``, ``send_image``/``send_image_with_metadata``). During an interactive run each
new preview (at most one per :data:`INTERVAL` seconds) is written into a working folder of the
run and the ``preview`` Read inside the node points at it; the node's *output* ``preview``
shows it in the Viewer. The run's end removes the files and empties the Read. Without a GUI
nothing is written (nobody looks).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import nuke

from . import mainthread
from .node import SWITCH
from .quiet import no_undo

__all__ = ["INTERVAL", "PREVIEW_READ", "decode", "Preview"]

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between two preview updates on the node
PREVIEW_READ = "preview"
_FORMATS = {1: "jpg", 2: "png"}
_MIME = {"image/jpeg": "jpg", "image/png": "png"}


def decode(frame: bytes) -> Optional[Tuple[str, bytes]]:
    """``(extension, image bytes)`` of a binary preview frame, None for any other frame."""
    if len(frame) < 8:
        return None
    (kind,) = struct.unpack(">I", frame[:4])
    if kind == 1:
        (fmt,) = struct.unpack(">I", frame[4:8])
        ext = _FORMATS.get(fmt)
        return (ext, frame[8:]) if ext else None
    if kind == 4:
        (length,) = struct.unpack(">I", frame[4:8])
        try:
            meta = json.loads(frame[8 : 8 + length].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        ext = _MIME.get(str(meta.get("image_type"))) if isinstance(meta, dict) else None
        return (ext, frame[8 + length :]) if ext else None
    return None


def _preview_read(node: nuke.Node) -> nuke.Node:
    """The node's ``preview`` Read (made on first use, on the output switch's input 2)."""
    assert isinstance(node, nuke.Group)
    read = node.node(PREVIEW_READ)
    if read is None:
        with no_undo(), node:
            read = nuke.nodes.Read()
            read.setName(PREVIEW_READ)
            switch = node.node(SWITCH)
            if switch is not None:
                switch.setInput(2, read)
    return read


def _point(node: nuke.Node, path: str) -> None:
    try:
        read = _preview_read(node)
        with no_undo():
            file_knob = read["file"]
            if path:
                assert isinstance(file_knob, nuke.File_Knob)
                file_knob.fromUserText(path)
                read["on_error"].setValue("black")
            else:
                file_knob.setValue("")
    except ValueError:  # the node was deleted while it ran
        log.info("preview of a deleted node: %s", path)


class Preview:
    """Writes a run's latest sampling preview and points the node's ``preview`` Read at it.
    :meth:`on_event` is the batch's ``on_event`` (the pool's callback thread)."""

    def __init__(self, node: nuke.Node, folder: str, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._node = node
        self._folder = folder
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._last = -INTERVAL
        self._written: List[str] = []
        self.count = 0  # previews written

    def on_event(self, event: Any) -> None:
        """A job event: a preview frame is written (throttled); every other event is ignored."""
        if getattr(event, "kind", None) != "preview" or not isinstance(event.data, (bytes, bytearray)):
            return
        decoded = decode(bytes(event.data))
        if decoded is None:
            return
        with self._lock:
            now = self._clock()
            if now - self._last < INTERVAL:
                return
            self._last = now
            self.count += 1
            ext, image = decoded
            # A new name per update: Nuke re-reads it without a reload of its cache.
            path = os.path.join(self._folder, f"{self._name}_preview_{self.count}.{ext}").replace("\\", "/")
            try:
                with open(path + ".part", "wb") as fh:
                    fh.write(image)
                os.replace(path + ".part", path)
            except OSError as exc:
                log.info("cannot write a preview into %s: %s", self._folder, exc)
                return
            self._written.append(path)
            # The Read may still be reading the one before: keep the last two.
            stale = self._written.pop(0) if len(self._written) > 2 else ""
        mainthread.post(_point, self._node, path)
        if stale:
            _remove_quietly(stale)

    def close(self) -> None:
        """The run ended: empty the Read, remove the files."""
        if self.count:
            mainthread.post(_point, self._node, "")
        shutil.rmtree(self._folder, ignore_errors=True)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
