"""What a job reports: its events, its result and the files it produced (frozen values).

Kept apart from :mod:`comfy_cluster.jobs` (which re-exports them) because the gateway, the
command line and the runner read them without needing a :class:`~comfy_cluster.jobs.Job`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["JobEvent", "JobResult", "OutputFile", "JOB_STATES", "EVENT_KINDS", "TERMINAL_KINDS"]

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
EVENT_KINDS = (
    "submitted", "queued", "started", "executing", "progress", "cached", "output",
    "succeeded", "failed", "cancelled", "retrying", "preview",
)
#: The event kinds that end a job: exactly one of them per job, always its last event.
TERMINAL_KINDS = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class OutputFile:
    """One file a job produced, as the server names it."""

    filename: str
    subfolder: str
    type: str
    node: str = ""


@dataclass(frozen=True)
class JobEvent:
    """Something that happened to a job. ``kind`` is one of :data:`EVENT_KINDS`.

    Fields used by kind: ``queued`` -> position; ``executing`` -> node; ``progress`` -> node,
    value, max; ``cached`` -> nodes; ``output`` -> node, files; ``retrying`` -> from_server,
    to_server, reason; ``failed``/``cancelled`` -> reason; ``preview`` -> data (the whole
    binary websocket frame as the server sent it: 4-byte event type, then its payload).
    ``index`` is the job's position in its batch (None outside a batch). ``raw`` is the
    websocket message's ``data`` dict as the server sent it, for events that come from one
    (None for the others), so a relay can pass it on unchanged.
    """

    kind: str
    server: Optional[str]
    prompt_id: Optional[str] = None
    node: Optional[str] = None
    value: Optional[float] = None
    max: Optional[float] = None
    position: Optional[int] = None
    nodes: Tuple[str, ...] = ()
    files: Tuple[OutputFile, ...] = ()
    from_server: Optional[str] = None
    to_server: Optional[str] = None
    reason: Optional[str] = None
    index: Optional[int] = None
    time: float = field(default_factory=time.time)
    raw: Optional[Dict[str, Any]] = field(default=None, repr=False)
    data: Optional[bytes] = field(default=None, repr=False)


@dataclass(frozen=True)
class JobResult:
    """A finished job: its outputs (node id -> files), where it ran, and how long it took."""

    prompt_id: str
    server: str
    outputs: Dict[str, List[OutputFile]]
    attempts: int
    seconds: float

    @property
    def files(self) -> List[OutputFile]:
        """Every output file, node by node."""
        return [f for files in self.outputs.values() for f in files]
