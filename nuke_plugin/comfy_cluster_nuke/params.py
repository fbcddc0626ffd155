"""The workflow's simple parameters as knobs on the node, sent with every job.

When a workflow is chosen, its prompt texts (``CLIPTextEncode.text``), sampler settings
(``seed``/``noise_seed``, ``steps``, ``cfg``, ``denoise``, ``sampler_name``, ``scheduler`` of
``KSampler``/``KSamplerAdvanced``) and models (``ckpt_name``, ``lora_name``) appear as knobs,
plus any ``NODE.INPUT`` the artist lists in "also as knobs". List inputs (models, samplers)
become pickers of the values every server able to run the workflow has, once the servers'
``/object_info`` is read (:mod:`.serverinfo`). Seeds, and whole
numbers outside Nuke's 32-bit ``Int_Knob``, are text knobs holding the exact number (exported
workflows hold seeds such as 156680208700286; ComfyUI takes up to 2**64-1). A knob starts at
the workflow's value; its value (an animated one evaluated at each frame) replaces the
workflow's in that frame's job. Knobs of a previous workflow that the new one lacks are removed;
the others keep the artist's values. The hidden ``param_map`` knob records which knob feeds
which ``NODE.INPUT``, so a saved script knows them again.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import nuke

from comfy_cluster import ComfyClusterError, load_workflow

from .quiet import quiet_set

__all__ = ["MAP_KNOB", "AUTO_INPUTS", "SEED_INPUTS", "find_params", "refresh_knobs", "values_per_frame", "apply_choices", "apply"]

MAP_KNOB = "param_map"
AUTO_INPUTS: Dict[str, Tuple[str, ...]] = {
    "CLIPTextEncode": ("text",),
    "KSampler": ("seed", "steps", "cfg", "denoise", "sampler_name", "scheduler"),
    "KSamplerAdvanced": ("noise_seed", "steps", "cfg", "sampler_name", "scheduler"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "LoraLoader": ("lora_name",),
}


def _knob_name(node_id: str, name: str) -> str:
    return "p_" + re.sub(r"[^A-Za-z0-9_]", "_", f"{node_id}_{name}")


def find_params(workflow: Dict[str, Any], extra: str = "") -> List[Tuple[str, str, Any, str]]:
    """``(node id, input, value, label)`` of every simple parameter: a literal str/int/float."""
    wanted: List[Tuple[str, str]] = []
    for node_id, spec in workflow.items():
        for name in AUTO_INPUTS.get(str(spec.get("class_type")), ()):
            wanted.append((str(node_id), name))
    for entry in extra.split():
        node_id, dot, name = entry.rpartition(".")
        if dot and node_id and (node_id, name) not in wanted:
            wanted.append((node_id, name))
    out = []
    for node_id, name in wanted:
        spec = workflow.get(node_id)
        if not isinstance(spec, dict):
            continue
        inputs = spec.get("inputs")
        if not isinstance(inputs, dict) or name not in inputs:
            continue
        value = inputs[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            continue  # a link to another node, or not a simple value
        meta = spec.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        out.append((node_id, name, value, f"{title or spec.get('class_type')} {name}"))
    return out


def _map(node: nuke.Node) -> Dict[str, str]:
    knob = node.knob(MAP_KNOB)
    if knob is None:
        return {}
    try:
        data = json.loads(str(knob.value()) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


#: Inputs that hold random seeds: exported workflows routinely hold values up to 2**64-1.
SEED_INPUTS = ("seed", "noise_seed")
_INT32 = (-(2**31), 2**31 - 1)


def _wide_int(input_name: str, value: int) -> bool:
    """Whether an INT input needs a text knob: Nuke's Int_Knob holds a 32-bit C int."""
    return input_name in SEED_INPUTS or not _INT32[0] <= value <= _INT32[1]


def _make_knob(name: str, label: str, value: Any, input_name: str = "") -> nuke.Knob:
    knob: nuke.Knob
    if isinstance(value, int) and _wide_int(input_name, value):
        # Digits in a text knob keep every 64-bit value exactly (a Double_Knob would round
        # above 2**53); values_per_frame turns them back into an int.
        knob = nuke.String_Knob(name, label)
        knob.setTooltip("A whole number, kept exactly (Nuke's integer knobs stop at 2147483647).")
        value = str(value)
    elif isinstance(value, int):
        knob = nuke.Int_Knob(name, label)
    elif isinstance(value, float):
        knob = nuke.Double_Knob(name, label)
    else:
        knob = nuke.Multiline_Eval_String_Knob(name, label)
    knob.setValue(value)
    return knob


