"""The "ComfyUI Cluster Run" node: a Group built from Python, with its knobs.

Inside the group: three Inputs (``plate`` 0, ``mask`` 1, ``ref`` 2), the ``result`` Read that
reads the last run's frames, and a Switch (``show`` knob) choosing what the node outputs: the
result (default once there is one) or the plate passed through. The Read lives inside the
group, so renaming or copying the node never orphans it.

Knobs (tab "ComfyUI Cluster"): ``workflow``; ``load_image_node``/``mask_node``/``ref_node``
(the LoadImage node each input goes to; ids kept apart from labels in the hidden
``load_image_ids``, as subgraph ids such as ``75:12`` contain ``:``); ``send_alpha``;
``frame_input``; ``first``/``last``; ``strategy``; ``output_dir``; ``colorspace``; the
workflow parameters (:mod:`.params`); buttons Execute, Current frame, Re-run failed, Cancel;
``status``; ``show``; hidden ``node_uid`` (:mod:`.destinations`),
``last_version`` and ``failed_frames``.

Every function here is main-thread only.
"""

from __future__ import annotations

import json
from typing import Any, List, Optional, Tuple

import nuke

from comfy_cluster import STRATEGIES, ComfyClusterError, load_workflow

from . import colorspace, exchange
from .destinations import UID_KNOB, evaluate_path
from .quiet import no_undo, quiet_set, set_pixels_note, set_status

__all__ = [
    "NODE_LABEL", "MARKER_KNOB", "MARKER_VERSION", "KNOB_CHANGED_CMD", "new_knobs", "NONE_CHOICE", "DEFAULT_STRATEGY", "INPUT_KNOBS", "UID_KNOB",
    "create", "is_run_node", "knob_changed", "load_image_choices", "refresh_load_image_choices",
    "chosen_load_image", "choice", "set_pixels_note", "set_status", "LOADER_TYPES", "MASK_CHANNELS", "quiet_set", "update_read_node", "input_colorspace", "show_result",
]

NODE_LABEL = "ComfyUI Cluster Run"
MARKER_KNOB = "comfy_cluster_run"  # a hidden knob that marks our groups (and their version)
MARKER_VERSION = "3"  # the knobs of this version (1: before per-node folders; 2: before issue 19) (.migrate)
NONE_CHOICE = "(none)"
DEFAULT_STRATEGY = "default"
IDS_KNOB = "load_image_ids"
INPUT_NAMES = ("plate", "mask", "ref")
# (group input, enumeration knob, what the user calls it)
INPUT_KNOBS: Tuple[Tuple[int, str, str], ...] = ((0, "load_image_node", "plate"), (1, "mask_node", "mask"), (2, "ref_node", "reference"))
SHOW_CHOICES = ["result", "input", "preview"]  # preview: sampling as it runs (.preview)
_SWITCH_INPUT = {"input": 0, "result": 1, "preview": 2}
#: The workflow nodes an input can go to (LoadImageMask: the mask, with its channel).
LOADER_TYPES = ("LoadImage", "LoadImageMask")
MASK_CHANNELS = ["alpha", "red", "green", "blue"]
RESULT_READ = "result"
SWITCH = "show_switch"


def _cmd(module: str, call: str) -> str:
    # Run by Nuke in its shared __main__ namespace: __import__ binds no name there.
    return f'__import__("comfy_cluster_nuke.{module}").{module}.{call}'


_EXECUTE_CMD = _cmd("run", "execute(nuke.thisNode())")
_EXECUTE_FRAME_CMD = _cmd("run", "execute_current_frame(nuke.thisNode())")
_RERUN_CMD = _cmd("run", "rerun_failed(nuke.thisNode())")
_CANCEL_CMD = _cmd("run", "cancel(nuke.thisNode())")
# Kept in the .nk and run on every knob change: where the plugin is not installed (a render
# node, a vendor opening the script) it must do nothing rather than raise on every change.
# serverinfo.knob_changed runs knob_changed below, then asks the servers in the background.
KNOB_CHANGED_CMD = (
    "try:\n"
    "    _ccn = __import__('comfy_cluster_nuke.serverinfo').serverinfo\n"
    "except ImportError:\n"
    "    pass\n"
    "else:\n"
    "    _ccn.knob_changed(nuke.thisNode(), nuke.thisKnob())\n"
    "    del _ccn\n"
)


def _target_group() -> nuke.Group:
    """The group the user works in: the last node graph clicked, as Nuke's own menu commands do."""
    last_hit = getattr(nuke, "lastHitGroup", None)  # Nuke 10+; missing from the types-nuke stubs
    group = last_hit() if callable(last_hit) else None
    return group if isinstance(group, nuke.Group) else nuke.thisGroup()


