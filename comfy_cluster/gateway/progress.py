"""ComfyUI's ``progress_state`` messages for a gateway job, rebuilt from the pool's events.

ComfyUI sends a job's client the state of every node that has started (``running`` with its
value and max, then ``finished``) before each node's ``executing``, with each ``progress`` and
after each node ends; ComfyUI's page (frontend 1.27) takes the running node, its outline and
its progress bar from these. The pool does not pass them on, so the gateway rebuilds them
from what it relays: a node runs from its ``executing`` until the next one (or the job's
success); cached nodes are finished at once.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..jobs import JobEvent

__all__ = ["NodeStates"]


class NodeStates:
    """One job's node states; each method returns the ``progress_state`` data to send, in order."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self._nodes: Dict[str, Dict[str, Any]] = {}
        self._running: Optional[str] = None

    def reset(self) -> None:
        """A new attempt (the job moved to another server) starts from nothing."""
        self._nodes.clear()
        self._running = None

    def _set(self, node: str, value: Any, maximum: Any, state: str) -> Dict[str, Any]:
        self._nodes[node] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node,
            "prompt_id": self.prompt_id,
            "display_node_id": node,
            "parent_node_id": None,
            "real_node_id": node,
        }
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self._nodes.items()}}

    def _finish(self, node: str) -> Dict[str, Any]:
        entry = self._nodes.get(node)
        top = entry["max"] if entry is not None else 1.0
        return self._set(node, top, top, "finished")

    def before(self, event: JobEvent) -> List[Dict[str, Any]]:
        """The ``progress_state`` messages that come before ``event``'s own message."""
        out: List[Dict[str, Any]] = []
        if event.kind == "cached":
            out.extend(self._finish(node) for node in event.nodes)
        elif event.kind == "executing" and event.node is not None:
            if self._running is not None and self._running != event.node:
                out.append(self._finish(self._running))
            self._running = event.node
            out.append(self._set(event.node, 0.0, 1.0, "running"))
        elif event.kind == "progress" and event.node is not None:
            raw = event.raw if isinstance(event.raw, dict) else {}
            out.append(self._set(event.node, raw.get("value", event.value), raw.get("max", event.max), "running"))
        return out

    def succeeded(self) -> List[Dict[str, Any]]:
        """The message before ``execution_success``: the last node finished."""
        running, self._running = self._running, None
        return [self._finish(running)] if running is not None else []
