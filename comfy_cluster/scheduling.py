"""The Scheduler: the local queue and placement, a part of its own.

It owns the :class:`~comfy_cluster.dispatcher.Dispatcher` (the queue and its thread) and
decides, for each waiting job, where it goes now. It is handed what it reads: the servers, a
:class:`~comfy_cluster.selection.StatusView` of the snapshots, the
:class:`~comfy_cluster.selection.Capabilities` cache, the
:class:`~comfy_cluster.attempt.Ledger`, the strategy, a clock, and ``launch(attempt)`` that
starts an attempt's runner. A strategy with a ``place`` method (``warm_models``) is also shown
the servers that are full and the waiting jobs per model set, and may let a job wait for a
busy server that has its model loaded, told how long the job has waited with a server free
and how long each server's running job has run (the injected clock), so a wait stays bounded
when a job overruns. No I/O here: snapshots and node lists are read from their caches
(a node list not read yet is fetched on the probe executor, never waited for).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Set, Tuple

from .attempt import Attempt, AttemptPhase, Ledger
from .balance import Candidate, strategy_name, unclaimed
from .dispatcher import Choice, Dispatcher, Verdict
from .errors import ComfyClusterError, ConfigError
from .jobs import JobControl
from .planner import Batch
from .selection import Capabilities, StatusView, View, capable, evaluate, no_server, pick
from .server_config import ServerConfig

__all__ = ["Scheduler"]

Can = Callable[[List[str]], Dict[str, Optional[str]]]


class Scheduler:
    """Jobs wait here until a server has room; each goes where the strategy (or its batch's
    plan) says. Thread-safe: ``add``, ``wake``, ``attempt_ended`` and ``close`` may be called
    from any thread; decisions are made on the dispatcher's thread."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        view: StatusView,
        caps: Capabilities,
        ledger: Ledger,
        strategy: Any,
        *,
        launch: Callable[..., None],
        clock: Callable[[], float],
        wait_for_server: float,
    ) -> None:
        self._servers = tuple(servers)
        self._view = view
        self._caps = caps
        self._ledger = ledger
        self._strategy = strategy
        self._strategy_name = strategy_name(strategy)
        self._launch = launch
        self._clock = clock
        self._place = getattr(strategy, "place", None)
        # The model sets of the jobs waiting here (for ``place``), under their own lock.
        self._models_lock = threading.Lock()
        self._models_of: Dict[int, Tuple[str, ...]] = {}
        self._waiting_models: Dict[Tuple[str, ...], int] = collections.Counter()
        # When ``place`` was first asked about a waiting job (a server had room): its wait.
        self._asked_at: Dict[int, float] = {}
        self._queue = Dispatcher(
            self._choose, self._start, self._end, clock=clock, wait_for_server=wait_for_server,
            tick=view.tick, key_of=self._key_of,
        )

    # -- the queue (any thread) ---------------------------------------------------------------

    def add(self, controls: Sequence[JobControl], *, front: bool = False) -> None:
        """Queue jobs (all at once); ``front`` for a moved job, which has waited longest."""
        if self._place is not None:
            with self._models_lock:
                for control in controls:
                    models = control.warmth.models
                    self._models_of[id(control)] = models
                    self._waiting_models[models] += 1
        try:
            self._queue.add(controls, front=front)
        except ComfyClusterError:
            for control in controls:
                self._left(control)
            raise

    def _left(self, control: JobControl) -> None:
        """``control`` left the local queue (to a server, or ended)."""
        if self._place is None:
            return
        with self._models_lock:
            models = self._models_of.pop(id(control), None)
            self._asked_at.pop(id(control), None)
            if models is not None:
                self._waiting_models[models] -= 1
                if self._waiting_models[models] <= 0:
                    del self._waiting_models[models]

    def wake(self) -> None:
        """Something a decision reads changed (a slot freed, a server came or went, a cancel)."""
        self._queue.wake()

    def attempt_ended(self, control: JobControl) -> None:
        self._queue.attempt_ended(control)

    def adopt(self, control: JobControl, server: ServerConfig, prompt_id: str, client_id: Optional[str] = None) -> None:
        """Make ``control``'s first attempt the copy ``prompt_id`` already on ``server`` (posted
        under ``client_id``, when not the pool's) and follow it (counted on the server and for
        its owner, as a dispatched attempt)."""
        attempt = Attempt(control, server.name, 1, prompt_id=prompt_id, client_id=client_id)
        control.claim(attempt, server)
        self._ledger.reserve(attempt)
        self._queue.adopted(control)
        self._launch(attempt, follow_only=True)

    def pending(self, batch: object = None) -> int:
        return self._queue.pending(batch)

    def close(self) -> List[JobControl]:
        """Stop the dispatcher; the jobs still waiting, for the pool to cancel."""
        return self._queue.close()

    # -- decisions (the dispatcher's thread) ----------------------------------------------------

    def _can(self, control: JobControl) -> Can:
        """Capability answers for ``control``'s job, memoised on it per capabilities version;
        unknown or failed node lists are (re)fetched on the probe executor, never waited for."""
        caps = self._caps
        workflow, skip = control.job.workflow, control.job.inputs

        def can(names: List[str]) -> Dict[str, Optional[str]]:
            version, cache = control.caps
            if version != caps.version:
                cache = {}
                control.caps = (caps.version, cache)
            todo = [n for n in names if n not in cache or (cache[n] is not None and n not in caps.info)]
            if todo:
                caps.fetch(todo, wait=False)
                cache.update(capable(caps, workflow, todo, skip))
            return cache

        return can

    def _key_of(self, control: JobControl) -> Optional[Hashable]:
        """Jobs alike get the same WAIT: same batch, same servers able to run them (node types,
        models and inputs alike) among the same servers asked, never tried, nothing excluded.
        None: ask for this job."""
        version, cache = control.caps
        if control.incapable or version != self._caps.version or not cache or control.job.attempts:
            return None
        stamp = (version, len(cache))  # a cache only grows within one version
        memo = control.key_memo
        if memo is None or memo[0] != stamp:
            # Jobs of other models do not wait alike under ``place`` (their warm servers differ).
            models = control.warmth.models if self._place is not None else ()
            # The servers asked count too: answers read while a server was offline say nothing
            # of it, and a job alike by them may well run there once it is back.
            able = frozenset(n for n, why in cache.items() if why is None)
            memo = (stamp, (id(control.batch), able, frozenset(cache), models))
            control.key_memo = memo
        return memo[1]

    def _choose(self, control: JobControl) -> Choice:
        job = control.job
        exclude = set(control.incapable)
        view = self._view.current(probe=False)
        can = self._can(control)
        tried = job.tried
        if tried:
            untried, _, _, _ = evaluate(view, self._servers, can, exclude | set(tried), ignore_full=True, reasons_wanted=False)
            if untried:
                exclude |= set(tried)  # another attempt goes to a server not tried yet
        cands, reasons, full, unknown = evaluate(view, self._servers, can, exclude)
        if not cands:
            if full or unknown:
                return Choice(Verdict.WAIT)
            if control.incapable and not any(r.startswith("offline") for r in reasons.values()):
                return Choice(Verdict.FAIL, error=control.last_error or no_server(reasons))
            return Choice(Verdict.NONE, error=no_server(reasons))
        try:
            if isinstance(job.batch, Batch):
                if self._place is not None and control.warmth.models:
                    # A strategy that places by warmth: a batch's job also leaves a free server
                    # to the waiting jobs warm there, and takes a warm one when it can.
                    with self._models_lock:
                        waiting = dict(self._waiting_models)
                    free = unclaimed(cands, control.warmth, waiting)
                    cands = [c for c in free if control.warmth.warm_on(c.status.models)] or free
                    if not cands:
                        return Choice(Verdict.WAIT)
                state = self.plan_state(view, can, exclude)
                server = job.batch.plan_pick(cands, state, self._queue.pending(job.batch))
                return Choice(Verdict.GO, server) if server is not None else Choice(Verdict.WAIT)
            if self._place is not None:
                return self._placed(control, view, can, exclude, cands)
            return Choice(Verdict.GO, pick(self._strategy, self._strategy_name, cands, job.workflow))
        except ComfyClusterError as exc:  # a custom strategy's bad answer fails the job, loudly
            return Choice(Verdict.FAIL, error=exc)

    def _placed(self, control: JobControl, view: View, can: Can, exclude: Set[str], cands: List[Candidate]) -> Choice:
        """The strategy's ``place``: shown every server able to run the job (full ones too)
        and the waiting jobs per model set; None means wait."""
        eligible, _, _, _ = evaluate(view, self._servers, can, exclude, ignore_full=True, reasons_wanted=False)
        now = self._clock()
        with self._models_lock:
            waiting = dict(self._waiting_models)
            waited = now - self._asked_at.setdefault(id(control), now)
        running = {e.name: t for e in eligible for t in (self._running_seconds(e.name, now),) if t is not None}
        assert self._place is not None
        try:
            chosen = self._place(cands, eligible, control.warmth, waiting, waited=waited, running=running)
        except Exception as exc:  # a strategy's bug fails this job only, loudly
            raise ConfigError(f"strategy {self._strategy_name} raised {type(exc).__name__}: {exc}") from exc
        if chosen is None:
            return Choice(Verdict.WAIT)
        if not any(c is chosen for c in cands):
            raise ConfigError(f"strategy {self._strategy_name}: placed the job on {chosen!r}, which has no room")
        return Choice(Verdict.GO, chosen.server)

    def plan_state(self, view: View, can: Can, exclude: Set[str]) -> List[Tuple[ServerConfig, float, float]]:
        """``(server, seconds until its current backlog is done, seconds per job)`` for every
        server able to take the job, full or not: the batch planner's view of the cluster."""
        eligible, _, _, _ = evaluate(view, self._servers, can, exclude, ignore_full=True, reasons_wanted=False)
        now = self._clock()
        out = []
        for c in eligible:
            d = c.expected_seconds
            backlog = max(c.status.load, c.status.in_flight) * d
            elapsed = self._running_seconds(c.name, now)
            if elapsed is not None and backlog > 0:
                backlog -= min(d, elapsed)
            out.append((c.server, max(0.0, backlog), d))
        return out

    def _running_seconds(self, server: str, now: float) -> Optional[float]:
        """How long the job executing on ``server`` (the attempt seen starting last) has run;
        None when none is seen executing."""
        starts = [a.control.last_exec_start for a in self._ledger.live(server) if a.phase is AttemptPhase.RUNNING]
        known = [s for s in starts if s is not None]
        return max(0.0, now - max(known)) if known else None

    def _start(self, control: JobControl, server: ServerConfig) -> bool:
        self._left(control)
        attempt = Attempt(control, server.name, control.job.attempts + 1)
        if not control.claim(attempt, server):
            return False
        self._ledger.reserve(attempt)  # counted on the server before anything is sent
        failures = control.job.failures
        if failures:
            previous = failures[-1]
            control.emit("retrying", server.name, from_server=previous[0], to_server=server.name, reason=previous[1])
        self._launch(attempt)
        return True

    def _end(self, control: JobControl, error: Optional[ComfyClusterError]) -> None:
        """A job leaves the local queue without a server: cancelled (``error`` None) or failed."""
        self._left(control)
        if error is None:
            control.cancelled(None, "cancelled before it reached a server")
        else:
            control.fail(None, error)
