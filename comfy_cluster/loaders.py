"""Loader nodes, and how a local file given as a job input reaches each kind on a server.

Image loaders (``LoadImage``, ``LoadImageMask`` and every node with an ``image`` input) take
the name of a file in the server's input folder: the pool uploads the file (``/upload/image``)
and puts the name it got into ``image``.

Path loaders take a path on the server instead. ComfyUI-HQ-Image-Save's ``LoadEXR`` reads
``filepath`` with OpenCV, relative to the server process's working folder. The pool uploads the
file the same way (``/upload/image`` stores an ``.exr`` as it is) and puts the uploaded file's
path into ``filepath``: the server's input folder, from ``GET /system_stats`` (``argv`` holds
``--input-directory`` when it was set, else ``--base-directory``/``input``, else ``input`` beside
``main.py``, as ComfyUI's ``folder_paths`` decides), joined with the name. Read on every upload,
so a server restarted with another folder is followed.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any, Dict, Mapping, Optional, Sequence

from .workflow import WorkflowInputError

__all__ = ["PATH_INPUTS", "input_for", "check_inputs", "input_directory", "server_path"]

#: class_type -> the input naming a path on the server (the others take an uploaded name).
PATH_INPUTS = {"LoadEXR": "filepath"}


def input_for(node: Mapping[str, Any]) -> Optional[str]:
    """The input that receives a job's file for this workflow node, or None when it has none."""
    ctype = node.get("class_type")
    if isinstance(ctype, str) and ctype in PATH_INPUTS:
        return PATH_INPUTS[ctype]
    if "image" in (node.get("inputs") or {}) or ctype == "LoadImage":
        return "image"
    return None


def check_inputs(workflow: Mapping[str, Any], inputs: Mapping[str, str]) -> Dict[str, str]:
    """``inputs`` (node id -> local file) checked against ``workflow``: every node exists and
    takes a file, every file exists; WorkflowInputError naming the first problem."""
    out: Dict[str, str] = {}
    for node_id, path in inputs.items():
        node_id = str(node_id)
        node = workflow.get(node_id)
        if not isinstance(node, Mapping):
            raise WorkflowInputError(f"inputs: node {node_id} is not in the workflow")
        if input_for(node) is None:
            raise WorkflowInputError(f"inputs: node {node_id} ({node.get('class_type')}) has no image input")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise WorkflowInputError(f"inputs: node {node_id}: file not found: {path}")
        out[node_id] = path
    return out


def _option(argv: Sequence[str], name: str) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return str(argv[i + 1])
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _join(folder: str, name: str) -> str:
    # Forward slashes work for OpenCV and os.path on Windows servers too; keep the folder's own
    # separator when it only has backslashes, so the path reads naturally in the server's log.
    sep = "\\" if "\\" in folder and "/" not in folder else "/"
    return folder.rstrip("/\\") + sep + name.replace("/", sep) if folder else name


def input_directory(system_stats: Mapping[str, Any]) -> str:
    """The server's input folder as its process sees it (may be relative to its working folder)."""
    system = system_stats.get("system") if isinstance(system_stats, Mapping) else None
    argv = system.get("argv") if isinstance(system, Mapping) else None
    args = [str(a) for a in argv] if isinstance(argv, list) else []
    explicit = _option(args, "--input-directory")
    if explicit:
        return explicit
    base = _option(args, "--base-directory")
    if base:
        return _join(base, "input")
    main = args[0] if args else ""
    folder = main.rsplit("/", 1)[0] if "/" in main else main.rsplit("\\", 1)[0] if "\\" in main else ""
    return _join(folder, "input") if folder else "input"


def server_path(folder: str, uploaded_name: str) -> str:
    """The path of an uploaded file (``sub/name.exr`` as ``/upload/image`` answered) on the server."""
    return _join(folder, posixpath.normpath(uploaded_name))
