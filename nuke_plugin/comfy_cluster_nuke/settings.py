"""Reading a "ComfyUI Cluster Run" node's knobs for one run (main thread only).

Everything a run needs is read once, on the main thread, into a frozen :class:`Settings`; the
worker thread never touches a knob. File knobs are evaluated the way Nuke evaluates a Read's
path (:func:`evaluate_path`): Tcl expressions, the studio's filename filters, and paths relative
to the script's project directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import nuke

from comfy_cluster import STRATEGIES, ComfyClusterError, load_workflow
from comfy_cluster.workflow import parse_node_input

from . import destinations, exchange
from . import node as node_mod
from . import params
from .destinations import evaluate_path

__all__ = ["pool_options", "RunError", "InputMap", "Settings", "read_settings", "evaluate_path", "default_strategy", "set_default_strategy"]


class RunError(ComfyClusterError):
    """A run could not start or some frames failed; ``str()`` is what the user is shown.

    ``errors`` maps frame numbers to the library's errors; ``paths`` holds the frames that
    did succeed (the Read node reads them).
    """

    def __init__(self, message: str, *, errors: Optional[Dict[int, BaseException]] = None, paths: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors: Dict[int, BaseException] = dict(errors or {})
        self.paths: List[str] = list(paths)


#: Extra keyword arguments for every ServerPool of the plugin (for example
#: ``{"server_lost_after": 5.0}``); set it from a studio's menu.py.
pool_options: Dict[str, Any] = {}

_default_strategy: Optional[str] = None


def set_default_strategy(name: Optional[str]) -> None:
    """The strategy for nodes whose ``strategy`` knob says ``default`` (None: the environment)."""
    global _default_strategy
    if name is not None and name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (valid: {', '.join(sorted(STRATEGIES))})")
    _default_strategy = name


def default_strategy() -> Optional[str]:
    """The servers panel's choice, or None (then ``NUKE_COMFYUI_STRATEGY`` or warm_models, the pool's default)."""
    return _default_strategy


@dataclass(frozen=True)
class InputMap:
    """One input of the node rendered per frame and sent to one LoadImage node."""

    number: int  # the group's input (0 plate, 1 mask, 2 reference)
    node_id: str  # the workflow's LoadImage node id (may contain ':' in a subgraph export)
    alpha: bool  # write rgba (a mask, or asked for) rather than rgb

    @property
    def is_mask(self) -> bool:
        """The mask input: sent with ComfyUI's polarity (:mod:`.exchange`)."""
        return self.number == 1


@dataclass(frozen=True)
class Settings:
    """Everything a run needs from the node, read once on the main thread."""

    node_name: str
    full_name: str
    workflow_path: str
    workflow: Dict[str, Any] = field(repr=False)
    inputs: Tuple[InputMap, ...]
    frame_input: Optional[str]
    frames: Tuple[int, ...]
    strategy: Optional[str]
    output_base: str  # the version folders go here
    reuse_version: str  # "" for a new version; a re-run of failed frames reuses the last one
    colorspace: str
    uid: str  # the node's id (destinations.node_uid)
    carry_from: str = ""  # "Current frame": the version whose other frames the new one keeps
    pixels: str = "auto"  # exchange.AUTO/EXR/PNG: how pixels travel (exchange)
    exr_datatype: str = "16 bit half"
    exr_tonemap: str = "linear"  # what the workflow works in over EXR (exchange.TONEMAPS)
    mask_channel: str = "alpha"  # the mask input's channel holding the matte
    views: Tuple[str, ...] = ()  # a stereo/multi-view script's views, each run; () for one view
    params: Dict[int, Dict[str, Any]] = field(default_factory=dict, repr=False)  # frame -> {"3.seed": 7}

    @property
    def first(self) -> int:
        """The first frame of the run."""
        return self.frames[0]

    @property
    def last(self) -> int:
        """The last frame of the run."""
        return self.frames[-1]

    @property
    def needs_render(self) -> bool:
        """Whether some input of the node is sent (and so rendered first)."""
        return bool(self.inputs)

    @property
    def load_image_node(self) -> Optional[str]:
        """The LoadImage node id the plate goes to (None when not sent)."""
        return self.inputs[0].node_id if self.inputs else None


