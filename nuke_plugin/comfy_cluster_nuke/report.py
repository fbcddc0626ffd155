"""ComfyUI's errors in the words the artist is shown (dialogs, the status line, ``RunError``)."""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

from comfy_cluster import JobFailed, ServerError, WorkflowError

__all__ = ["describe_error", "failure_text", "ranges"]


def ranges(frames: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out: List[str] = []
    ordered = sorted(frames)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ", ".join(out)


def describe_error(err: BaseException) -> str:
    """ComfyUI's own words for an error: node, type, input and message for a refused workflow;
    node, exception and message for a failure while running."""
    if isinstance(err, WorkflowError):
        where = f" by {err.server}" if err.server else ""
        if not err.node_errors:
            return f"ComfyUI refused the workflow{where}: {err}"
        lines = [f"ComfyUI refused the workflow{where}:"]
        for ne in err.node_errors:
            spot = f"node {ne.node_id} ({ne.class_type})"
            if ne.input:
                spot += f", input '{ne.input}'"
            lines.append(f"  {spot}: {ne.message}")
        return "\n".join(lines)
    if isinstance(err, JobFailed):
        where = f" on {err.server}" if err.server else ""
        if err.node_id is None and not err.exception_type:
            return str(err)
        head = f"ComfyUI failed{where} in node {err.node_id} ({err.node_type}):"
        body = f"{err.exception_type}: {err.exception_message}" if err.exception_type else err.exception_message
        return f"{head}\n  {body}"
    if isinstance(err, ServerError) and err.attempts:
        return "the servers failed:\n" + "\n".join(f"  {name}: {why}" for name, why in err.attempts)
    return str(err)


def failure_text(name: str, frames: Sequence[int], errors: Mapping[int, BaseException], cancelled: Sequence[int]) -> str:
    """The dialog for a run with failed frames: how many, then each distinct error once with its frames."""
    parts = [f"{name}: {len(errors)} of {len(frames)} frame(s) failed."]
    if cancelled:
        parts[0] += f" Frame(s) {ranges(cancelled)} were not run."
    groups: Dict[str, List[int]] = {}
    for frame, err in sorted(errors.items()):
        groups.setdefault(describe_error(err), []).append(frame)
    for text, group in groups.items():
        parts.append(f"Frame(s) {ranges(group)}:\n{text}")
    return "\n\n".join(parts)
