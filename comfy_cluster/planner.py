"""The planner and batches: many workflows over the pool, planned so the whole batch ends as early as it can.

Every job of a batch waits in the pool's local queue; a server gets the next one only when it
has room (late binding, ``max_queue`` per server). Filling free slots is not enough: near
the end of a batch a job queued on a slow server finishes later than it would have by waiting
for a fast one. So before handing a job to a server with room, the batch plans all of its
remaining jobs: each goes where it would finish earliest, given each server's backlog and
expected seconds per job (learned from finished jobs, ``weight`` as the first guess). A server
gets the job only if the plan gives it at least one. The plan is made afresh at every decision,
so it follows what the servers really do.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .balance import Candidate
from .errors import ComfyClusterError
from .jobs import Job, JobControl
from .server_config import ServerConfig

__all__ = ["Batch", "plan_threshold", "inputs_per_job"]

log = logging.getLogger(__name__)


def plan_threshold(backlogs: Sequence[Tuple[float, float]], remaining: int) -> float:
    """The finish time of the ``remaining``-th job when every job goes where it ends earliest.

    ``backlogs`` holds ``(seconds until the server's current work is done, seconds per job)``
    per server. Server ``s`` can finish ``floor((t - backlog_s) / per_job_s)`` new jobs by time
    ``t``; the threshold is the smallest ``t`` where the servers together finish ``remaining``.
    A server is in the plan exactly when its first new job ends by then.
    """
    if remaining <= 0 or not backlogs:
        return 0.0

    def count(t: float) -> int:
        total = 0
        for backlog, per_job in backlogs:
            if t >= backlog + per_job:
                total += int((t - backlog) / per_job + 1e-9)
        return total

    lo = 0.0
    hi = min(b + p * remaining for b, p in backlogs)  # one server alone would manage by then
    for _ in range(60):
        mid = (lo + hi) / 2
        if count(mid) >= remaining:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-6:
            break
    return hi


class Batch:
    """Jobs started together by :meth:`ServerPool.map_async`.

    ``jobs`` are in input order. ``results()`` waits for them; ``cancel()`` cancels every job
    where it is; ``counts()`` gives ``(done, failed, total)`` for progress bars.
    """

    def __init__(
        self,
        *,
        fail_fast: bool = False,
        quiet_posts: Callable[[], None] = lambda: None,
    ) -> None:
        """Made by :meth:`ServerPool.map_async`, which hands it its jobs with :meth:`attach`.
        ``quiet_posts`` waits (briefly) until no POST of the pool is in flight."""
        self.fail_fast = fail_fast
        self._quiet_posts = quiet_posts
        self.jobs: List[Job] = []
        self._controls: List[JobControl] = []
        self._lock = threading.Lock()
        self._ended = 0
        self._failed = 0
        self._all_done = threading.Event()
        self._cancelled = False

    def attach(self, controls: Sequence[JobControl]) -> None:
        """The pool only, once, before any of them is queued: the batch's jobs in input order."""
        self._controls = list(controls)
        self.jobs = [c.job for c in self._controls]
        if not self.jobs:
            self._all_done.set()
            return
        for control in self._controls:
            control.add_end_listener(self._job_ended)

    def __len__(self) -> int:
        return len(self.jobs)

    # -- progress -----------------------------------------------------------------------------

    def counts(self) -> Tuple[int, int, int]:
        """``(ended, failed, total)``: ended counts successes, failures and cancellations."""
        with self._lock:
            return self._ended, self._failed, len(self.jobs)

    def servers_working(self) -> Dict[str, int]:
        """Server name -> number of this batch's jobs there now (queued or running there; not
        those waiting in the pool's queue, even after a server they left)."""
        out: Dict[str, int] = {}
        for control in list(self._controls):
            name = control.holder
            if name is not None:
                out[name] = out.get(name, 0) + 1
        return out

    def _job_ended(self, job: Job) -> None:
        failed = job.status == "failed"
        with self._lock:
            self._ended += 1
            if failed:
                self._failed += 1
            all_done = self._ended >= len(self.jobs) and len(self.jobs) > 0
        if failed and self.fail_fast and not self._cancelled:
            log.info("fail_fast: job %s failed, cancelling the batch", job.prompt_id)
            self.cancel()
        if all_done:
            self._all_done.set()

    # -- planning -----------------------------------------------------------------------------

    def plan_pick(
        self, candidates: Sequence[Candidate], state: Sequence[Tuple[ServerConfig, float, float]], remaining: int
    ) -> Optional[ServerConfig]:
        """The server for one more job of this batch now, or None when the plan says wait.

        ``state`` is the planner's view of the cluster (``(server, backlog seconds, seconds
        per job)`` for every server able to take the job, full or not); ``remaining`` the
        batch's jobs still waiting."""
        threshold = plan_threshold([(b, d) for _, b, d in state], max(1, remaining))
        finish = {srv.name: b + d for srv, b, d in state}
        allowed = [c for c in candidates if finish.get(c.name, float("inf")) <= threshold + 1e-6]
        if not allowed:
            return None
        best = min(allowed, key=lambda c: (finish[c.name], c.status.in_flight, c.index))
        return best.server

    # -- results ------------------------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every job has ended; False on timeout."""
        return self._all_done.wait(timeout)

    def results(self, timeout: Optional[float] = None, *, return_exceptions: bool = False) -> List[Any]:
        """Every job's :class:`JobResult` in input order, once all have ended.

        Raises the first error in input order, unless ``return_exceptions`` (then errors stand
        in the list in place of results). Raises :class:`TimeoutError` on timeout.
        """
        if not self.wait(timeout):
            raise TimeoutError(f"batch not finished after {timeout} s ({self.counts()[0]} of {len(self.jobs)} ended)")
        out: List[Any] = []
        for job in self.jobs:
            err = job.exception()
            if err is not None and not return_exceptions:
                raise err
            out.append(err if err is not None else job.result())
        return out

    def cancel(self) -> None:
        """Cancel every job of the batch where it is (local queue, server queue, or running)."""
        self._cancelled = True
        # Every job is flagged before any is woken: a runner interrupting its job deletes the
        # batch's other cancelled jobs there first, so none of them starts in between.
        marked = [control for control in list(self._controls) if control.mark_cancel()]
        self._quiet_posts()
        for control in marked:
            control.notify_cancel()

    def results_or_cancel(self, timeout: Optional[float], *, return_exceptions: bool = False) -> List[Any]:
        """:meth:`results`, but on timeout the batch is cancelled before TimeoutError is raised
        (nothing is left running without a handle)."""
        try:
            return self.results(timeout=timeout, return_exceptions=return_exceptions)
        except TimeoutError as exc:
            self.cancel()
            raise TimeoutError(f"{exc}; the batch was cancelled") from None


def inputs_per_job(inputs: Any, n: int) -> List[Optional[Mapping[str, str]]]:
    """``map``'s ``inputs`` (None, one mapping for all, or one per workflow) as one per job."""
    if inputs is None:
        return [None] * n
    if isinstance(inputs, Mapping):
        return [inputs] * n
    items = list(inputs)
    if len(items) != n:
        raise ComfyClusterError(f"inputs: {len(items)} entries for {n} workflows")
    return items

