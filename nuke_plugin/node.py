"""The "ComfyUI Cluster Run" node: a Group built from Python, with its knobs.

The group passes its input through (Input -> Output), so it sits in a comp like any node. Its
knobs, on the "ComfyUI Cluster" tab:

========================  ==================  ==============================================
knob                      class               meaning
========================  ==================  ==============================================
``workflow``              File_Knob           the workflow, ComfyUI "Save (API Format)" JSON
``load_image_node``       Enumeration_Knob    the LoadImage node receiving this node's input
                                              (``(none)``: the input is not used)
``frame_input``           String_Knob         optional ``NODE.INPUT`` set to the frame number
``first``, ``last``       Int_Knob            the frame range (default: the script's)
``strategy``              Enumeration_Knob    ``default`` (servers panel, then
                                              ``NUKE_COMFYUI_STRATEGY``) or a strategy name
``output_dir``            File_Knob           where the result sequence is written
``execute``, ``cancel``   PyScript_Knob       the buttons (see :mod:`nuke_plugin.run`)
``status``                Text_Knob           progress and the last result
``read_node``             String_Knob         (hidden) the Read node this node made
========================  ==================  ==============================================

Every function here is main-thread only.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import nuke

from comfy_cluster import STRATEGIES, ComfyClusterError, load_workflow

__all__ = [
    "NODE_LABEL",
    "MARKER_KNOB",
    "NONE_CHOICE",
    "DEFAULT_STRATEGY",
    "create",
    "is_run_node",
    "knob_changed",
    "load_image_choices",
    "refresh_load_image_choices",
    "parse_load_image_choice",
    "set_status",
    "update_read_node",
]

log = logging.getLogger(__name__)

NODE_LABEL = "ComfyUI Cluster Run"
MARKER_KNOB = "comfy_cluster_run"  # a hidden knob that marks our groups (and their version)
NONE_CHOICE = "(none)"
DEFAULT_STRATEGY = "default"

_EXECUTE_CMD = "import nuke_plugin.run; nuke_plugin.run.execute(nuke.thisNode())"
_CANCEL_CMD = "import nuke_plugin.run; nuke_plugin.run.cancel(nuke.thisNode())"
_KNOB_CHANGED_CMD = "import nuke_plugin.node; nuke_plugin.node.knob_changed(nuke.thisNode(), nuke.thisKnob())"


def create(inpanel: bool = True) -> nuke.Group:
    """Create a "ComfyUI Cluster Run" node in the current group and return it."""
    try:
        upstream: Optional[nuke.Node] = nuke.selectedNode()
    except ValueError:  # nothing selected
        upstream = None
    # createNode (rather than nuke.nodes) places the node where the user is working.
    group = nuke.createNode("Group", inpanel=False)
    assert isinstance(group, nuke.Group)
    group.setName("ComfyUIClusterRun1", uncollide=True)
    with group:
        inp = nuke.nodes.Input()
        out = nuke.nodes.Output()
        out.setInput(0, inp)
    if upstream is not None:
        # A Group has no input when created, so createNode could not connect it; do it now.
        group.setInput(0, upstream)
    _add_knobs(group)
    group["knobChanged"].setValue(_KNOB_CHANGED_CMD)
    if inpanel and nuke.GUI:
        group.showControlPanel()
    return group


def _add_knobs(group: nuke.Group) -> None:
    root = nuke.root()
    group.addKnob(nuke.Tab_Knob("comfy_cluster", "ComfyUI Cluster"))
    marker = nuke.String_Knob(MARKER_KNOB, "comfy-cluster")
    marker.setValue("1")
    marker.setFlag(nuke.INVISIBLE)
    group.addKnob(marker)

    workflow = nuke.File_Knob("workflow", "workflow (API JSON)")
    workflow.setTooltip("A ComfyUI workflow saved with 'Save (API Format)'.")
    group.addKnob(workflow)

    load_image = nuke.Enumeration_Knob("load_image_node", "input goes to", [NONE_CHOICE])
    load_image.setTooltip("The LoadImage node of the workflow that receives this node's input, rendered per frame.")
    group.addKnob(load_image)

    frame_input = nuke.String_Knob("frame_input", "frame number to")
    frame_input.setTooltip("Optional NODE.INPUT that receives the frame number, for example 3.seed.")
    group.addKnob(frame_input)

    first = nuke.Int_Knob("first", "frame range")
    first.setValue(root.firstFrame())
    group.addKnob(first)
    last = nuke.Int_Knob("last", "")
    last.setValue(root.lastFrame())
    last.clearFlag(nuke.STARTLINE)
    group.addKnob(last)

    strategy = nuke.Enumeration_Knob("strategy", "strategy", [DEFAULT_STRATEGY] + sorted(STRATEGIES))
    strategy.setTooltip(
        "How frames are spread over the servers. 'default' is the servers panel's choice, "
        "else NUKE_COMFYUI_STRATEGY, else least_loaded."
    )
    group.addKnob(strategy)

    output_dir = nuke.File_Knob("output_dir", "output folder")
    output_dir.setTooltip("The result sequence is written here as <node>_####.<ext>.")
    group.addKnob(output_dir)

    group.addKnob(nuke.PyScript_Knob("execute", "Execute", _EXECUTE_CMD))
    cancel = nuke.PyScript_Knob("cancel", "Cancel", _CANCEL_CMD)
    cancel.clearFlag(nuke.STARTLINE)
    group.addKnob(cancel)
    group.addKnob(nuke.Text_Knob("status", "status", "idle"))

    read_node = nuke.String_Knob("read_node", "result Read")
    read_node.setFlag(nuke.INVISIBLE)
    group.addKnob(read_node)


def is_run_node(node: Optional[nuke.Node]) -> bool:
    """Whether ``node`` is a "ComfyUI Cluster Run" node."""
    return node is not None and node.knob(MARKER_KNOB) is not None


def knob_changed(node: nuke.Node, knob: Optional[nuke.Knob]) -> None:
    """The node's ``knobChanged``: a new workflow file refreshes the LoadImage choices."""
    if knob is not None and knob.name() == "workflow":
        refresh_load_image_choices(node)


