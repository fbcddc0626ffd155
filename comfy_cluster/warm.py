"""What a workflow leaves warm on the server that runs it: the model files its loader nodes
load, and the cache keys of its nodes.

ComfyUI keeps the last loaded models in VRAM and the outputs of the last prompt's nodes in
its cache, keyed by each node's inputs and, through links, by everything upstream. So a job
costs less on a server that last ran the same checkpoint (no model load: 5-60 s on real
GPUs), and almost nothing on one that last ran the identical prompt. :class:`Warmth` is what
the pool records per server when it queues a job there, and what the ``warm_models``
strategy (:mod:`comfy_cluster.balance`) compares a new job against. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .workflow import MODEL_EXTENSIONS

__all__ = ["Warmth", "warmth_of", "model_files", "NO_WARMTH"]

#: Nodes that load models into VRAM: CheckpointLoaderSimple, UNETLoader, LoraLoader,
#: VAELoader, CLIPLoader, DualCLIPLoader, ControlNetLoader, UpscaleModelLoader, ... and custom
#: loaders named the same way.
_LOADER_MARK = "Loader"


@dataclass(frozen=True)
class Warmth:
    """``models``: the model files a job loads, as ``input=file`` (sorted); ``prompt``: a key
    of the whole prompt (None when it cannot be keyed); ``nodes``: the cache keys of its nodes
    (sorted, short)."""

    models: Tuple[str, ...] = ()
    prompt: Optional[str] = None
    nodes: Tuple[str, ...] = ()

    def warm_on(self, models: Tuple[str, ...]) -> bool:
        """Whether every model this job loads is among ``models`` (True when it loads none)."""
        return all(m in models for m in self.models)


NO_WARMTH = Warmth()


def model_files(workflow: Mapping[str, Any]) -> Tuple[str, ...]:
    """The model files the loader nodes of ``workflow`` load, as ``input=file``, sorted.

    A loader is a node whose class_type contains ``Loader`` (LoadImage is not one); its model
    inputs are string inputs named ``*_name`` (``ckpt_name``, ``unet_name``, ``lora_name``,
    ``vae_name``, ``clip_name1``...) or naming a model file by its extension.
    """
    out = set()
    for node in workflow.values():
        if not isinstance(node, Mapping) or _LOADER_MARK not in str(node.get("class_type", "")):
            continue
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, str) and ("_name" in name or value.lower().endswith(MODEL_EXTENSIONS)):
                out.add(f"{name}={value}")
    return tuple(sorted(out))


def warmth_of(workflow: Mapping[str, Any]) -> Warmth:
    """The :class:`Warmth` of ``workflow`` (API format, already checked)."""
    keys: Dict[str, str] = {}

    def key(node_id: str, visiting: Tuple[str, ...]) -> str:
        if node_id in keys:
            return keys[node_id]
        node = workflow.get(node_id)
        if not isinstance(node, Mapping) or node_id in visiting:
            return f"missing:{node_id}"
        inputs = {}
        for name, value in sorted((node.get("inputs") or {}).items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
                value = ["link", key(value[0], visiting + (node_id,)), value[1]]  # upstream, not its id
            inputs[name] = value
        text = json.dumps([node.get("class_type"), inputs], sort_keys=True, default=str)
        keys[node_id] = hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
        return keys[node_id]

    for node_id in workflow:
        key(str(node_id), ())
    nodes = tuple(sorted(set(keys.values())))
    prompt = hashlib.blake2b(" ".join(nodes).encode("ascii"), digest_size=8).hexdigest()
    return Warmth(models=model_files(workflow), prompt=prompt, nodes=nodes)