def create(inpanel: bool = True) -> nuke.Group:
    """Create a "ComfyUI Cluster Run" node where the user works and return it."""
    with _target_group():
        try:
            upstream: Optional[nuke.Node] = nuke.selectedNode()
        except ValueError:  # nothing selected
            upstream = None
        group = nuke.createNode("Group", inpanel=False)
        assert isinstance(group, nuke.Group)
        group.setName("ComfyUIClusterRun1", uncollide=True)
        with group:
            inputs = []
            for name in INPUT_NAMES:
                inp = nuke.nodes.Input()
                inp.setName(name)
                inputs.append(inp)
            read = nuke.nodes.Read()
            read.setName(RESULT_READ)
            switch = nuke.nodes.Switch()
            switch.setName(SWITCH)
            switch.setInput(0, inputs[0])
            switch.setInput(1, read)
            switch["which"].setValue(0)  # no result yet: pass the plate through
            out = nuke.nodes.Output()
            out.setInput(0, switch)
        if upstream is not None and upstream is not group:
            # A Group has no input when created, so createNode could not connect it; do it now.
            group.setInput(0, upstream)
        for knob in new_knobs(group, upstream if upstream is not group else None):
            group.addKnob(knob)
        group["knobChanged"].setValue(KNOB_CHANGED_CMD)
    if inpanel and nuke.GUI:
        group.showControlPanel()
    return group


class _KnobSink:
    """Stands in for the node while a new node's knobs are made: collects them, in order."""

    def __init__(self) -> None:
        self.knobs: List[nuke.Knob] = []

    def addKnob(self, knob: nuke.Knob) -> None:
        self.knobs.append(knob)


def new_knobs(node: nuke.Group, upstream: Optional[nuke.Node] = None) -> List[nuke.Knob]:
    """The knobs a new node has, made for ``node`` but not added (creation, and :mod:`.migrate`)."""
    sink = _KnobSink()
    _add_knobs(sink, node, upstream)
    return sink.knobs


def _hidden(group: Any, name: str, value: str = "") -> None:
    knob = nuke.String_Knob(name, name)
    knob.setValue(value)
    knob.setFlag(nuke.INVISIBLE)
    group.addKnob(knob)


def _button(group: Any, name: str, label: str, command: str, newline: bool) -> None:
    knob = nuke.PyScript_Knob(name, label, command)
    if not newline:
        knob.clearFlag(nuke.STARTLINE)
    group.addKnob(knob)


