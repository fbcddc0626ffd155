"""The pool's scheduling side: what the :class:`~comfy_cluster.dispatcher.Dispatcher` asks of
the pool, on the dispatcher's thread. No I/O here: snapshots and node lists are read from
their caches (a node list not read yet is fetched on the probe executor, never waited for).
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from .attempt import Attempt
from .lifecycle import finish_cancelled, run, run_adopted
from .config import ServerConfig
from .dispatcher import Choice, Verdict
from .errors import ComfyClusterError
from .jobs import Job
from .planner import Batch
from .selection import View, evaluate, no_server, pick

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ServerPool

__all__ = ["tick", "key_of", "choose", "start_attempt", "adopt_attempt", "end_unplaced"]


def tick(pool: "ServerPool") -> Optional[float]:
    """Without the background monitor, start (never wait for) re-probes of offline
    servers whose backoff is over; seconds until the next one is due."""
    if pool._monitor.background:
        return None
    view = pool._view(probe=False)
    now = pool._clock()
    if now >= view.next_retry:
        pool._retry_offline(view, now)
    return None if math.isinf(view.next_retry) else max(0.05, min(1.0, view.next_retry - now))

def key_of(pool: "ServerPool", job: Job) -> Optional[Tuple[Any, ...]]:
    """Jobs alike get the same WAIT: same batch, same servers able to run them (node types,
    models and inputs alike), never tried, nothing excluded. None: ask for this job."""
    version, cache = job._caps
    if job.incapable or version != pool._caps.version or not cache or job.attempts:
        return None
    stamp = (version, len(cache))  # a cache only grows within one version
    memo = job._key_memo
    if memo is None or memo[0] != stamp:
        memo = (stamp, (id(job.batch), frozenset(n for n, why in cache.items() if why is None)))
        job._key_memo = memo
    return memo[1]


def choose(pool: "ServerPool", job: Job) -> Choice:
    exclude = set(job.incapable)
    view = pool._view(probe=False)
    can = pool._can(job.workflow, job.inputs, wait=False, job=job)
    tried = job.tried
    if tried:
        untried, _, _, _ = evaluate(view, pool._servers, can, exclude | set(tried), ignore_full=True, reasons_wanted=False)
        if untried:
            exclude |= set(tried)  # another attempt goes to a server not tried yet
    cands, reasons, full, unknown = evaluate(view, pool._servers, can, exclude)
    if not cands:
        if full or unknown:
            return Choice(Verdict.WAIT)
        if job.incapable and not any(r.startswith("offline") for r in reasons.values()):
            return Choice(Verdict.FAIL, error=job.last_error or no_server(reasons))
        return Choice(Verdict.NONE, error=no_server(reasons))
    try:
        if isinstance(job.batch, Batch):
            state = plan_state(pool, view, can, exclude)
            server = job.batch.plan_pick(cands, state, pool._dispatcher.pending(job.batch))
            return Choice(Verdict.GO, server) if server is not None else Choice(Verdict.WAIT)
        return Choice(Verdict.GO, pick(pool._strategy, pool.strategy, cands, job.workflow))
    except ComfyClusterError as exc:  # a custom strategy's bad answer fails the job, loudly
        return Choice(Verdict.FAIL, error=exc)

def plan_state(pool: "ServerPool", view: View, can: Callable[[List[str]], Dict[str, Optional[str]]], exclude: Set[str]) -> List[Tuple[ServerConfig, float, float]]:
    """``(server, seconds until its current backlog is done, seconds per job)`` for every
    server able to take the job, full or not: the batch planner's view of the cluster."""
    eligible, _, _, _ = evaluate(view, pool._servers, can, exclude, ignore_full=True, reasons_wanted=False)
    now = pool._clock()
    out = []
    for c in eligible:
        d = c.expected_seconds
        backlog = max(c.status.load, c.status.in_flight) * d
        starts = [a.job._last_exec_start for a in pool._ledger.live(c.name) if a.job._last_exec_start is not None]
        if starts and backlog > 0:
            backlog -= min(d, max(0.0, now - max(starts)))
        out.append((c.server, max(0.0, backlog), d))
    return out

def start_attempt(pool: "ServerPool", job: Job, server: ServerConfig) -> bool:
    attempt = Attempt(job, server.name, job.attempts + 1)
    if not job._claim(attempt, server):
        return False
    pool._ledger.reserve(attempt)  # counted on the server before anything is sent
    previous = job.failures[-1] if job.failures else None
    if previous is not None:
        job._emit("retrying", server.name, from_server=previous[0], to_server=server.name, reason=previous[1])
    thread = threading.Thread(target=run, args=(pool, attempt), name=f"comfy-cluster-job-{server.name}", daemon=True)
    with pool._lock:
        pool._runners.add(thread)
    thread.start()
    return True

def adopt_attempt(pool: "ServerPool", job: Job, server: ServerConfig, prompt_id: str) -> None:
    """Make ``job``'s first attempt the copy ``prompt_id`` already on ``server`` and follow it
    on a runner thread (counted on the server and for its owner, as a dispatched attempt)."""
    attempt = Attempt(job, server.name, 1, prompt_id=prompt_id)
    job._claim(attempt, server)
    pool._ledger.reserve(attempt)
    pool._dispatcher.adopted(job)
    thread = threading.Thread(target=run_adopted, args=(pool, attempt), name=f"comfy-cluster-job-{server.name}", daemon=True)
    with pool._lock:
        pool._runners.add(thread)
    thread.start()

def end_unplaced(pool: "ServerPool", job: Job, error: Optional[ComfyClusterError]) -> None:
    """A job leaves the local queue without a server: cancelled (``error`` None) or failed."""
    if error is None:
        finish_cancelled(job, None, "cancelled before it reached a server")
    else:
        job._emit("failed", None, reason=str(error))
        job._finish("failed", error=error)
