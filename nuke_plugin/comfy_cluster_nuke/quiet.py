"""Changing knobs the way a background run must: no undo step, the artist's modified flag kept.

Nuke records every knob change made from Python on its undo stack, so a run's own bookkeeping
(status line, last version, the result Read) would otherwise be undone by the artist's next
Ctrl+Z (Foundry, ``nuke.Undo``: "disable(): Prevent recording undos until matching enable()").
This module imports nothing of the package: every other module may use it. Main thread only.
"""

from __future__ import annotations

import contextlib
import html
import logging
from typing import Any, Iterator

import nuke

__all__ = ["no_undo", "quiet_set", "set_status", "set_pixels_note"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def no_undo(*, keep_modified: bool = True) -> Iterator[None]:
    """Inside: knob changes record no undo step; with ``keep_modified`` the script's modified
    flag is what it was before (a status line is no change to save)."""
    root = nuke.root()
    was_modified = root.modified()
    undo_was_disabled = bool(nuke.Undo.disabled())
    if not undo_was_disabled:
        nuke.Undo.disable()
    try:
        yield
    finally:
        if not undo_was_disabled:
            nuke.Undo.enable()
        if keep_modified and not was_modified:
            root.setModified(False)


def quiet_set(knob: nuke.Knob, value: Any) -> None:
    """Set a knob without an undo step and without marking the script modified."""
    with no_undo():
        knob.setValue(value)


def set_status(node: nuke.Node, text: str) -> None:
    """Show ``text`` on the node's status line, as plain text (Text_Knob renders HTML, so
    ComfyUI's ``<class 'torch...'>`` would vanish); no undo step, script not marked modified.
    Ignored when the node has been deleted."""
    try:
        quiet_set(node["status"], html.escape(text, quote=False))
    except ValueError:  # the user deleted the node while a run went on
        log.info("status of a deleted node: %s", text)


def set_pixels_note(node: nuke.Node, text: str) -> None:
    """Say on the node how its pixels travel (8-bit PNG or linear EXR: :mod:`.exchange`), as
    plain text, quietly; ignored when the node is gone or was made before the note existed."""
    try:
        knob = node.knob("pixels_note")
        if knob is not None:
            quiet_set(knob, html.escape(text, quote=False))
    except ValueError:  # the user deleted the node while a run went on
        log.info("pixels note of a deleted node: %s", text)