def _add_knobs(group: Any, node: nuke.Group, upstream: Optional[nuke.Node] = None) -> None:
    import uuid

    # The frame range of the plate it is made on (a Read of 1001-1050 in a 1-100 script), else the script's.
    frames_of = upstream if upstream is not None else nuke.root()
    group.addKnob(nuke.Tab_Knob("comfy_cluster", "ComfyUI Cluster"))
    _hidden(group, MARKER_KNOB, MARKER_VERSION)
    _hidden(group, UID_KNOB, uuid.uuid4().hex[:8])
    _hidden(group, IDS_KNOB, json.dumps([None]))
    _hidden(group, "last_version")
    _hidden(group, "failed_frames")

    workflow = nuke.File_Knob("workflow", "workflow (API JSON)")
    workflow.setTooltip("A ComfyUI workflow saved with 'Export (API)'. Tcl expressions and project-relative paths work.")
    group.addKnob(workflow)
    for number, name, label in INPUT_KNOBS:
        knob = nuke.Enumeration_Knob(name, f"{label} goes to", [NONE_CHOICE])
        knob.setTooltip(f"The LoadImage node of the workflow that receives the node's {label} input, rendered per frame.")
        group.addKnob(knob)
    alpha = nuke.Boolean_Knob("send_alpha", "send the plate's alpha")
    alpha.setTooltip("Off: the plate is sent as RGB (LoadImage turns a missing or zero alpha into a full mask).")
    group.addKnob(alpha)
    matte = nuke.Enumeration_Knob("mask_channel", "mask matte in", MASK_CHANNELS)
    matte.setTooltip("The channel of the mask input holding the matte. It reaches ComfyUI as a mask that is 1 where the matte is 1 (LoadImage's MASK, LoadImageMask with any channel).")
    matte.clearFlag(nuke.STARTLINE)
    group.addKnob(matte)
    pixels = nuke.Enumeration_Knob("pixels", "pixels", exchange.FORMATS)
    pixels.setTooltip(
        "auto: linear float EXR when the servers have LoadEXR/SaveEXR (ComfyUI-HQ-Image-Save), else 8-bit PNG. "
        "exr: always EXR (fails where no server has them). png: 8-bit PNG (values outside 0-1 are clipped)."
    )
    group.addKnob(pixels)
    datatype = nuke.Enumeration_Knob("exr_datatype", "", exchange.DATATYPES)
    datatype.setTooltip("Precision of the EXR files sent to ComfyUI.")
    datatype.clearFlag(nuke.STARTLINE)
    group.addKnob(datatype)
    space = nuke.Enumeration_Knob("exr_tonemap", "workflow sees", exchange.TONEMAPS)
    space.setTooltip(
        "EXR only. linear: the script's values as they are (outside 0-1 kept); "
        "sRGB: converted to sRGB 0-1 on load and back to linear on save (what image models expect; values outside 0-1 clipped)."
    )
    space.clearFlag(nuke.STARTLINE)
    group.addKnob(space)
    group.addKnob(nuke.Text_Knob("pixels_note", "", exchange.note_for(exchange.AUTO)))

    frame_input = nuke.String_Knob("frame_input", "frame number to")
    frame_input.setTooltip("Optional NODE.INPUT that receives the frame number, for example 3.seed.")
    group.addKnob(frame_input)
    first = nuke.Int_Knob("first", "frame range")
    first.setValue(frames_of.firstFrame())
    group.addKnob(first)
    last = nuke.Int_Knob("last", "")
    last.setValue(frames_of.lastFrame())
    last.clearFlag(nuke.STARTLINE)
    group.addKnob(last)

    strategy = nuke.Enumeration_Knob("strategy", "strategy", [DEFAULT_STRATEGY] + sorted(STRATEGIES))
    strategy.setTooltip("How frames are spread over the servers. 'default': the servers panel's choice, else NUKE_COMFYUI_STRATEGY, else warm_models.")
    group.addKnob(strategy)
    output_dir = nuke.File_Knob("output_dir", "output folder")
    output_dir.setTooltip("Empty: <script folder>/comfyui/<script>/<node>_<id>/. Each run writes a new vNNN folder inside.")
    group.addKnob(output_dir)
    group.addKnob(colorspace.make_knob(colorspace.script_colorspaces(node)))
    extra = nuke.String_Knob("extra_params", "parameters as knobs")
    extra.setTooltip("Besides prompts and sampler settings, more NODE.INPUT entries to show as knobs (for example 6.text 3.cfg).")
    group.addKnob(extra)

    _button(group, "execute", "Execute", _EXECUTE_CMD, True)
    _button(group, "execute_frame", "Current frame", _EXECUTE_FRAME_CMD, False)
    _button(group, "rerun_failed", "Re-run failed", _RERUN_CMD, False)
    _button(group, "cancel", "Cancel", _CANCEL_CMD, False)
    group.addKnob(nuke.Text_Knob("status", "status", "idle"))
    show = nuke.Enumeration_Knob("show", "output", SHOW_CHOICES)
    show.setTooltip(
        "result: the frames ComfyUI made (a Read inside this node); input: the plate, passed through; "
        "preview: the latest sampling preview of a run going on."
    )
    show.setValue("input")  # nothing made yet; a run switches it to result
    group.addKnob(show)


def is_run_node(node: Optional[nuke.Node]) -> bool:
    """Whether ``node`` is a "ComfyUI Cluster Run" node."""
    return node is not None and node.knob(MARKER_KNOB) is not None


def knob_changed(node: nuke.Node, knob: Optional[nuke.Knob]) -> None:
    """The node's ``knobChanged``: a new workflow refreshes the choices and parameter knobs."""
    if knob is None:
        return
    name = knob.name()
    if name in ("workflow", "extra_params"):
        refresh_load_image_choices(node)
    elif name == "show":
        _apply_show(node)
    elif name == "pixels":
        set_pixels_note(node, exchange.note_for(str(knob.value())))
    elif name == "inputChange":  # a dummy knob: an input was connected or changed
        _follow_plate_range(node)


def _follow_plate_range(node: nuke.Node) -> None:
    """A plate connected to a node whose range the artist never set (still the script's):
    the range becomes the plate's, as when the node is made on a selected plate."""
    plate = node.input(0)
    first, last = node.knob("first"), node.knob("last")
    if plate is None or first is None or last is None:
        return
    root = nuke.root()
    if (int(first.value()), int(last.value())) == (root.firstFrame(), root.lastFrame()):
        first.setValue(plate.firstFrame())
        last.setValue(plate.lastFrame())


def load_image_choices(workflow_path: str) -> Tuple[List[str], List[Optional[str]], Optional[str]]:
    """``(labels, ids, error)`` for a workflow file: labels ``"Plate (node 75:12)"`` and, at the
    same index, the node id ``"75:12"``; index 0 is ``(none)``."""
    labels: List[str] = [NONE_CHOICE]
    ids: List[Optional[str]] = [None]
    if not workflow_path:
        return labels, ids, None
    try:
        workflow = load_workflow(workflow_path)
    except ComfyClusterError as exc:
        return labels, ids, str(exc)
    for node_id, spec in workflow.items():
        if spec.get("class_type") in LOADER_TYPES:
            meta = spec.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) else None
            labels.append(f"{title or spec.get('class_type')} (node {node_id})")
            ids.append(str(node_id))
    return labels, ids, None


