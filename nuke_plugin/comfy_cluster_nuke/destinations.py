"""Where a node's results go: next to the script, per node, one version folder per run.

With an empty "output folder" knob the results go to
``<project directory or script folder>/comfyui/<script name>/<node name>_<node id>/vNNN/``:
visible to the farm and to other artists, never purged by the OS, and never shared by two
scripts or two nodes (every script's first node is ``ComfyUIClusterRun1``, hence the script
name and the node's own id). An explicit output folder gets the same version folders. Each run
makes a new ``vNNN`` folder (created atomically, so two sessions never take the same one); a
re-run of the failed frames writes into the version it completes.

The node id is a hidden knob, given at creation and kept through renames, moves into groups
and farm tasks (which open the script and never save it: an id that changed there would send
each task of one job to another folder). Only a copy pasted while its original is in the
script gets a new one, in the GUI, when Nuke creates it (the onCreate hook that
:mod:`.lifecycle` installs), so a pasted node never writes into the original's folders.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from typing import Optional, Set

import nuke

from .quiet import no_undo

__all__ = [
    "UNTITLED_ROOT", "UID_KNOB", "script_path", "project_dir", "evaluate_path", "node_uid", "find_node", "renew_uid_of_copy", "output_base",
    "version_folder", "new_version", "VERSION_RE",
]

# An unsaved script has no folder: its results go under the user's home, by node id.
UNTITLED_ROOT = os.path.join("~", "comfyui_renders", "untitled")
VERSION_RE = re.compile(r"^v(\d{3,})$")
UID_KNOB = "node_uid"  # the node's hidden id knob (nodes of marker 2 also have an unused "uid_owner")


def script_path() -> str:
    """The script's file ('' when it was never saved)."""
    value = nuke.root()["name"].value()
    return str(value).strip() if value else ""


def project_dir() -> str:
    """The script's project directory, evaluated ('' when unset); else the script's folder."""
    knob = nuke.root().knob("project_directory")
    text = ""
    if knob is not None and str(knob.value()).strip():
        evaluate = getattr(knob, "evaluate", None)
        text = str(evaluate() if callable(evaluate) else knob.value()).strip()
    if text:
        return os.path.normpath(os.path.expandvars(os.path.expanduser(text)))
    script = script_path()
    return os.path.dirname(os.path.abspath(script)) if script else ""


def evaluate_path(knob: nuke.Knob) -> str:
    """A file knob's path as Nuke would open it: Tcl evaluated, filename filters applied,
    relative to the project directory (else the script's folder); '' when empty."""
    raw = knob.value()
    if not str(raw).strip():
        return ""
    evaluate = getattr(knob, "evaluate", None)
    path = str(evaluate() if callable(evaluate) else raw).strip()
    path = str(nuke.filenameFilter(path))
    path = os.path.expandvars(os.path.expanduser(path))
    if not os.path.isabs(path):
        path = os.path.join(project_dir() or os.getcwd(), path)
    return os.path.normpath(path)


def node_uid(node: nuke.Node) -> str:
    """The node's id (8 hex digits), the same in the GUI and in every farm task (main thread).

    Renaming the node or moving it into a group keeps it; only a paste next to the original
    gives a new one (:func:`renew_uid_of_copy`). A node without an id (made before ids) gets
    one derived from the script and its name, so farm tasks, which never save, agree on it.
    """
    uid = str(node[UID_KNOB].value()).strip()
    if uid:
        return uid
    seed = f"{script_path()}|{node.fullName()}"
    uid = hashlib.sha1(seed.encode("utf-8")).hexdigest()[:8]
    if nuke.GUI:  # kept with the script from now on (saving it is the artist's choice)
        with no_undo(keep_modified=False):
            node[UID_KNOB].setValue(uid)
        nuke.root().setModified(True)
    return uid


def _all_ids(exclude: nuke.Node) -> Set[str]:
    ids: Set[str] = set()
    for other in nuke.allNodes(group=nuke.root(), recurseGroups=True):
        if other is exclude:
            continue
        knob = other.knob(UID_KNOB)
        if knob is not None:
            ids.add(str(knob.value()).strip())
    return ids


def find_node(uid: str) -> Optional[nuke.Node]:
    """The node of the script with id ``uid`` (in any group), or None (main thread)."""
    for other in nuke.allNodes(group=nuke.root(), recurseGroups=True):
        knob = other.knob(UID_KNOB)
        if knob is not None and str(knob.value()).strip() == uid:
            return other
    return None


def renew_uid_of_copy(node: nuke.Node) -> bool:
    """The onCreate hook (GUI only): a node whose id another node of the script already has is a
    copy (paste, duplicate) and gets an id of its own, so it never writes into the original's
    folders; the script is marked modified. A cut-and-paste (moving the node into a group) finds
    no other node with its id and keeps it. True when the id changed."""
    if not nuke.GUI:  # a farm task opens the script: ids never change there
        return False
    knob = node.knob(UID_KNOB)
    if knob is None:
        return False
    uid = str(knob.value()).strip()
    if not uid or uid not in _all_ids(node):
        return False
    with no_undo(keep_modified=False):  # part of the paste, which is the artist's undo step
        knob.setValue(uuid.uuid4().hex[:8])
    nuke.root().setModified(True)
    return True


def output_base(node: nuke.Node, home: Optional[str] = None) -> str:
    """The folder holding the node's version folders (main thread)."""
    explicit = evaluate_path(node["output_dir"])
    if explicit:
        return explicit
    folder = f"{node.name()}_{node_uid(node)}"
    script = script_path()
    if not script:
        return os.path.join(os.path.expanduser(home or UNTITLED_ROOT), folder)
    stem = os.path.splitext(os.path.basename(script))[0]
    return os.path.join(project_dir(), "comfyui", stem, folder)


def version_folder(base: str, reuse: str = "") -> str:
    """The version folder of a run: ``reuse`` (``v004``, or an absolute folder: farm chunks and
    re-runs of failed frames), created when missing, else a new one (:func:`new_version`)."""
    if reuse:
        path = os.path.join(base, reuse)
        os.makedirs(path, exist_ok=True)
        return path
    return new_version(base)


def new_version(base: str) -> str:
    """Create and return the next ``vNNN`` folder in ``base`` (never an existing one)."""
    os.makedirs(base, exist_ok=True)
    taken = [int(m.group(1)) for m in (VERSION_RE.match(n) for n in os.listdir(base)) if m]
    number = max(taken, default=0) + 1
    while True:
        path = os.path.join(base, f"v{number:03d}")
        try:
            os.mkdir(path)  # atomic: another session creating the same version makes us take the next
            return path
        except FileExistsError:
            number += 1
