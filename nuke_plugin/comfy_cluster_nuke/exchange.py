"""How pixels travel between Nuke and ComfyUI: linear float EXR where the servers can, else PNG.

EXR (the default wherever it is possible): the inputs are written by Nuke as EXR (half float by
default, or 32-bit float), ``raw`` (the script's scene-linear values, no colorspace conversion),
with the input's channels; the workflow's LoadImage nodes that receive them become
ComfyUI-HQ-Image-Save ``LoadEXR`` nodes and its ``SaveImage`` nodes ``SaveEXR`` nodes, both with
``tonemap: linear``; results come back as EXR and the node's Read reads them raw. Values above
1 and below 0 survive the round trip. EXR is used when some server that can run the job has
``LoadEXR`` and ``SaveEXR``; the pool's capability routing then sends the jobs only there.

PNG: 8-bit files in the node's "file colorspace" (values outside 0-1 are clipped, the rest
quantised), for clusters without the pack or when the artist asks for it; the node says so.

Masks keep ComfyUI's polarity in both: ComfyUI's ``LoadImage`` and ``LoadImageMask(alpha)``
compute ``mask = 1 - alpha``, so a mask input is sent with its matte in R, G and B and
``1 - matte`` in alpha; every ``LoadImage``/``LoadImageMask`` channel then gives the matte (1
where the roto is). A converted loader's MASK goes through an ``InvertMask`` node, because
``LoadEXR`` gives the file's alpha as it is.

``SaveEXR`` reports no file to the client: each job gets its own ``filename_prefix`` folder
(``comfy_cluster/<token>/<node>``, ``version -1``), whose first file is
``<node>_00001_.exr``; :func:`expected_files` names them for the download.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from comfy_cluster import ComfyClusterError

__all__ = [
    "FORMATS", "AUTO", "EXR", "PNG", "EXR_NODES", "PNG_NOTE", "EXR_NOTE", "EXR_SRGB_NOTE", "exr_note", "AUTO_NOTE", "DATATYPES", "TONEMAPS",
    "Converted", "to_exr", "choose", "note_for",
]

AUTO, EXR, PNG = "auto", "exr", "png"
FORMATS = [AUTO, EXR, PNG]
DATATYPES = ["16 bit half", "32 bit float"]  # Nuke's Write ``datatype`` for exr
TONEMAPS = ["linear", "sRGB"]  # what the workflow works in (LoadEXR/SaveEXR ``tonemap``)
EXR_NODES = ("LoadEXR", "SaveEXR")
PNG_NOTE = "8-bit round trip: values outside 0-1 are clipped"
EXR_NOTE = "linear EXR round trip: values outside 0-1 kept"
EXR_SRGB_NOTE = "EXR, the workflow sees sRGB: values outside 0-1 are clipped"
AUTO_NOTE = "EXR where the servers have LoadEXR/SaveEXR (ComfyUI-HQ-Image-Save); else " + PNG_NOTE
_LOADERS = ("LoadImage", "LoadImageMask")
_SAVERS = ("SaveImage", "SaveEXR")


def note_for(choice: str) -> str:
    """What the node's face says before a run, for its "pixels" choice."""
    return {EXR: EXR_NOTE, PNG: PNG_NOTE}.get(choice, AUTO_NOTE)


def choose(pool: Any, workflow: Mapping[str, Any], loaders: Sequence[str], pixels: str) -> str:
    """:data:`EXR` or :data:`PNG` for a run with the ``pixels`` choice: EXR when asked or
    possible (a server that can run the job has LoadEXR/SaveEXR: capability routing then sends
    the jobs there). ``exr`` where no server can: ComfyClusterError naming each server's reason.
    ``pool`` is a :class:`~comfy_cluster.ServerPool` (its ``capabilities``)."""
    if pixels == PNG:
        return PNG
    able = pool.capabilities(to_exr(workflow, loaders, "probe").workflow)
    if any(why is None for why in able.values()):
        return EXR
    if pixels == EXR:
        why = "; ".join(f"{name}: {reason}" for name, reason in sorted(able.items())) or "no server online"
        raise ComfyClusterError(
            f"no server can run the workflow with LoadEXR and SaveEXR (ComfyUI-HQ-Image-Save) - {why}. Set 'pixels' to auto or png."
        )
    return PNG