def _ids(node: nuke.Node) -> List[Optional[str]]:
    try:
        ids = json.loads(str(node[IDS_KNOB].value()) or "[null]")
    except ValueError:
        return [None]
    return [i if isinstance(i, str) else None for i in ids] if isinstance(ids, list) else [None]


def chosen_load_image(node: nuke.Node, knob_name: str) -> Optional[str]:
    """The workflow node id chosen in ``knob_name`` (None for ``(none)``)."""
    knob = node[knob_name]
    assert isinstance(knob, nuke.Enumeration_Knob)
    index = int(knob.getValue())
    ids = _ids(node)
    return ids[index] if 0 <= index < len(ids) else None


def refresh_load_image_choices(node: nuke.Node) -> Optional[str]:
    """Fill the input choices from the workflow file; returns the problem with it, if any.

    Each input keeps its choice when the new workflow still has that node; otherwise the plate
    gets the first LoadImage node and the other inputs ``(none)``.
    """
    from . import params  # the parameter knobs: imported on first use (start-up stays fast)

    path = evaluate_path(node["workflow"])
    labels, ids, error = load_image_choices(path)
    previous = {name: chosen_load_image(node, name) for _, name, _ in INPUT_KNOBS}
    quiet_set(node[IDS_KNOB], json.dumps(ids))
    for number, name, _ in INPUT_KNOBS:
        knob = node[name]
        assert isinstance(knob, nuke.Enumeration_Knob)
        knob.setValues(labels)
        before = previous[name]
        if before is not None and before in ids:
            knob.setValue(ids.index(before))
        else:
            knob.setValue(1 if number == 0 and len(ids) > 1 else 0)
    if error:
        set_status(node, f"workflow: {error}")
    else:
        params.refresh_knobs(node, path)
    return error


def choice(node: nuke.Node, knob_name: str, default: str) -> str:
    """An enumeration knob's value, or ``default`` on a node made before the knob existed."""
    knob = node.knob(knob_name)
    return str(knob.value()) if knob is not None else default


def input_colorspace(node: nuke.Node) -> str:
    """The colorspace of the files exchanged with ComfyUI: the node's choice, or the script's
    8-bit default; ValueError when the script's OCIO config lacks it (:mod:`.colorspace`)."""
    return colorspace.resolve(node)


def _inner(node: nuke.Node, name: str) -> Optional[nuke.Node]:
    assert isinstance(node, nuke.Group)
    return node.node(name)


def _apply_show(node: nuke.Node) -> None:
    switch = _inner(node, SWITCH)
    if switch is not None:
        quiet_set(switch["which"], _SWITCH_INPUT.get(str(node["show"].value()), 0))


def show_result(node: nuke.Node) -> None:
    """Make the node output its result."""
    quiet_set(node["show"], "result")
    _apply_show(node)


def update_read_node(node: nuke.Node, pattern: str, first: int, last: int, colorspace: str, raw: bool = False) -> nuke.Node:
    """Point the ``result`` Read inside the node at ``pattern`` over first-last and output it.

    ``raw``: the files hold the script's linear values (EXR): no colorspace conversion.
    A failed frame (missing in the version) is a Read error, not a checkerboard, black or a
    held neighbour: a render through the node (``nuke -x``, the farm) stops on it instead of
    delivering a placeholder, and the Viewer names the missing file.
    """
    # A run's bookkeeping is no edit of the artist's: no undo step (Ctrl+Z after a run must not
    # revert the Read), but the script is modified (saving it keeps the result in view).
    with no_undo(keep_modified=False):
        assert isinstance(node, nuke.Group)
        read = _inner(node, RESULT_READ)
        if read is None:  # an artist deleted it: make it again
            with node:
                read = nuke.nodes.Read()
                read.setName(RESULT_READ)
                switch = _inner(node, SWITCH)
                if switch is not None:
                    switch.setInput(1, read)
        file_knob = read["file"]
        assert isinstance(file_knob, nuke.File_Knob)
        # One call sets the path and the frame range (first/last and origfirst/origlast).
        file_knob.fromUserText(f"{pattern} {first}-{last}")
        read["raw"].setValue(raw)
        if not raw:
            read["colorspace"].setValue(colorspace)
        read["on_error"].setValue("error")
        reload_knob = read.knob("reload")
        if isinstance(reload_knob, nuke.Script_Knob):
            reload_knob.execute()  # new files under the same name: drop Nuke's cached frames
    show_result(node)
    return read