def refresh_knobs(node: nuke.Node, workflow_path: str) -> None:
    """Make the parameter knobs match the workflow (main thread)."""
    try:
        workflow = load_workflow(workflow_path) if workflow_path else {}
    except ComfyClusterError:
        workflow = {}
    found = find_params(workflow, str(node["extra_params"].value()))
    old = _map(node)
    new: Dict[str, str] = {}
    for node_id, name, value, label in found:
        knob_name = _knob_name(node_id, name)
        new[knob_name] = f"{node_id}.{name}"
        if node.knob(knob_name) is None:
            node.addKnob(_make_knob(knob_name, label, value, name))
    for knob_name in old:
        existing = node.knob(knob_name)
        if knob_name not in new and existing is not None:
            node.removeKnob(existing)
    if node.knob(MAP_KNOB) is None:
        hidden = nuke.String_Knob(MAP_KNOB, MAP_KNOB)
        hidden.setFlag(nuke.INVISIBLE)
        node.addKnob(hidden)
    quiet_set(node[MAP_KNOB], json.dumps(new))


def _whole_number(knob: nuke.Knob) -> int:
    """The integer a text knob holds (a seed); ValueError naming the knob otherwise."""
    text = str(knob.value()).strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{knob.label() or knob.name()}: {text!r} is not a whole number") from None


def _value_at(knob: nuke.Knob, frame: int, original: Any = None) -> Any:
    if isinstance(knob, nuke.Enumeration_Knob):
        return str(knob.value())  # a picker: the chosen item's text
    if isinstance(original, int) and not isinstance(original, bool) and not isinstance(knob, nuke.Array_Knob):
        return _whole_number(knob)  # an INT input held as text (64-bit)
    if isinstance(knob, nuke.Int_Knob):
        return int(knob.getValueAt(frame)) if knob.isAnimated() else int(knob.value())
    if isinstance(knob, nuke.Array_Knob):
        return float(knob.getValueAt(frame)) if knob.isAnimated() else float(knob.value())
    return str(knob.value())


def values_per_frame(node: nuke.Node, workflow: Dict[str, Any], frames: Sequence[int]) -> Dict[int, Dict[str, Any]]:
    """``{frame: {"3.seed": 7, ...}}`` from the parameter knobs (main thread); ValueError
    naming the knob when a whole-number knob holds something else."""
    out: Dict[int, Dict[str, Any]] = {f: {} for f in frames}
    for knob_name, target in _map(node).items():
        knob = node.knob(knob_name)
        node_id, _, name = target.rpartition(".")
        if knob is None or node_id not in workflow:
            continue
        inputs = workflow[node_id].get("inputs") if isinstance(workflow[node_id], dict) else None
        original = inputs.get(name) if isinstance(inputs, dict) else None
        for frame in frames:
            out[frame][target] = _value_at(knob, frame, original)
    return out


def apply_choices(node: nuke.Node, choices: Mapping[Tuple[str, str], Sequence[Any]]) -> List[str]:
    """Turn the parameter knobs of list inputs (models, samplers...) into pickers of
    ``choices`` (the values every eligible server has; main thread). The current value is kept,
    listed first when a server lacks it; returns a line for each such knob."""
    missing: List[str] = []
    for knob_name, target in _map(node).items():
        knob = node.knob(knob_name)
        node_id, _, name = target.rpartition(".")
        items = [str(c) for c in choices.get((node_id, name), ())]
        if knob is None or not items or (isinstance(knob, nuke.Array_Knob) and not isinstance(knob, nuke.Enumeration_Knob)):
            continue  # numbers stay numbers
        current = str(knob.value())
        if current and current not in items:
            items = [current] + items
            missing.append(f"{knob.label() or knob_name}: {current} is not on every server")
        if isinstance(knob, nuke.Enumeration_Knob):
            if list(knob.values()) != items:
                knob.setValues(items)
                quiet_set(knob, current if current in items else items[0])
            continue
        picker = nuke.Enumeration_Knob(knob_name, knob.label(), items)
        picker.setTooltip("The values every server that can run the workflow has (its /object_info).")
        node.removeKnob(knob)
        node.addKnob(picker)
        quiet_set(picker, current if current in items else items[0])
    return missing


def apply(workflow: Dict[str, Any], values: Dict[str, Any], skip: Optional[str] = None) -> None:
    """Put ``values`` (``"NODE.INPUT": value``) into ``workflow`` in place, except ``skip``."""
    for target, value in values.items():
        if target == skip:
            continue
        node_id, _, name = target.rpartition(".")
        spec = workflow.get(node_id)
        if isinstance(spec, dict) and isinstance(spec.get("inputs"), dict):
            spec["inputs"][name] = value
