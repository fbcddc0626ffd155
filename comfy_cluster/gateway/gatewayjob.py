"""``GatewayJob``: one prompt posted to the gateway, whatever attempts the pool makes for it
(the :class:`~comfy_cluster.gateway.book.JobBook` holds them, on the gateway's loop)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..jobs import Job, JobEvent
from ..state import PromptRow
from .messages import Record
from .progress import NodeStates
from .relay import Key
from .uploads import Version

__all__ = ["GatewayJob"]


@dataclass(eq=False)
class GatewayJob:
    """One prompt posted to the gateway, whatever attempts the pool makes for it."""

    prompt_id: str
    number: float
    client_id: str
    prompt: Dict[str, Any]
    extra_data: Dict[str, Any]
    outputs: List[str]
    inputs: Dict[str, str] = field(default_factory=dict)
    user: str = "default"  # who posted it (auth.User.name): who sees and manages it
    owner: str = ""  # whose turn it counts for in the fair share (auth.User.owner)
    # Keep its events for the client's next socket: posted while none was open (cleared once
    # a socket opens, so a later socket never gets events of a prompt that ended before it).
    keep: bool = False
    workflow: Optional[Dict[str, Any]] = None  # what the servers run, when it differs from prompt
    held: List[Version] = field(default_factory=list)
    state: str = "waiting"  # waiting (in the gateway), submitted (in the pool), running, done
    created: float = field(default_factory=time.time)
    started_at: Optional[float] = None
    job: Optional[Job] = None
    started: bool = False
    cached_sent: bool = False
    deleted: bool = False
    cancel_requested: bool = False
    server: Optional[str] = None  # where its current attempt runs
    node: Optional[str] = None  # the node running now (what a preview is of)
    backlog: Optional[List[JobEvent]] = None  # events held until the job before it has ended
    blocked: List["GatewayJob"] = field(default_factory=list)  # jobs whose events wait for this one
    deferred_end: Optional[Tuple[Any, ...]] = None
    telling: bool = False  # its end waits for its history's commit, then is told
    record: Record = field(default_factory=Record)
    nodes: NodeStates = field(init=False)  # its progress_state, rebuilt from its events

    def __post_init__(self) -> None:
        self.nodes = NodeStates(self.prompt_id)

    @property
    def key(self) -> Key:
        """The event stream of this prompt: its user's socket with its clientId."""
        return (self.user, self.client_id)

    def queue_item(self) -> List[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def row(self, bound: Dict[str, Tuple[str, str]]) -> PromptRow:
        """What the store keeps of it (``bound``: node -> (digest, name) of its uploads);
        the store's ``owner`` is the user who posted it."""
        body = {"prompt": self.prompt, "extra_data": self.extra_data, "outputs": self.outputs, "workflow": self.workflow,
                "owner": self.owner, "keep": self.keep}
        return PromptRow(self.prompt_id, self.number, self.user, self.client_id, body, created=self.created, inputs=dict(bound))