def _inputs(node: nuke.Node, name: str, workflow: Dict[str, Any]) -> Tuple[InputMap, ...]:
    out: List[InputMap] = []
    for number, knob_name, label in node_mod.INPUT_KNOBS:
        knob = node.knob(knob_name)
        if knob is None:
            continue
        node_id = node_mod.chosen_load_image(node, knob_name)
        if node_id is None:
            continue
        spec = workflow.get(node_id)
        if not isinstance(spec, dict):
            raise RunError(f"{name}: the workflow has no node {node_id} for the {label}; pick its LoadImage node again.")
        if spec.get("class_type") not in node_mod.LOADER_TYPES:
            raise RunError(f"{name}: node {node_id} of the workflow is a {spec.get('class_type')}, not a LoadImage.")
        if node.input(number) is None:
            raise RunError(f"{name}: connect the {label} input, or set its LoadImage to {node_mod.NONE_CHOICE}.")
        alpha = number == 1 or (number == 0 and bool(node["send_alpha"].value()))
        out.append(InputMap(number, node_id, alpha))
    ids = [m.node_id for m in out]
    if len(set(ids)) != len(ids):
        raise RunError(f"{name}: two inputs go to the same LoadImage node; pick another one.")
    return tuple(out)


def _views() -> Tuple[str, ...]:
    """Every view of a multi-view script (each is rendered and run); () with one view."""
    views = tuple(str(v) for v in nuke.views())
    return views if len(views) > 1 else ()


def read_settings(
    node: nuke.Node, *, frames: Optional[Sequence[int]] = None, reuse_version: str = "", carry_from: str = ""
) -> Settings:
    """Read and check the knobs of ``node`` (main thread); raises :class:`RunError` with a
    message meant for the user. ``frames`` overrides the node's range (current frame, re-run)."""
    if not node_mod.is_run_node(node):
        raise RunError(f"{node.name()} is not a {node_mod.NODE_LABEL} node")
    name = node.name()
    from .migrate import migrate  # made by an older plugin: brought up to date, settings kept

    migrate(node)
    workflow_path = evaluate_path(node["workflow"])
    if not workflow_path:
        raise RunError(f"{name}: choose a workflow file (in ComfyUI: Workflow > Export (API)).")
    try:
        workflow = load_workflow(workflow_path)
    except ComfyClusterError as exc:
        raise RunError(f"{name}: {exc}") from None
    inputs = _inputs(node, name, workflow)

    frame_input = node["frame_input"].value().strip() or None
    if frame_input is not None:
        try:
            target, _ = parse_node_input(frame_input)
        except ComfyClusterError as exc:
            raise RunError(f"{name}: frame number to: {exc}") from None
        if target not in workflow:
            raise RunError(f"{name}: frame number to: the workflow has no node {target}.")

    if frames is None:
        first, last = int(node["first"].value()), int(node["last"].value())
        if last < first:
            raise RunError(f"{name}: the frame range {first}-{last} is empty.")
        frames = range(first, last + 1)
    chosen_frames = tuple(sorted(set(int(f) for f in frames)))
    if not chosen_frames:
        raise RunError(f"{name}: no frame to run.")

    try:  # before any GPU work: a wrong name used to surface only when the result was read back
        file_colorspace = node_mod.input_colorspace(node)
    except ValueError as exc:
        raise RunError(f"{name}: {exc}") from None

    strategy = str(node["strategy"].value())
    chosen = default_strategy() if strategy == node_mod.DEFAULT_STRATEGY else strategy
    try:
        values = params.values_per_frame(node, workflow, chosen_frames)
    except ValueError as exc:
        raise RunError(f"{name}: {exc}") from None
    return Settings(
        node_name=name,
        full_name=node.fullName(),
        workflow_path=workflow_path,
        workflow=workflow,
        inputs=inputs,
        frame_input=frame_input,
        frames=chosen_frames,
        strategy=chosen,
        output_base=destinations.output_base(node),
        reuse_version=reuse_version,
        carry_from=carry_from,
        colorspace=file_colorspace,
        uid=destinations.node_uid(node),
        pixels=node_mod.choice(node, "pixels", exchange.AUTO),
        exr_datatype=node_mod.choice(node, "exr_datatype", exchange.DATATYPES[0]),
        exr_tonemap=node_mod.choice(node, "exr_tonemap", exchange.TONEMAPS[0]),
        mask_channel=node_mod.choice(node, "mask_channel", "alpha"),
        views=_views(),
        params=values,
    )
