"""Bringing a node made by an older comfy-cluster up to date, instead of asking the artist to
make it again (and lose its settings).

A node saved in a script keeps the knobs of the plugin that made it (its marker knob says which
version). :func:`migrate` gives it every knob a new node has and it lacks (with a new node's
values), turns the free-text "file colorspace" of marker 1-2 nodes into the pulldown (keeping the
name, which :mod:`.colorspace` then checks against the script's config), and replaces the saved
``knobChanged`` script by the current one (which does nothing where the plugin is missing).
Everything the artist set stays. No undo step (it is no edit of the artist's); the script is
marked modified, so saving keeps the update. Called when a run is set up (:mod:`.settings`).
Main thread only.
"""

from __future__ import annotations

import nuke

from . import colorspace
from . import node as node_mod
from .quiet import no_undo

__all__ = ["needs_migration", "migrate"]


def needs_migration(node: nuke.Node) -> bool:
    """Whether ``node`` was made by an older version of the plugin."""
    marker = node.knob(node_mod.MARKER_KNOB)
    return marker is not None and str(marker.value()) != node_mod.MARKER_VERSION


def migrate(node: nuke.Node) -> bool:
    """Update an older node in place; False when it is current already."""
    if not needs_migration(node):
        return False
    assert isinstance(node, nuke.Group)
    with no_undo(keep_modified=False):
        old_space = node.knob(colorspace.KNOB)
        chosen = ""
        if old_space is not None and not isinstance(old_space, nuke.Enumeration_Knob):
            chosen = str(old_space.value()).strip()  # free text of marker 1-2
            node.removeKnob(old_space)
        for knob in node_mod.new_knobs(node):
            if node.knob(knob.name()) is None:
                node.addKnob(knob)
        if chosen:
            pulldown = node[colorspace.KNOB]
            assert isinstance(pulldown, nuke.Enumeration_Knob)
            if chosen not in pulldown.values():  # kept, so the run names it rather than guess
                pulldown.setValues(list(pulldown.values()) + [chosen])
            pulldown.setValue(chosen)
        node["knobChanged"].setValue(node_mod.KNOB_CHANGED_CMD)
        node[node_mod.MARKER_KNOB].setValue(node_mod.MARKER_VERSION)
    nuke.root().setModified(True)
    return True
