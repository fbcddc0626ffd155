"""What a run does to its node, on Nuke's main thread (each called through :mod:`.mainthread`):
the progress bar, the bookkeeping knobs, the result Read, the failure dialog, and finding the
node again after it moved into a group."""

from __future__ import annotations

import nuke

from . import destinations
from . import node as node_mod

__all__ = ["new_progress_task", "record", "dialog", "alive", "update_read"]


def new_progress_task(title: str) -> nuke.ProgressTask:
    """The run's progress bar (it goes away when the last reference is dropped)."""
    return nuke.ProgressTask(title)


def record(node: nuke.Node, version: str, failed: str) -> None:
    """The run's version folder and failed frames, on the node (Re-run failed, Current frame)."""
    node_mod.quiet_set(node["last_version"], version)
    node_mod.quiet_set(node["failed_frames"], failed)


def dialog(node: nuke.Node, text: str) -> None:
    """A modal dialog only while the artist looks at the node (its panel open): otherwise the
    failure waits on the node's status line instead of popping up in the middle of other work.
    Without a GUI Nuke prints it."""
    try:
        looking = not nuke.GUI or node.shown()
    except ValueError:  # deleted meanwhile
        looking = False
    if looking:
        nuke.message(text)


def alive(node: nuke.Node, uid: str) -> nuke.Node:
    """``node``, or the node of the script that now has its id; ValueError when none has."""
    try:
        node.name()
        return node
    except ValueError:
        found = destinations.find_node(uid)
        if found is None:
            raise
        return found


def update_read(node: nuke.Node, pattern: str, first: int, last: int, colorspace: str, raw: bool) -> str:
    """Point the node's result Read at the run's frames; its full name."""
    return node_mod.update_read_node(node, pattern, first, last, colorspace, raw).fullName()
