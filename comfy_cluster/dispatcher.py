"""The Dispatcher: jobs wait here until a server has room; no I/O on its thread.

One thread, woken by: a submission, a cancel, an attempt released (a slot freed), the status
monitor (a server came or went), a capability fetch that ended, and close. Between wake-ups
it sleeps until the nearest deadline (a job's ``wait_for_server``), never polling the network:
what a decision needs (snapshots, node lists) is read from caches that other threads fill.

Fair share: jobs are queued per owner. The next free slot goes to the oldest job of the owner
with the fewest jobs on servers now (then the fewest dispatched ever), not to the oldest job.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Hashable, Iterator, List, Optional, Sequence, Set

from .errors import ComfyClusterError, ServerError
from .jobs import JobControl
from .server_config import ServerConfig

__all__ = ["Dispatcher", "Choice", "Verdict"]

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    GO = "go"  # start an attempt on ``server``
    WAIT = "wait"  # a server that could take it exists but has no room (or is not known yet)
    NONE = "none"  # no server can take it now (``error`` says why); wait_for_server runs
    FAIL = "fail"  # it can never run (``error``)


@dataclass(frozen=True)
class Choice:
    verdict: Verdict
    server: Optional[ServerConfig] = None
    error: Optional[ComfyClusterError] = None


class Dispatcher:
    """Owns the local queue. ``choose(job)`` decides (pure: no I/O), ``start(job, server)``
    claims the job and starts its runner (False if the job was cancelled meanwhile),
    ``end(job, error)`` fails or cancels a job that leaves the queue without a server.
    ``tick()`` may start background work (non-blocking) and returns seconds until it wants
    to be called again (None: only on a wake-up). Jobs with the same non-None ``key_of(job)``
    get the same WAIT: once one must wait, the others are not asked again in that pass."""

    def __init__(
        self,
        choose: Callable[[JobControl], Choice],
        start: Callable[[JobControl, ServerConfig], bool],
        end: Callable[[JobControl, Optional[ComfyClusterError]], None],
        *,
        clock: Callable[[], float],
        wait_for_server: float,
        tick: Callable[[], Optional[float]] = lambda: None,
        key_of: Callable[[JobControl], Optional[Hashable]] = lambda job: None,
    ) -> None:
        self._choose = choose
        self._start = start
        self._end = end
        self._clock = clock
        self._wait_for_server = wait_for_server
        self._tick = tick
        self._key_of = key_of
        # Jobs waiting per batch (by id: a batch is alive while a job of it waits here); an
        # entry goes when its count reaches 0, so a long-lived pool keeps none per batch run.
        self._per_batch: Dict[int, int] = {}
        self._cond = threading.Condition()
        self._queues: Dict[Optional[str], Deque[JobControl]] = {}
        self._count = 0
        self._running: Dict[Optional[str], int] = collections.Counter()
        self._served: Dict[Optional[str], int] = collections.Counter()
        self._woken = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    # -- called from any thread ---------------------------------------------------------------

    def add(self, jobs: Sequence[JobControl], *, front: bool = False) -> None:
        """Queue ``jobs`` (all at once: none is dispatched before the last is queued)."""
        with self._cond:
            if self._closed:
                raise ComfyClusterError("the pool is closed")
            for job in jobs:
                q = self._queues.setdefault(job.owner, collections.deque())
                if front:
                    q.appendleft(job)  # a moved job has waited longest
                else:
                    q.append(job)
                key = id(job.batch)
                self._per_batch[key] = self._per_batch.get(key, 0) + 1
            self._count += len(jobs)
            self._woken = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="comfy-cluster-dispatch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def remove(self, job: JobControl) -> bool:
        """Take ``job`` out of the queue; False if it is not there (on a server, or ended)."""
        with self._cond:
            q = self._queues.get(job.owner)
            if q is None:
                return False
            try:
                q.remove(job)
            except ValueError:
                return False
            if not q:
                del self._queues[job.owner]
            self._count -= 1
            key = id(job.batch)
            left = self._per_batch.get(key, 0) - 1
            if left > 0:
                self._per_batch[key] = left
            else:
                self._per_batch.pop(key, None)
            return True

    def wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def adopted(self, job: Any) -> None:
        """A job followed on a server without being dispatched (it counts there)."""
        with self._cond:
            self._running[job.owner] += 1
            self._served[job.owner] += 1

    def attempt_ended(self, job: JobControl) -> None:
        """A job's attempt is over (its owner has one fewer job on servers)."""
        with self._cond:
            self._running[job.owner] -= 1
            self._woken = True
            self._cond.notify_all()

    def pending(self, batch: object = None) -> int:
        """Jobs waiting (of ``batch`` only, if given)."""
        with self._cond:
            return self._count if batch is None else self._per_batch.get(id(batch), 0)

    def close(self) -> List[JobControl]:
        """Stop the thread; the jobs still queued, for the pool to cancel."""
        with self._cond:
            self._closed = True
            left = [j for q in self._queues.values() for j in q]
            self._queues.clear()
            self._count = 0
            self._per_batch.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        return left

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay: Optional[float] = None
        while True:
            with self._cond:
                if not self._woken and not self._closed:
                    self._cond.wait(timeout=delay)
                if self._closed:
                    return
                self._woken = False
                jobs = list(self._fair_order()) if self._count else []
            try:
                delay = self._pass(jobs)
            except Exception:  # a bug here must not stop every job: log, look again soon
                log.exception("dispatcher pass failed")
                delay = 0.5

    def _fair_order(self) -> Iterator[JobControl]:
        """Jobs in the order free slots go to them (lock held by the caller)."""
        if len(self._queues) == 1:
            yield from next(iter(self._queues.values()))
            return
        running = dict(self._running)
        served = dict(self._served)
        cursors = {o: iter(q) for o, q in self._queues.items()}
        heads = {o: next(it) for o, it in cursors.items()}
        while heads:
            owner = min(heads, key=lambda o: (running.get(o, 0), served.get(o, 0), heads[o].seq))
            yield heads[owner]
            # Assume this one goes: the next pick favours the others.
            running[owner] = running.get(owner, 0) + 1
            served[owner] = served.get(owner, 0) + 1
            nxt = next(cursors[owner], None)
            if nxt is None:
                del heads[owner]
            else:
                heads[owner] = nxt

    def _pass(self, jobs: List[JobControl]) -> Optional[float]:
        """One look at every waiting job; returns seconds until the next deadline."""
        now = self._clock()
        nearest: Optional[float] = None
        waiting: Set[Hashable] = set()
        for job in jobs:
            if self._closed:
                return None
            if job.cancel_requested:
                if self.remove(job):
                    self._end(job, None)
                continue
            key = self._key_of(job)
            if key is not None and key in waiting:
                continue
            try:
                choice = self._choose(job)
            except Exception as exc:  # a bug deciding one job must not hold every job behind it
                log.exception("choosing a server for a job failed")
                choice = Choice(Verdict.FAIL, error=ComfyClusterError(f"internal error choosing a server: {exc!r}"))
            if choice.verdict is Verdict.GO:
                assert choice.server is not None
                job.no_server_since = None
                if self.remove(job):
                    with self._cond:
                        self._running[job.owner] += 1
                        self._served[job.owner] += 1
                    if not self._start(job, choice.server):
                        self.attempt_ended(job)
                        self._end(job, None)
            elif choice.verdict is Verdict.WAIT:
                # A usable server exists: the outage clock (if any) is over.
                job.no_server_since = None
                if key is not None:
                    waiting.add(key)
            elif choice.verdict is Verdict.FAIL:
                if self.remove(job):
                    self._end(job, choice.error)
            else:
                # Only the current, continuous time without any usable server counts.
                if job.no_server_since is None:
                    job.no_server_since = now
                due = job.no_server_since + self._wait_for_server
                if now >= due:
                    if self.remove(job):
                        self._end(job, choice.error or ServerError("no server available"))
                else:
                    nearest = due if nearest is None else min(nearest, due)
        tick = self._tick()
        delays = [d for d in (tick, None if nearest is None else max(0.01, nearest - self._clock())) if d is not None]
        if jobs:
            delays.append(1.0)  # a cheap look now and then, whatever the clock says
        return min(delays) if delays else None
