"""What a ComfyUI server answers, read defensively: JSON of unknown shape, ComfyUI's 400 on
``/prompt`` as readable node errors, queue entries, and the files in a history item."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .errors import JobFailed, NodeError, ServerError, WorkflowError

__all__ = ["parse_workflow_error", "as_dict", "as_list", "iter_output_files", "queue_items", "job_failed"]


def parse_workflow_error(data: Mapping[str, Any], server: Optional[str] = None) -> WorkflowError:
    """Turn ComfyUI's 400 answer into a WorkflowError with readable node errors."""
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    message = str(err.get("message") or "workflow refused")
    details = err.get("details")
    if details and isinstance(details, str) and details not in message:
        message = f"{message} ({details})"
    node_errors: List[NodeError] = []
    raw_nodes = data.get("node_errors")
    if isinstance(raw_nodes, dict):
        for node_id, entry in raw_nodes.items():
            if not isinstance(entry, dict):
                continue
            class_type = str(entry.get("class_type", "?"))
            errors = as_list(entry.get("errors"))
            for e in errors:
                if not isinstance(e, dict):
                    continue
                info = as_dict(e.get("extra_info"))
                input_name = info.get("input_name")
                text = str(e.get("details") or e.get("message") or "invalid")
                node_errors.append(
                    NodeError(str(node_id), class_type, str(input_name) if input_name else None, text, str(e.get("type", "")))
                )
    where = f"{server}: " if server else ""
    return WorkflowError(
        f"{where}{message}",
        error_type=str(err.get("type", "")),
        node_errors=node_errors,
        server=server,
        raw=dict(data),
    )


def as_dict(value: Any) -> Dict[str, Any]:
    """``value`` if it is a dict, else an empty one (for JSON of unknown shape)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> List[Any]:
    """``value`` if it is a list, else an empty one (for JSON of unknown shape)."""
    return value if isinstance(value, list) else []


def queue_items(items: Any, server: str) -> List[Tuple[float, str]]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ServerError(f"{server}: /queue entries are not lists", server=server, fault="malformed")
    out: List[Tuple[float, str]] = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) < 2
            or not isinstance(item[1], str)
            or isinstance(item[0], bool)
            or not isinstance(item[0], (int, float))
        ):
            raise ServerError(f"{server}: malformed /queue item", server=server, fault="malformed")
        try:
            number = float(item[0])
        except OverflowError:  # a JSON integer too large for a float
            raise ServerError(f"{server}: malformed /queue item", server=server, fault="malformed") from None
        out.append((number, item[1]))
    return out


def iter_output_files(outputs: Any) -> Iterable[Tuple[str, Dict[str, str]]]:
    """Yield ``(node_id, file)`` for every file in a history ``outputs`` mapping."""
    if not isinstance(outputs, dict):
        return
    for node_id, node_out in outputs.items():
        if not isinstance(node_out, dict):
            continue
        for value in node_out.values():
            if not isinstance(value, list):
                continue
            for f in value:
                if isinstance(f, dict) and isinstance(f.get("filename"), str):
                    yield str(node_id), {
                        "filename": f["filename"],
                        "subfolder": str(f.get("subfolder") or ""),
                        "type": str(f.get("type") or "output"),
                    }


def job_failed(data: Mapping[str, Any], prompt_id: str, server: str) -> JobFailed:
    """The :class:`JobFailed` a server's ``execution_error`` data (a frame or a history
    message) describes."""
    node_id = data.get("node_id")
    node_type = data.get("node_type")
    exc_type = str(data.get("exception_type") or "")
    exc_msg = str(data.get("exception_message") or "").strip()
    tb = as_list(data.get("traceback"))
    return JobFailed(
        f"{server}: node {node_id} ({node_type}) failed: {exc_type}: {exc_msg}",
        prompt_id=prompt_id,
        server=server,
        node_id=str(node_id) if node_id is not None else None,
        node_type=str(node_type) if node_type is not None else None,
        exception_type=exc_type,
        exception_message=exc_msg,
        traceback=[str(t) for t in tb],
    )
