"""Workflows in ComfyUI's API format: loading, checking, capability matching and templating.

An API-format workflow maps node ids (strings) to ``{"class_type": str, "inputs": {...}}``.
Everything here is pure (no network): the pool feeds it ``/object_info`` answers.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import ComfyClusterError
from .textfiles import UnreadableText, loads_json, read_text

__all__ = [
    "WorkflowInputError",
    "load_workflow",
    "class_types",
    "missing_capabilities",
    "shared_choices",
    "set_inputs",
    "frame_workflows",
    "seeded_copies",
    "MODEL_EXTENSIONS",
]

Workflow = Dict[str, Any]
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".sft")


class WorkflowInputError(ComfyClusterError, ValueError):
    """A workflow or input given to the library is malformed; raised before anything is sent."""


def load_workflow(workflow: Union[Mapping[str, Any], str, "os.PathLike[str]"]) -> Workflow:
    """A deep copy of ``workflow`` (a dict, or a path to an API-format JSON file), checked.

    Raises :class:`WorkflowInputError` naming what is wrong. A UI-format export (with
    ``nodes`` and ``links``) is recognised and explained, since it is the usual mistake.
    """
    if isinstance(workflow, (str, os.PathLike)):
        path = os.fspath(workflow)
        try:
            data = loads_json(read_text(path), f"workflow file {path}")  # UTF-8, or UTF-16/BOM as PowerShell writes
        except FileNotFoundError:
            raise WorkflowInputError(f"workflow file not found: {path}") from None
        except UnreadableText as exc:  # cp1252 ("ANSI"): say so and how to save it
            raise WorkflowInputError(f"cannot read workflow file {path}: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise WorkflowInputError(f"cannot read workflow file {path}: {exc.__class__.__name__}") from None
        except ValueError as exc:
            raise WorkflowInputError(str(exc)) from None
        where = path
    else:
        data = workflow
        where = "workflow"
    if not isinstance(data, Mapping):
        raise WorkflowInputError(f"{where}: must be a JSON object of nodes, got {type(data).__name__}")
    if "nodes" in data and "links" in data:
        raise WorkflowInputError(
            f"{where}: this is a UI-format workflow; export it with 'Save (API Format)' in ComfyUI"
        )
    if "prompt" in data and isinstance(data["prompt"], Mapping) and len(data) <= 3:
        raise WorkflowInputError(f"{where}: pass the workflow itself, not a /prompt request body")
    if not data:
        raise WorkflowInputError(f"{where}: has no nodes")
    for node_id, node in data.items():
        if not isinstance(node_id, str):
            raise WorkflowInputError(f"{where}: node id {node_id!r} must be a string")
        if not isinstance(node, Mapping):
            raise WorkflowInputError(f"{where}: node {node_id} must be an object, got {type(node).__name__}")
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise WorkflowInputError(f"{where}: node {node_id} has no class_type")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowInputError(f"{where}: node {node_id} inputs must be an object")
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise WorkflowInputError(f"{where}: cannot be sent as JSON: {exc}") from None
    return copy.deepcopy(dict(data))


def class_types(workflow: Mapping[str, Any]) -> List[str]:
    """The node types a workflow uses, sorted, each once."""
    return sorted({str(n.get("class_type")) for n in workflow.values() if isinstance(n, Mapping)})


def _list_choices(info: Mapping[str, Any], input_name: str) -> Optional[List[Any]]:
    """The choices of a list input (``[[choice, ...], {...}]``) in object_info, else None."""
    spec_root = info.get("input")
    if not isinstance(spec_root, Mapping):
        return None
    for section in ("required", "optional"):
        group = spec_root.get(section)
        if not isinstance(group, Mapping) or input_name not in group:
            continue
        spec = group[input_name]
        if isinstance(spec, list) and spec and isinstance(spec[0], list):
            return spec[0]
        # Newer servers: ["COMBO", {"options": [...]}]
        if isinstance(spec, list) and len(spec) > 1 and spec[0] == "COMBO" and isinstance(spec[1], Mapping):
            options = spec[1].get("options")
            return list(options) if isinstance(options, list) else None
    return None


def shared_choices(workflow: Mapping[str, Any], node_info: Mapping[str, Mapping[str, Any]]) -> Dict[Tuple[str, str], List[Any]]:
    """``{(node id, input): choices}`` for every list (combo) input of ``workflow`` holding a
    literal: the choices that every eligible server offers (a model picker shows only models
    every server able to run the workflow has), in the first such server's order.

    ``node_info`` maps server names to their ``/object_info``; eligible servers offer every
    node type of the workflow (whatever its chosen values).
    """
    types = {str(n.get("class_type")) for n in workflow.values() if isinstance(n, Mapping)}
    eligible = [info for info in node_info.values() if all(isinstance(info.get(t), Mapping) for t in types)]
    out: Dict[Tuple[str, str], List[Any]] = {}
    if not eligible:
        return out
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            continue
        ctype = str(node.get("class_type"))
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list):
                continue  # a link
            lists = [_list_choices(info[ctype], name) for info in eligible]
            if any(choices is None for choices in lists):
                continue
            common = set.intersection(*(set(map(str, c)) for c in lists if c is not None))
            first = lists[0] or []
            out[(str(node_id), str(name))] = [c for c in first if str(c) in common]
    return out


def _looks_like_model(input_name: str, value: str) -> bool:
    return input_name.endswith("_name") or value.lower().endswith(MODEL_EXTENSIONS)


def missing_capabilities(
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any],
    *,
    skip_nodes: Iterable[str] = (),
) -> Tuple[List[str], List[str]]:
    """``(missing node types, missing model files)`` of ``workflow`` on a server.

    A model file is a string value of a list input (``ckpt_name``, ``lora_name``, ...) that
    names a model; it is missing when it is not among that input's choices on the server.
    Nodes in ``skip_nodes`` (LoadImage nodes whose image the pool uploads) are not checked.
    """
    skip = set(skip_nodes)
    missing_types: List[str] = []
    missing_models: List[str] = []
    for node_id, node in workflow.items():
        ctype = node.get("class_type")
        info = object_info.get(ctype)
        if not isinstance(info, Mapping):
            if ctype not in missing_types:
                missing_types.append(str(ctype))
            continue
        if node_id in skip:
            continue
        inputs = node.get("inputs") or {}
        for name, value in inputs.items():
            if not isinstance(value, str) or not _looks_like_model(name, value):
                continue
            choices = _list_choices(info, name)
            if choices is not None and value not in choices and value not in missing_models:
                missing_models.append(value)
    return sorted(missing_types), missing_models


def set_inputs(workflow: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]) -> Workflow:
    """A copy of ``workflow`` with ``values[node_id][input] = value`` set.

    Raises :class:`WorkflowInputError` for a node id the workflow does not have.
    """
    out = copy.deepcopy(dict(workflow))
    for node_id, inputs in values.items():
        node = out.get(str(node_id))
        if not isinstance(node, dict):
            raise WorkflowInputError(f"node {node_id} is not in the workflow (nodes: {', '.join(sorted(out))})")
        node.setdefault("inputs", {}).update(inputs)
    return out


def parse_node_input(spec: str) -> Tuple[str, str]:
    """``"3.seed"`` -> ``("3", "seed")``; raises WorkflowInputError naming the bad text."""
    node, sep, name = spec.partition(".")
    if not sep or not node or not name:
        raise WorkflowInputError(f"expected NODE.INPUT (for example 3.seed), got {spec!r}")
    return node, name


def frame_workflows(
    template: Mapping[str, Any],
    frames: Sequence[int],
    frame_input: Optional[str] = None,
    per_frame: Optional[Mapping[int, Mapping[str, Mapping[str, Any]]]] = None,
) -> List[Workflow]:
    """One workflow per frame from one template.

    ``frame_input`` (``"NODE.INPUT"``) receives the frame number; ``per_frame[frame]`` maps
    node ids to inputs to set for that frame (for example ``{"3": {"seed": frame}}``).
    """
    base = load_workflow(template)
    target: Optional[Tuple[str, str]] = parse_node_input(frame_input) if frame_input else None
    if target and target[0] not in base:
        raise WorkflowInputError(f"frame input {frame_input}: node {target[0]} is not in the workflow")
    out = []
    for frame in frames:
        values: Dict[str, Dict[str, Any]] = {}
        if target:
            values.setdefault(target[0], {})[target[1]] = frame
        for node_id, inputs in (per_frame or {}).get(frame, {}).items():
            values.setdefault(str(node_id), {}).update(inputs)
        out.append(set_inputs(base, values))
    return out


SEED_INPUTS = ("seed", "noise_seed")
_SEED_MAX = 2**64  # ComfyUI's seeds are 0 .. 0xffffffffffffffff


def seeded_copies(template: Mapping[str, Any], count: int) -> Tuple[List[Workflow], int]:
    """``count`` copies of ``template``, copy ``i`` with every literal ``seed``/``noise_seed``
    input increased by ``i``, and how many such inputs there are.

    ComfyUI answers a prompt identical to its previous one from its cache (no new image, in
    a second), so N identical copies would give N times one image; with no seed input (0) they
    stay identical and the caller should say so.
    """
    base = load_workflow(template)
    seeds = [(node_id, name) for node_id, node in base.items() for name, value in node.get("inputs", {}).items()
             if name in SEED_INPUTS and isinstance(value, int) and not isinstance(value, bool)]
    out = []
    for i in range(count):
        values: Dict[str, Dict[str, Any]] = {}
        for node_id, name in seeds:
            values.setdefault(node_id, {})[name] = (base[node_id]["inputs"][name] + i) % _SEED_MAX
        out.append(set_inputs(base, values))
    return out, len(seeds)


__all__.append("parse_node_input")