def exr_note(tonemap: str) -> str:
    """What the node's face says of an EXR round trip in which the workflow sees ``tonemap``."""
    return EXR_SRGB_NOTE if tonemap == "sRGB" else EXR_NOTE


@dataclass(frozen=True)
class Converted:
    """A workflow made to exchange EXR: the workflow, and per saver the file it will write
    (``(subfolder, filename)`` in the output folder), in the workflow's order."""

    workflow: Dict[str, Any]
    outputs: Tuple[Tuple[str, str], ...]


def _safe(node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", node_id)


def _relink(workflow: Dict[str, Any], mapping: Mapping[Tuple[str, int], Tuple[str, int]]) -> None:
    """Point every link ``[node, slot]`` in ``mapping`` at its new source."""
    for spec in workflow.values():
        inputs = spec.get("inputs") if isinstance(spec, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name, value in list(inputs.items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                new = mapping.get((str(value[0]), value[1]))
                if new is not None:
                    inputs[name] = [new[0], new[1]]


def to_exr(workflow: Mapping[str, Any], loaders: Sequence[str], token: str, tonemap: str = "linear") -> Converted:
    """``workflow`` with the ``loaders`` (the node ids the node's inputs go to) reading EXR and
    every ``SaveImage``/``SaveEXR`` writing EXR under ``comfy_cluster/<token>/``.

    ``tonemap`` is what the workflow works in: ``linear`` (the script's values as they are,
    outside 0-1 too) or ``sRGB`` (the pack converts linear to sRGB on load, clipped to 0-1, and
    back on save: what image models expect)."""
    wf: Dict[str, Any] = copy.deepcopy(dict(workflow))
    mapping: Dict[Tuple[str, int], Tuple[str, int]] = {}
    inverts: Dict[str, Any] = {}
    for node_id in loaders:
        spec = wf.get(node_id)
        if not isinstance(spec, dict) or spec.get("class_type") not in _LOADERS:
            continue
        mask_slot = 1 if spec["class_type"] == "LoadImage" else 0  # LoadImageMask: MASK only
        meta = spec.get("_meta")
        wf[node_id] = {
            "class_type": "LoadEXR",
            "inputs": {"filepath": "", "tonemap": tonemap, "image_load_cap": 0, "skip_first_images": 0, "select_every_nth": 1},
        }
        if isinstance(meta, dict):
            wf[node_id]["_meta"] = meta
        invert_id = f"{node_id}_cc_mask"
        inverts[invert_id] = {"class_type": "InvertMask", "inputs": {"mask": [node_id, 1]}}
        mapping[(node_id, mask_slot)] = (invert_id, 0)
    _relink(wf, mapping)
    wf.update(inverts)
    outputs: List[Tuple[str, str]] = []
    folder = f"comfy_cluster/{token}"
    for node_id, spec in wf.items():
        if not isinstance(spec, dict) or spec.get("class_type") not in _SAVERS:
            continue
        found = spec.get("inputs")
        inputs: Dict[str, Any] = found if isinstance(found, dict) else {}
        # An artist's own SaveEXR keeps its tonemap; a converted SaveImage uses the node's.
        save_tonemap = inputs.get("tonemap", tonemap) if spec["class_type"] == "SaveEXR" else tonemap
        base = _safe(node_id)
        spec["class_type"] = "SaveEXR"
        spec["inputs"] = {
            "images": inputs.get("images"), "filename_prefix": f"{folder}/{base}", "tonemap": save_tonemap,
            "version": -1, "start_frame": 1, "frame_pad": 4, "save_workflow": "none",
        }
        outputs.append((folder, f"{base}_00001_.exr"))
    return Converted(wf, tuple(outputs))
