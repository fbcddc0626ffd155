"""Naming and finding a run's result files in its version folder (pure; any thread).

A single-view script's frames are ``<node>_<frame>.<ext>``; a multi-view (stereo) script's are
``<node>_<view>_<frame>.<ext>``, which the node's Read reads as ``<node>_%V_####.<ext>``. One
job is a :data:`Unit`: ``(frame, view)``, view ``""`` in a single-view script.
"""

from __future__ import annotations

import os
import re
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ["Unit", "IMAGE_EXTENSIONS", "unit_text", "result_name", "frames_present", "pick_image", "inside"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr", ".bmp", ".gif")

Unit = Tuple[int, str]  # one job: (frame, view); view "" in a single-view script


def unit_text(unit: Unit) -> str:
    """``"12"``, or ``"12 (left)"`` in a multi-view script: a job as the artist reads it."""
    return f"{unit[0]} ({unit[1]})" if unit[1] else str(unit[0])


def result_name(node_name: str, frame: str, view: str, ext: str) -> str:
    """``<node>_<frame><ext>``, or ``<node>_<view>_<frame><ext>`` in a multi-view script."""
    return f"{node_name}_{view}_{frame}{ext}" if view else f"{node_name}_{frame}{ext}"


def frames_present(folder: str, node_name: str, ext: str, views: Sequence[str] = ()) -> List[int]:
    """Frame numbers of ``<node>_NNNN<ext>`` (of the first view's ``<node>_<view>_NNNN<ext>``)
    in ``folder`` (a re-run completes a version)."""
    view = re.escape(views[0]) + "_" if views else ""
    pattern = re.compile(re.escape(node_name) + "_" + view + r"(\d+)" + re.escape(ext) + "$")
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in (pattern.match(n) for n in names) if m)


def pick_image(files: Sequence[Any]) -> Optional[int]:
    """Index of the frame's image: the first saved ("output") image, else the first image."""
    images = [i for i, f in enumerate(files) if os.path.splitext(f.filename)[1].lower() in IMAGE_EXTENSIONS]
    saved = [i for i in images if files[i].type == "output"]
    if saved:
        return saved[0]
    return images[0] if images else None


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is in ``folder`` (links resolved)."""
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # different drives on Windows
        return False
