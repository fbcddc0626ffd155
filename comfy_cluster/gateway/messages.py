"""ComfyUI websocket messages and history items for the gateway's jobs.

The pool reports a job as :class:`~comfy_cluster.jobs.JobEvent` objects whose ``prompt_id``
is the id of the current attempt on its server. Clients must only ever see their own
``prompt_id``, so every message is rebuilt (or, where the event carries the server's own
message as ``raw``, copied) with the gateway's id in it.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..jobs import JobEvent, JobResult, OutputFile

__all__ = ["event_message", "relabel", "synthesized_history", "terminal_message", "TERMINAL", "Record"]

TERMINAL = ("execution_success", "execution_error", "execution_interrupted")


def _ms(t: float) -> int:
    return int(t * 1000)


def _files(files: Tuple[OutputFile, ...]) -> Dict[str, Any]:
    return {"images": [{"filename": f.filename, "subfolder": f.subfolder, "type": f.type} for f in files]}


def relabel(data: Mapping[str, Any], prompt_id: str) -> Dict[str, Any]:
    """A copy of a message's data with ``prompt_id`` replaced (when it has one)."""
    out = dict(data)
    if "prompt_id" in out:
        out["prompt_id"] = prompt_id
    return out


def event_message(event: JobEvent, prompt_id: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The ComfyUI message ``(type, data)`` for a pool event, or None for events clients do
    not see (queued, retrying, the job's end: the gateway sends the end itself)."""
    raw = getattr(event, "raw", None)
    kind = event.kind
    if kind == "started":
        if isinstance(raw, Mapping):
            return "execution_start", relabel(raw, prompt_id)
        return "execution_start", {"prompt_id": prompt_id, "timestamp": _ms(event.time)}
    if kind == "cached":
        if isinstance(raw, Mapping):
            return "execution_cached", relabel(raw, prompt_id)
        return "execution_cached", {"nodes": list(event.nodes), "prompt_id": prompt_id, "timestamp": _ms(event.time)}
    if kind == "executing":
        if isinstance(raw, Mapping):
            return "executing", relabel(raw, prompt_id)
        return "executing", {"node": event.node, "display_node": event.node, "prompt_id": prompt_id}
    if kind == "progress":
        if isinstance(raw, Mapping):
            return "progress", relabel(raw, prompt_id)
        value: Any = int(event.value) if event.value is not None and float(event.value).is_integer() else event.value
        top: Any = int(event.max) if event.max is not None and float(event.max).is_integer() else event.max
        return "progress", {"value": value, "max": top, "prompt_id": prompt_id, "node": event.node}
    if kind == "output":
        if isinstance(raw, Mapping):
            return "executed", relabel(raw, prompt_id)
        return "executed", {"node": event.node, "display_node": event.node, "output": _files(event.files), "prompt_id": prompt_id}
    return None


class Record:
    """What a job's current attempt told, kept to write its history item as the server did:
    the ``execution_start``/``execution_cached`` messages, each output node's UI dict, and
    the closing message (a move to another server starts a new record)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages: List[List[Any]] = []
        self.outputs: Dict[str, Any] = {}
        self.meta: Dict[str, Any] = {}
        self.end: Optional[List[Any]] = None

    def note(self, event: JobEvent, prompt_id: str) -> None:
        raw = event.raw if isinstance(event.raw, Mapping) else None
        kind = event.kind
        if kind in ("started", "cached"):
            message = event_message(event, prompt_id)
            if message is not None:
                self.messages.append(list(message))
        elif kind == "output" and event.node is not None:
            output = raw.get("output") if raw is not None else None
            self.outputs[event.node] = output if isinstance(output, Mapping) else _files(event.files)
            display = raw.get("display_node", event.node) if raw is not None else event.node
            self.meta[event.node] = {"node_id": event.node, "display_node": display, "parent_node": None, "real_node_id": event.node}
        elif raw is not None and kind in _ENDS:
            if kind != "failed" or "exception_message" in raw:  # a server's execution_error
                self.end = [_ENDS[kind], relabel(raw, prompt_id)]

    def item(self, queue_item: List[Any], status: str) -> Optional[Dict[str, Any]]:
        """The history item, or None when the server's closing message was not seen."""
        if self.end is None:
            return None
        ok = status == "succeeded"
        return {
            "prompt": queue_item,
            "outputs": dict(self.outputs),
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": self.messages + [self.end]},
            "meta": dict(self.meta),
        }


_ENDS = {"succeeded": "execution_success", "failed": "execution_error", "cancelled": "execution_interrupted"}


def error_data(prompt_id: str, error: BaseException) -> Dict[str, Any]:
    """``execution_error`` data for a job that failed outside a server's execution."""
    return {
        "prompt_id": prompt_id,
        "node_id": getattr(error, "node_id", None),
        "node_type": getattr(error, "node_type", None),
        "executed": [],
        "exception_message": getattr(error, "exception_message", None) or str(error),
        "exception_type": getattr(error, "exception_type", None) or type(error).__name__,
        "traceback": list(getattr(error, "traceback", None) or []),
        "current_inputs": {},
        "current_outputs": [],
        "timestamp": _ms(time.time()),
    }


def synthesized_history(
    prompt_id: str, queue_item: List[Any], status: str, result: Optional[JobResult], error: Optional[BaseException]
) -> Dict[str, Any]:
    """A history item built from what the pool knows (the job ended without the server's
    closing message: it failed or was cancelled before or between attempts)."""
    now = _ms(time.time())
    messages: List[List[Any]] = []
    outputs: Dict[str, Any] = {}
    if status == "succeeded" and result is not None:
        for node, files in result.outputs.items():
            outputs[node] = _files(tuple(files))
        messages = [["execution_start", {"prompt_id": prompt_id, "timestamp": now}], ["execution_success", {"prompt_id": prompt_id, "timestamp": now}]]
    elif status == "cancelled":
        messages = [["execution_interrupted", {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [], "timestamp": now}]]
    else:
        messages = [["execution_error", error_data(prompt_id, error or RuntimeError("job failed"))]]
    ok = status == "succeeded"
    return {
        "prompt": queue_item,
        "outputs": outputs,
        "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": messages},
        "meta": {},
    }


def terminal_message(item: Mapping[str, Any]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The last ``execution_success/error/interrupted`` message of a history item."""
    for m in reversed((item.get("status") or {}).get("messages") or []):
        if isinstance(m, list) and len(m) == 2 and m[0] in TERMINAL and isinstance(m[1], dict):
            return m[0], m[1]
    return None