def load_image_choices(workflow_path: str) -> Tuple[List[str], Optional[str]]:
    """``([NONE_CHOICE, "10: Load Image", ...], error or None)`` for a workflow file."""
    if not workflow_path:
        return [NONE_CHOICE], None
    try:
        workflow = load_workflow(workflow_path)
    except ComfyClusterError as exc:
        return [NONE_CHOICE], str(exc)
    items = [NONE_CHOICE]
    for node_id, spec in workflow.items():
        if spec.get("class_type") == "LoadImage":
            meta = spec.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) else None
            items.append(f"{node_id}: {title or 'LoadImage'}")
    return items, None


def parse_load_image_choice(choice: str) -> Optional[str]:
    """The node id in a ``load_image_node`` item (``"10: Load Image"`` -> ``"10"``)."""
    choice = choice.strip()
    if not choice or choice == NONE_CHOICE:
        return None
    return choice.split(":", 1)[0].strip()


def refresh_load_image_choices(node: nuke.Node) -> Optional[str]:
    """Fill ``load_image_node`` from the workflow file; returns the problem with it, if any.

    The current choice is kept when the new workflow still has it; otherwise the first
    LoadImage node is chosen (or ``(none)`` when there is none).
    """
    knob = node["load_image_node"]
    assert isinstance(knob, nuke.Enumeration_Knob)
    path = _expand(node["workflow"].value())
    items, error = load_image_choices(path)
    previous = parse_load_image_choice(str(knob.value()))
    knob.setValues(items)
    ids = [parse_load_image_choice(i) for i in items]
    if previous is not None and previous in ids:
        knob.setValue(ids.index(previous))
    else:
        knob.setValue(1 if len(items) > 1 else 0)
    if error:
        set_status(node, f"workflow: {error}")
    return error


def set_status(node: nuke.Node, text: str) -> None:
    """Show ``text`` on the node's status line (ignored when the node has been deleted)."""
    try:
        node["status"].setValue(text)
    except ValueError:  # the user deleted the node while a run went on
        log.info("status of a deleted node: %s", text)


def update_read_node(node: nuke.Node, pattern: str, first: int, last: int) -> nuke.Node:
    """Create (or update) the Read node next to ``node`` reading ``pattern`` over first-last.

    The Read made by an earlier run is reused when it still exists, so re-running a node
    refreshes its result in place instead of piling up Read nodes.
    """
    parent = node.parent()
    previous = node["read_node"].value()
    read = parent.node(previous) if previous else None
    # A copied node carries the original's knob values: only a Read named after this node is
    # its own, so a copy never takes over the original's Read.
    if read is not None and (read.Class() != "Read" or not read.name().startswith(f"{node.name()}_Read")):
        read = None
    if read is None:
        with parent:
            read = nuke.nodes.Read()
        read.setName(f"{node.name()}_Read1", uncollide=True)
        read.setXYpos(node.xpos(), node.ypos() + 60)
        node["read_node"].setValue(read.name())
    file_knob = read["file"]
    assert isinstance(file_knob, nuke.File_Knob)
    # One call sets the path and the frame range (first/last and origfirst/origlast).
    file_knob.fromUserText(f"{pattern} {first}-{last}")
    reload_knob = read.knob("reload")
    if isinstance(reload_knob, nuke.Script_Knob):
        reload_knob.execute()  # new files under the same name: drop Nuke's cached frames
    return read


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path.strip())) if path else ""
