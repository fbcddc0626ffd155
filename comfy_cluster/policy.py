"""The failure policy: what a failure means, in one table, for every phase of an attempt.

Each row of :data:`TABLE` is ``(phase, fault) -> Decision``. The runner (attempt I/O), the
status monitor (probes) and the pool's clean-up all ask :func:`decide`; none of them reads an
error's text. docs/RELIABILITY.md shows this table as it is here.

Faults are :data:`comfy_cluster.errors.FAULTS` (``refused``, ``connect_timeout``,
``read_timeout``, ``connect``, ``tls``, ``http``, ``malformed``, ``""``), plus ``"5xx"`` and
``"4xx"`` for ``http`` split by status (with ``"413"``, ``"429"`` and ``"401/403/404"`` apart), and ``"workflow"``/``"workflow_here"`` for a 400 from
``POST /prompt`` that is the same everywhere / particular to this server (a missing node type
or model). A refusal on Windows arrives after about 2 s as a connect timeout when the connect
timeout is shorter; so no decision depends on a refusal arriving within 1 s (reads that follow
a job use a connect timeout of 3 s, and ``connect_timeout`` is treated as a loss of contact).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import ServerError, WorkflowError

__all__ = ["Phase", "Action", "Decision", "decide", "fault_of", "TABLE", "REFUSED_LOST_AFTER", "FOLLOW_TIMEOUT", "follow_timeout"]

#: Seconds of refused connections after which a job's server is taken for gone: refused means
#: ComfyUI is not running there, and its queue lived in memory.
REFUSED_LOST_AFTER = 2.0
#: (connect, read) timeouts of the reads that follow a job and of clean-up requests: the
#: connect timeout is above the ~2 s a Windows refusal takes to arrive.
FOLLOW_TIMEOUT = (3.05, 5.0)


def follow_timeout(read_cap: float) -> Tuple[float, float]:
    """:data:`FOLLOW_TIMEOUT` with its read part no longer than ``read_cap`` (the pool's own
    ``request_timeout`` read: a pool tuned for quick failover keeps it in these reads too)."""
    return FOLLOW_TIMEOUT[0], min(FOLLOW_TIMEOUT[1], read_cap)


class Phase(str, enum.Enum):
    """Where in an attempt a failure happened."""

    PROBE = "probe"  # GET /queue by the status monitor
    UPLOAD = "upload"  # websocket open and input uploads, before POST /prompt
    POST = "post"  # POST /prompt
    FOLLOW = "follow"  # /queue and /history reads while the job is queued or running
    HISTORY = "history"  # reading the result after the job's end was signalled
    VIEW = "view"  # GET /view (job.download)
    CANCEL = "cancel"  # POST /queue delete, POST /interrupt, and the /queue check between


class Action(str, enum.Enum):
    """What to do about a failure."""

    FAIL = "fail"  # the job fails with this error (it would fail the same everywhere)
    MOVE = "move"  # the attempt ends; the job goes back to the queue for another server
    WAIT = "wait"  # keep the attempt; try again until the loss window has passed, then MOVE
    RAISE = "raise"  # the caller's call raises the error; the job is not touched
    OFFLINE = "offline"  # the server is marked offline (probe) and re-probed after a backoff


@dataclass(frozen=True)
class Decision:
    """One row of the table.

    ``mark_down``: mark the server offline now. ``maybe_there``: the server may hold a copy
    (the attempt stays in the ledger, UNCONFIRMED, until clean-up confirms its end).
    ``window``: for WAIT, how long contact may be lost before the job moves (``None``: the
    pool's ``server_lost_after``). ``exclude``: never offer this job to this server again.
    """

    action: Action
    mark_down: bool = False
    maybe_there: bool = False
    window: Optional[float] = None
    exclude: bool = False


_ANY = "*"
_FAIL = Decision(Action.FAIL)
_MOVE_DOWN = Decision(Action.MOVE, mark_down=True)
_MOVE_MAYBE = Decision(Action.MOVE, mark_down=True, maybe_there=True)
_WAIT = Decision(Action.WAIT)
_WAIT_REFUSED = Decision(Action.WAIT, window=REFUSED_LOST_AFTER)

TABLE: Dict[Tuple[Phase, str], Decision] = {
    (Phase.PROBE, _ANY): Decision(Action.OFFLINE),
    # Nothing is on the server before POST: move at once.
    (Phase.UPLOAD, _ANY): _MOVE_DOWN,
    (Phase.UPLOAD, "local"): _FAIL,  # our own input file could not be read
    (Phase.UPLOAD, "413"): _FAIL,  # the input is too large for it (the message names the size)
    # POST: a 400 is an answer (nothing queued). Anything else may have queued the job: the
    # runner first looks for its client-chosen prompt_id there; if it cannot tell, the job
    # moves and the attempt stays in the ledger until clean-up removes the copy.
    (Phase.POST, "workflow"): _FAIL,
    (Phase.POST, "workflow_here"): Decision(Action.MOVE, exclude=True),
    # A proxy in front of one server: 413 would be the same everywhere (too large); 429 is
    # "later or elsewhere" (offline until re-probed after the back-off); 401/403/404 mean this
    # server is misconfigured (offline, with the reason in its status, and never again for
    # this job: its GET /queue may well answer). Nothing was queued in any of these.
    (Phase.POST, "413"): _FAIL,
    (Phase.POST, "429"): _MOVE_DOWN,
    (Phase.POST, "401/403/404"): Decision(Action.MOVE, mark_down=True, exclude=True),
    (Phase.POST, "4xx"): _FAIL,
    (Phase.POST, "refused"): _MOVE_DOWN,  # no connection: nothing was sent
    (Phase.POST, "connect_timeout"): _MOVE_DOWN,
    (Phase.POST, "tls"): _MOVE_DOWN,
    (Phase.POST, _ANY): _MOVE_MAYBE,  # read_timeout, reset, 5xx, malformed: look, then move
    # While following (and reading the result): a server that answered moments ago is not
    # lost. Retry for the loss window, measured as continuous time without an answer.
    (Phase.FOLLOW, "refused"): _WAIT_REFUSED,
    (Phase.FOLLOW, _ANY): _WAIT,
    (Phase.HISTORY, "refused"): _WAIT_REFUSED,
    (Phase.HISTORY, _ANY): _WAIT,
    # Cancel: retried for the loss window; a copy not confirmed gone stays in the ledger and is
    # removed when the server is reachable again.
    (Phase.CANCEL, _ANY): Decision(Action.WAIT, maybe_there=True),
    (Phase.VIEW, _ANY): Decision(Action.RAISE),
}


def fault_of(error: BaseException) -> str:
    """The table's fault name of ``error``."""
    if isinstance(error, WorkflowError):
        return "workflow"
    if isinstance(error, ServerError):
        if error.fault == "http" and error.status is not None:
            if error.status in (413, 429):
                return str(error.status)
            if error.status in (401, 403, 404):
                return "401/403/404"
            return "5xx" if error.status >= 500 else "4xx"
        return error.fault or "unknown"
    return "local"


def decide(phase: Phase, error: BaseException, *, server_specific: bool = False) -> Decision:
    """The decision for ``error`` in ``phase`` (``server_specific``: a 400 another server may
    not give, such as a missing node type or model)."""
    fault = fault_of(error)
    if fault == "workflow" and server_specific:
        fault = "workflow_here"
    return TABLE.get((phase, fault)) or TABLE[(phase, _ANY)]


def render_table() -> str:
    """:data:`TABLE` as the markdown table docs/RELIABILITY.md shows (a test keeps them equal)."""
    rows = ["| phase | fault | action | server marked offline | copy may be left (kept until removed) | retried for |", "|---|---|---|---|---|---|"]
    for (phase, fault), d in TABLE.items():
        window = "" if d.action is not Action.WAIT else (f"{d.window:g} s" if d.window is not None else "`server_lost_after`")
        fault_text = "any other" if fault == _ANY and len([k for k in TABLE if k[0] is phase]) > 1 else "any" if fault == _ANY else f"`{fault}`"
        rows.append(
            f"| {phase.value} | {fault_text} | {d.action.value}{' (exclude this server)' if d.exclude else ''} | "
            f"{'yes' if d.mark_down else ''} | {'yes' if d.maybe_there else ''} | {window} |"
        )
    return "\n".join(rows)
