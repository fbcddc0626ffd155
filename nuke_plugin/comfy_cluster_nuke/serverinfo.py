"""What the servers offer, shown on the node before any run (GUI only, in the background).

When the artist chooses a workflow (or changes the parameters listed as knobs, or the
*pixels* choice), a daemon thread asks the cluster, once, with a pool of its own:

* whether a server able to run the workflow has ``LoadEXR``/``SaveEXR``: the node's pixels
  line then says "linear EXR round trip" or "8-bit round trip: values outside 0-1 are clipped"
  before any run (:mod:`.exchange`);
* the choices of the workflow's list inputs that every such server has (``/object_info``):
  the parameter knobs of models and samplers become pickers (:func:`.params.apply_choices`).

The answer is applied on Nuke's main thread; nothing is asked without a GUI (``nuke -t`` and
the farm never need it) or when no server is configured. The node's ``knobChanged`` calls
:func:`knob_changed` here, which does the node's own work first (:func:`.node.knob_changed`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import nuke

from comfy_cluster import ComfyClusterError, ServerPool, load_workflow
from comfy_cluster.workflow import shared_choices

from . import exchange, params
from . import node as node_mod
from .destinations import evaluate_path
from .quiet import set_pixels_note, set_status
from .settings import pool_options

__all__ = ["knob_changed", "refresh", "last_thread", "started", "WATCHED_KNOBS"]

log = logging.getLogger(__name__)

#: Knob changes that make the node ask the servers again.
WATCHED_KNOBS = ("workflow", "extra_params", "pixels", "exr_tonemap", "load_image_node", "mask_node", "ref_node")
_last: Dict[str, threading.Thread] = {}  # the latest check per node (tests wait for it)


def knob_changed(node: nuke.Node, knob: Optional[nuke.Knob]) -> None:
    """The node's ``knobChanged``: its own handling, then a check of the servers when needed."""
    node_mod.knob_changed(node, knob)
    if knob is not None and knob.name() in WATCHED_KNOBS:
        refresh(node)


def last_thread(node: nuke.Node) -> Optional[threading.Thread]:
    """The latest check started for ``node`` (None if none)."""
    return _last.get(node.fullName())


def started() -> List[threading.Thread]:
    """The latest check of every node (finished ones included)."""
    return list(_last.values())


def refresh(node: nuke.Node) -> Optional[threading.Thread]:
    """Start asking the servers about ``node``'s workflow (main thread); the thread, or None
    when there is nothing to ask (no GUI, no workflow)."""
    if not nuke.GUI:
        return None
    path = evaluate_path(node["workflow"])
    if not path:
        return None
    try:
        workflow = load_workflow(path)
    except ComfyClusterError:
        return None  # the node already says what is wrong with the file
    choice = node_mod.choice(node, "pixels", exchange.AUTO)
    exr_note = exchange.exr_note(node_mod.choice(node, "exr_tonemap", exchange.TONEMAPS[0]))
    loaders = [i for i in (node_mod.chosen_load_image(node, k) for _, k, _ in node_mod.INPUT_KNOBS) if i is not None]
    thread = threading.Thread(
        target=_ask, args=(node, node.name(), workflow, loaders, choice, exr_note, dict(pool_options)),
        name=f"comfy-cluster-nuke-info-{node.name()}", daemon=True,
    )
    _last[node.fullName()] = thread
    thread.start()
    return thread


def _ask(
    node: nuke.Node, name: str, workflow: Dict[str, Any], loaders: Sequence[str], choice: str, exr_note: str, options: Dict[str, Any]
) -> None:
    note: Optional[str] = None
    choices: Dict[Tuple[str, str], List[Any]] = {}
    try:
        with ServerPool.from_env(**options) as pool:
            if choice != exchange.PNG:
                able = pool.capabilities(exchange.to_exr(workflow, loaders, "probe").workflow)
                if any(why is None for why in able.values()):
                    note = exr_note
                elif able or choice == exchange.EXR:
                    note = exchange.PNG_NOTE if choice == exchange.AUTO else "no server has LoadEXR/SaveEXR: Execute will refuse (set pixels to auto or png)"
            choices = shared_choices(workflow, pool.node_info())
    except ComfyClusterError as exc:  # no servers configured, or none reachable: nothing to say
        log.info("cannot ask the servers about %s: %s", name, exc)
        return
    if nuke.GUI:  # always queued (never run on this thread); without a GUI nobody looks
        nuke.executeInMainThread(_apply, args=(node, threading.current_thread(), note, choices))


def _apply(node: nuke.Node, asker: threading.Thread, note: Optional[str], choices: Dict[Tuple[str, str], List[Any]]) -> None:
    try:
        node.name()
    except ValueError:
        return  # deleted meanwhile
    if _last.get(node.fullName()) is not asker:
        # A watched knob (the tonemap among them) changed since this question left: the newer
        # question's answer is the one to show, never this one's (worded for the old knobs).
        return
    if note is not None:
        set_pixels_note(node, note)
    missing = params.apply_choices(node, choices)
    if missing:
        set_status(node, "; ".join(missing))
