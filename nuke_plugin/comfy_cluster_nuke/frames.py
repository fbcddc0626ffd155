"""The frame files of a version folder: placing a downloaded frame, listing what is there,
carrying a previous run's frames forward, and each run's own working folders.

A version folder holds ``<node>_<frame>.<ext>``, or ``<node>_<view>_<frame>.<ext>`` in a
multi-view (stereo) script, which the node's Read reads as ``<node>_%V_####.<ext>``. One job is
a :data:`Unit`: ``(frame, view)``, view ``""`` in a single-view script. Its files are moved, replaced and removed with
the library's lock-tolerant helpers (:mod:`comfy_cluster.localfiles`): on Windows a frame that
Nuke's Viewer or an antivirus holds for a moment is retried, not failed. Farm tasks sharing one
version each work in folders of their own (:func:`working_dir`). No ``nuke`` here: any thread.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from comfy_cluster import localfiles
from comfy_cluster.errors import LocalFileError

__all__ = [
    "IMAGE_EXTENSIONS", "Unit", "unit_text", "frame_name", "read_pattern", "place", "present", "pick_image", "inside",
    "working_dir", "carry_forward",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".exr", ".bmp", ".gif")
Unit = Tuple[int, str]  # one job: (frame, view); view "" in a single-view script


def unit_text(unit: Unit) -> str:
    """``"12"``, or ``"12 (left)"`` in a multi-view script: a job as the artist reads it."""
    return f"{unit[0]} ({unit[1]})" if unit[1] else str(unit[0])


def frame_name(node_name: str, frame: int, ext: str, view: str = "") -> str:
    """``<node>_<frame, 4 digits>.<ext>`` (``<node>_<view>_<frame>.<ext>`` with a view): what
    the result Read's :func:`read_pattern` reads."""
    return f"{node_name}_{view}_{frame:04d}{ext}" if view else f"{node_name}_{frame:04d}{ext}"


def read_pattern(node_name: str, ext: str, views: bool = False) -> str:
    """``<node>_####.<ext>``, or ``<node>_%V_####.<ext>`` in a multi-view script."""
    return f"{node_name}_%V_####{ext}" if views else f"{node_name}_####{ext}"


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` is in ``folder`` (after resolving links)."""
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # different drives on Windows
        return False


def _link_or_copy(source: str, target: str) -> None:
    localfiles.remove(target)
    try:
        os.link(source, target)
    except OSError:
        try:
            shutil.copyfile(source, target)
        except OSError as exc:
            raise LocalFileError(f"cannot copy {source} to {target}: {exc.strerror or exc}", path=target) from None


def place(source: str, target: str, owned: bool) -> None:
    """Put the frame ``source`` at ``target``: moved when it is our download (``owned``), else
    (a file on shared storage that ComfyUI wrote) hard-linked or copied, ComfyUI's left alone.
    Raises :class:`~comfy_cluster.errors.LocalFileError` naming the file."""
    if owned:
        localfiles.replace(source, target)
    else:
        _link_or_copy(source, target)


def present(folder: str, node_name: str, ext: str, view: str = "") -> List[int]:
    """Frame numbers of ``<node>_NNNN<ext>`` (``<node>_<view>_NNNN<ext>``) in ``folder`` (a
    re-run completes a version)."""
    prefix = re.escape(node_name) + "_" + (re.escape(view) + "_" if view else "")
    pattern = re.compile(prefix + r"(\d+)" + re.escape(ext) + "$")
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


def working_dir(version_dir: str, prefix: str) -> str:
    """A new folder of this run's own in the version folder (never another task's); OSError
    when it cannot be made."""
    return tempfile.mkdtemp(prefix=prefix, dir=version_dir)


def carry_forward(previous: str, version_dir: str, node_name: str, skip: Iterable[int], views: Sequence[str] = ()) -> List[int]:
    """Link (else copy) the frames of version folder ``previous`` into ``version_dir``, except
    ``skip``: a "Current frame" run then holds the last full run plus its new frame, and the
    Read, pointed at it, keeps showing the whole run (not the new frame held over the range).
    The previous version is left as it was. In a multi-view script every view's frames are
    carried. Returns the frames carried."""
    if not previous or not os.path.isdir(previous) or os.path.realpath(previous) == os.path.realpath(version_dir):
        return []
    skipped = set(skip)
    carried: List[int] = []
    for ext in sorted({os.path.splitext(n)[1].lower() for n in os.listdir(previous)} & set(IMAGE_EXTENSIONS)):
        for view in views or ("",):
            for frame in present(previous, node_name, ext, view):
                if frame in skipped:
                    continue
                name = frame_name(node_name, frame, ext, view)
                _link_or_copy(os.path.join(previous, name), os.path.join(version_dir, name))
                carried.append(frame)
    return sorted(set(carried))
