"""ServerPool: the cluster as one object.

The pool holds the servers, one :class:`ComfyClient` and one :class:`ServerSocket` per server,
the :class:`StatusMonitor` with the current snapshots, and the dispatcher: jobs wait in a
local queue until a server has room (fewer than ``max_queue`` of this process's jobs), then a
runner thread makes one attempt there. A failed server hands its jobs back to the local queue,
and the dispatcher gives them to another server.

Threads (all daemons with names, all stopped by :meth:`ServerPool.close`): one status
monitor, one probe executor, one dispatcher, one websocket reader per server in use, and one
runner per job currently on a server.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .balance import Candidate, StrategyLike, expected_seconds, get_strategy, strategy_name
from .client import DEFAULT_TIMEOUT, PROBE_TIMEOUT, ComfyClient, Timeouts
from .config import ServerConfig, _check_unique, _make_server, servers_from_env, status_ttl_from_env, strategy_from_env
from .errors import (
    ComfyClusterError,
    ConfigError,
    JobCancelled,
    JobFailed,
    NoServerAvailable,
    ServerError,
    WorkflowError,
)
from .events import ServerSocket
from .jobs import AttemptContext, best_effort_cancel, Job, JobEvent, JobResult, Outcome, OutputFile, run_attempt
from .outputs import download_outputs
from .status import ServerStatus, StatusMonitor
from .workflow import WorkflowInputError, load_workflow, missing_capabilities, set_inputs

__all__ = ["ServerPool"]

log = logging.getLogger(__name__)

WorkflowLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]
_WAIT = object()  # the dispatcher's "every suitable server is full: keep the job local"


class ServerPool:
    """A cluster of ComfyUI servers used as one.

    ``strategy`` is a name (``least_loaded``, ``round_robin``, ``priority``,
    ``fastest_completion``), an object with ``select(candidates, workflow)``, or a callable.
    ``status_ttl`` is how long a probe result is trusted. ``clock`` (monotonic seconds) is
    injectable so TTLs and backoff are tested without sleeping; ``background_status=False``
    turns the refreshing thread off (status is then probed on demand).

    Use as a context manager, or call :meth:`close`: it cancels unfinished jobs on their
    servers and stops every thread and socket of the pool.
    """

    def __init__(
        self,
        servers: Iterable[Union[ServerConfig, Mapping[str, Any]]],
        strategy: StrategyLike = "least_loaded",
        status_ttl: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        background_status: bool = True,
        probe_timeout: Timeouts = PROBE_TIMEOUT,
        request_timeout: Timeouts = DEFAULT_TIMEOUT,
        backoff_cap: float = 30.0,
        reconcile_interval: float = 5.0,
        server_lost_after: float = 15.0,
        wait_for_server: float = 30.0,
        ws_connect_timeout: float = 5.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        configs: List[ServerConfig] = []
        for i, s in enumerate(servers):
            if isinstance(s, ServerConfig):
                configs.append(s)
            elif isinstance(s, Mapping):
                configs.append(_make_server(dict(s), f"servers[{i}]"))
            else:
                raise ConfigError(f"servers[{i}]: must be a ServerConfig or a dict, got {type(s).__name__}")
        if not configs:
            raise ConfigError("servers: give at least one server")
        _check_unique(configs, "servers")
        if not (status_ttl >= 0) or math.isinf(status_ttl):
            raise ConfigError(f"status_ttl: must be >= 0 seconds, got {status_ttl!r}")
        self._servers: Tuple[ServerConfig, ...] = tuple(configs)
        self._by_name: Dict[str, ServerConfig] = {s.name: s for s in configs}
        self._index: Dict[str, int] = {s.name: i for i, s in enumerate(configs)}
        self._strategy = get_strategy(strategy, rng)
        self._clock = clock
        self.client_id = str(uuid.uuid4())
        self._clients: Dict[str, ComfyClient] = {s.name: ComfyClient(s, timeout=request_timeout) for s in configs}
        self._monitor = StatusMonitor(
            configs,
            self._clients,
            ttl=status_ttl,
            clock=clock,
            probe_timeout=probe_timeout,
            backoff_cap=backoff_cap,
            background=background_status,
        )
        self._monitor.add_listener(self._on_status_change)
        self._sockets: Dict[str, ServerSocket] = {
            s.name: ServerSocket(
                s, self.client_id, on_status=self._status_frame(s.name), connect_timeout=ws_connect_timeout
            )
            for s in configs
        }
        self._object_info: Dict[str, Dict[str, Any]] = {}
        self._view_cache: Optional[_View] = None
        self._reconcile_interval = reconcile_interval
        self._server_lost_after = server_lost_after
        self._wait_for_server = wait_for_server
        self._cond = threading.Condition()
        self._pending: Deque[Job] = collections.deque()
        self._on_server: Dict[str, Set[Job]] = {s.name: set() for s in configs}
        self._runners: Set[threading.Thread] = set()
        self._orphans: Dict[str, Set[str]] = {s.name: set() for s in configs}
        self._dispatcher: Optional[threading.Thread] = None
        # Fair share between owners: jobs of each owner on a server now, and dispatched ever.
        self._owner_running: Dict[Optional[str], int] = collections.Counter()
        self._owner_served: Dict[Optional[str], int] = collections.Counter()
        self._seq = itertools.count()
        self._closed = False
        log.debug("pool of %d servers, strategy %s", len(configs), self.strategy)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "ServerPool":
        """A pool configured from the environment (see :mod:`comfy_cluster.config`).

        Keyword arguments override the environment (``strategy=``, ``status_ttl=``, ...).
        """
        servers, source = servers_from_env(environ)
        if "strategy" not in kwargs:
            kwargs["strategy"] = strategy_from_env(environ) or "least_loaded"
        if "status_ttl" not in kwargs:
            ttl = status_ttl_from_env(environ)
            if ttl is not None:
                kwargs["status_ttl"] = ttl
        try:
            pool = cls(servers, **kwargs)
        except ConfigError as exc:
            if str(exc).startswith("strategy:"):
                raise ConfigError(f"NUKE_COMFYUI_STRATEGY: {exc}") from None
            raise
        log.info("configured %d server(s) from %s", len(servers), source)
        return pool

    def __repr__(self) -> str:
        return f"ServerPool({[s.name for s in self._servers]!r}, strategy={self.strategy!r})"

    def __enter__(self) -> "ServerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- configuration ------------------------------------------------------------------------

    @property
    def servers(self) -> Tuple[ServerConfig, ...]:
        """The configured servers, in config order."""
        return self._servers

    @property
    def strategy(self) -> str:
        """The strategy's name."""
        return strategy_name(self._strategy)

    def _server_by_name(self, name: str) -> Optional[ServerConfig]:
        return self._by_name.get(name)

    # -- status -------------------------------------------------------------------------------

    def status(self, refresh: bool = False) -> List[ServerStatus]:
        """One :class:`ServerStatus` per server, in config order.

        Cached results younger than ``status_ttl`` are returned as they are; ``refresh=True``
        probes every server now (in parallel, each bounded by the probe timeout).
        """
        self._check_open()
        return self._monitor.refresh(force=refresh)

    def _status_frame(self, name: str) -> Callable[[int], None]:
        return lambda remaining: self._monitor.queue_reading(name, remaining)

    def _on_status_change(self, old: ServerStatus, new: ServerStatus) -> None:
        if new.online and not old.online:
            if old.checked:
                # The server may have restarted with other nodes or models.
                self._object_info.pop(new.name, None)
            self._clean_orphans(new.name)
        if new.online != old.online:
            with self._cond:
                self._cond.notify_all()

    def _clean_orphans(self, name: str) -> None:
        """Remove copies of moved jobs from a server that is reachable again."""
        with self._cond:
            ids, self._orphans[name] = self._orphans[name], set()
        if not ids:
            return
        for pid in ids:
            best_effort_cancel(self._clients[name], pid)
        log.info("removed %d moved job(s) left on %s", len(ids), name)

    # -- selection ----------------------------------------------------------------------------

    def _view(self) -> "_View":
        """What selection needs from the snapshots, rebuilt only when a snapshot changed.

        Probes servers never checked, and (without the background thread) online servers whose
        TTL has expired; never a server known to be offline.
        """
        view = self._view_cache
        mon = self._monitor
        if view is None or view.version != mon.version:
            view = _View(mon.version, mon.snapshots(), self._servers)
            self._view_cache = view
        probe: List[str] = []
        if view.unchecked:
            probe = view.unchecked
        elif not mon.background:
            now = self._clock()
            if now >= view.next_due:
                probe = [n for n in mon.due(include_offline=False) if self._by_name[n].enabled]
            if now >= view.next_retry:
                # Offline servers whose backoff is over are probed in the background of this
                # call, never waited for: the next selection sees them if they are back.
                retry = [s.name for s in view.snapshots if not s.online and s.checked and now >= s.next_probe_at]
                mon.probe([n for n in retry if self._by_name[n].enabled], wait_for_them=False)
        if probe:
            mon.probe(probe)
            return self._view()
        return view

    def _object_info_for(self, names: Sequence[str]) -> Dict[str, Optional[Dict[str, Any]]]:
        missing = [n for n in names if n not in self._object_info]
        if missing:
            def fetch(n: str) -> None:
                try:
                    self._object_info[n] = self._clients[n].object_info(timeout=(PROBE_TIMEOUT[0], 10.0))
                except ComfyClusterError as exc:
                    log.warning("cannot read object_info of %s: %s", n, exc)

            futures = [self._monitor.submit(fetch, n) for n in missing]
            for f in futures:
                f.result()
        return {n: self._object_info.get(n) for n in names}

    def _evaluate(
        self,
        workflow: Optional[Mapping[str, Any]],
        exclude: Iterable[str] = (),
        *,
        skip_nodes: Iterable[str] = (),
        ignore_full: bool = False,
    ) -> Tuple[List[Candidate], Dict[str, str], List[str]]:
        """Apply the filters: ``(candidates, reasons of the others, names that are only full)``.

        The reasons are worked out only when no server qualifies (the hot path skips them).
        """
        view = self._view()
        excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
        base = view.online
        if workflow is not None and base:
            base = self._capable(base, workflow, skip_nodes, None)
        if ignore_full:
            cands = [c for c in base if c.server.name not in excluded]
        else:
            cands = [c for c in base if c.status.in_flight < c.server.max_queue and c.server.name not in excluded]
        if cands:
            return cands, {}, []
        reasons: Dict[str, str] = {}
        full: List[str] = []
        for srv, st in zip(self._servers, view.snapshots):
            if not srv.enabled:
                reasons[srv.name] = "disabled"
            elif srv.name in excluded:
                reasons[srv.name] = "excluded"
            elif not st.online:
                reasons[srv.name] = f"offline: {st.error or 'not reachable'}"
        online = [c for c in view.online if c.server.name not in excluded]
        if workflow is not None and online:
            online = self._capable(online, workflow, skip_nodes, reasons)
        for c in online:
            if not ignore_full and c.status.in_flight >= c.server.max_queue:
                reasons[c.name] = f"full ({c.status.in_flight} of max_queue {c.server.max_queue} jobs)"
                full.append(c.name)
        return [], reasons, full

    def _capable(
        self,
        candidates: Sequence[Candidate],
        workflow: Mapping[str, Any],
        skip_nodes: Iterable[str],
        reasons: Optional[Dict[str, str]],
    ) -> List[Candidate]:
        """The candidates offering every node type and model ``workflow`` names."""
        infos = self._object_info_for([c.name for c in candidates])
        kept = []
        for c in candidates:
            info = infos.get(c.name)
            if info is None:
                if reasons is not None:
                    reasons[c.name] = "cannot read its node list (/object_info)"
                continue
            types, models = missing_capabilities(workflow, info, skip_nodes=skip_nodes)
            if types:
                if reasons is not None:
                    reasons[c.name] = f"missing node types {', '.join(types)}"
            elif models:
                if reasons is not None:
                    reasons[c.name] = f"missing model {', '.join(models)}"
            else:
                kept.append(c)
        return kept

    def _pick(self, candidates: Sequence[Candidate], workflow: Optional[Mapping[str, Any]]) -> ServerConfig:
        chosen = self._strategy.select(list(candidates), workflow)
        if isinstance(chosen, Candidate):
            return chosen.server
        if isinstance(chosen, ServerConfig):
            return chosen
        if isinstance(chosen, str) and chosen in self._by_name:
            return self._by_name[chosen]
        if chosen is None:
            raise NoServerAvailable(f"strategy {self.strategy} chose no server")
        raise ConfigError(f"strategy {self.strategy}: returned {type(chosen).__name__}, not a candidate")

    def select(self, workflow: Optional[WorkflowLike] = None, exclude: Iterable[str] = ()) -> ServerConfig:
        """The server the strategy picks now among those passing the filters.

        Filters: enabled; online; fewer than ``max_queue`` of this process's jobs there; not in
        ``exclude`` (names); and, given a workflow, offering every node type and model file it
        names. Raises :class:`NoServerAvailable` saying, per server, why none qualified.
        Never waits on a probe of a server already known to be offline.
        """
        self._check_open()
        wf = load_workflow(workflow) if workflow is not None else None
        candidates, reasons, _ = self._evaluate(wf, exclude)
        if not candidates:
            raise _no_server(reasons)
        return self._pick(candidates, wf)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        workflow: WorkflowLike,
        *,
        inputs: Optional[Mapping[str, str]] = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        owner: Optional[str] = None,
        _index: Optional[int] = None,
        _batch: Any = None,
    ) -> Job:
        """Run ``workflow`` on the cluster; returns a :class:`Job` at once.

        ``inputs`` maps LoadImage node ids to local image files, uploaded to whichever server
        runs the job. Raises at once (nothing sent) for a malformed workflow or a missing input
        file, and :class:`NoServerAvailable` when no server is online and able to run it.

        ``owner`` names who the job is for (a user of a shared gateway): when jobs of several
        owners wait, the next free server slot goes to the owner with the fewest jobs on the
        servers now (then the fewest served so far), not to the oldest job.
        """
        self._check_open()
        if owner is not None and not isinstance(owner, str):
            raise WorkflowInputError(f"owner: must be a string or None, got {type(owner).__name__}")
        wf = load_workflow(workflow)
        checked_inputs = _check_inputs(wf, inputs or {})
        if retries < 0:
            raise WorkflowInputError(f"retries: must be >= 0, got {retries}")
        candidates, reasons, full = self._evaluate(wf, skip_nodes=checked_inputs.keys(), ignore_full=True)
        if not candidates:
            raise _no_server(reasons)
        job = Job(wf, inputs=checked_inputs, on_event=on_event, retries=retries, index=_index, owner=owner)
        job.batch = _batch
        job._pool = self
        job._seq = next(self._seq)
        with self._cond:
            self._check_open()
            self._pending.append(job)
            self._start_dispatcher()
            self._cond.notify_all()
        return job

    def map(
        self,
        workflows: Iterable[WorkflowLike],
        *,
        inputs: Any = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        fail_fast: bool = False,
        return_exceptions: bool = False,
        timeout: Optional[float] = None,
    ) -> List[Any]:
        """Run many workflows over the cluster and return their results in input order.

        Late binding: at most ``max_queue`` jobs per server at once; each server gets the next
        job when it frees, planned so the batch ends as early as the cluster's speeds allow.
        One failed job does not stop the others (unless ``fail_fast``); once all have ended the
        first error is raised, or, with ``return_exceptions``, put in its place in the list.
        """
        batch = self.map_async(workflows, inputs=inputs, on_event=on_event, retries=retries, fail_fast=fail_fast)
        return batch.results(timeout=timeout, return_exceptions=return_exceptions)

    def map_async(
        self,
        workflows: Iterable[WorkflowLike],
        *,
        inputs: Any = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        fail_fast: bool = False,
    ) -> Any:
        """The non-blocking form of :meth:`map`: a :class:`~comfy_cluster.dispatch.Batch`."""
        from .dispatch import Batch

        return Batch.start(self, list(workflows), inputs=inputs, on_event=on_event, retries=retries, fail_fast=fail_fast)

    # -- the dispatcher -----------------------------------------------------------------------

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None or not self._dispatcher.is_alive():
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="comfy-cluster-dispatch", daemon=True)
            self._dispatcher.start()

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if not self._pending:
                    self._cond.wait(timeout=1.0)
                    continue
                jobs = list(self._pending)
            progressed = False
            # Jobs alike (same batch, same node types, never tried) get the same answer: once
            # one of them must wait, the rest of its kind wait too without asking again.
            waiting: Set[Tuple[int, Tuple[str, ...]]] = set()
            for job in self._fair_order(jobs):
                if self._closed:
                    return
                key = (id(job.batch), job.kind_key) if not (job.tried or job.incapable or job.cancel_requested) else None
                if key is not None and key in waiting:
                    continue
                try:
                    step = self._dispatch_one(job)
                    progressed |= step == "moved"
                    if step == "full" and key is not None:
                        waiting.add(key)
                except Exception as exc:  # a bug here must fail the job, not the dispatcher
                    log.exception("dispatching job failed")
                    self._drop_pending(job)
                    job._finish("failed", error=ServerError(f"internal error while dispatching: {exc!r}"))
            with self._cond:
                if not self._closed and not progressed:
                    self._cond.wait(timeout=0.25)

    def _fair_order(self, jobs: List[Job]) -> Iterable[Job]:
        """``jobs`` (oldest first) in the order free slots go to them: with several owners,
        the next one is the oldest job of the owner with the fewest jobs on servers now (then
        the fewest dispatched ever). Read lazily, so each dispatch counts for the next pick."""
        if len({j.owner for j in jobs}) <= 1:
            yield from jobs
            return
        queues: Dict[Optional[str], Deque[Job]] = {}
        for j in sorted(jobs, key=lambda j: j._seq):
            queues.setdefault(j.owner, collections.deque()).append(j)
        while queues:
            owner = min(
                queues, key=lambda o: (self._owner_running[o], self._owner_served[o], queues[o][0]._seq)
            )
            q = queues[owner]
            job = q.popleft()
            if not q:
                del queues[owner]
            yield job

    def _drop_pending(self, job: Job) -> bool:
        with self._cond:
            try:
                self._pending.remove(job)
                return True
            except ValueError:
                return False

    def _dispatch_one(self, job: Job) -> str:
        """Try to give ``job`` a server: ``moved`` (dispatched or ended), ``full`` (every
        suitable server is full) or ``none`` (no suitable server online yet)."""
        if job.cancel_requested:
            if self._drop_pending(job):
                self._finish_cancelled(job, None, "cancelled before it reached a server")
            return "moved"
        decision = self._choose(job)
        if decision is _WAIT:
            return "full"
        if isinstance(decision, NoServerAvailable):
            if job.incapable and not any(r.startswith("offline") for r in decision.reasons.values()):
                # Every server that could come back lacks what this workflow needs.
                if self._drop_pending(job):
                    self._fail(job, job.last_error or decision)
                return "moved"
            now = self._clock()
            if job.waiting_since is None:
                job.waiting_since = now
            if now - job.waiting_since >= self._wait_for_server:
                if self._drop_pending(job):
                    self._fail(job, decision)
                return "moved"
            return "none"
        assert isinstance(decision, ServerConfig)
        job.waiting_since = None
        with self._cond:
            if self._closed or job not in self._pending:
                return "none"
            self._pending.remove(job)
            self._monitor.job_reserved(decision.name)
            self._on_server[decision.name].add(job)
            self._owner_running[job.owner] += 1
            self._owner_served[job.owner] += 1
            job.attempts += 1
            if decision.name not in job.tried:
                job.tried.append(decision.name)
            previous = job.server
            job.server = decision
            thread = threading.Thread(
                target=self._run_attempt, args=(job, decision), name=f"comfy-cluster-job-{decision.name}", daemon=True
            )
            self._runners.add(thread)
        if job.failures and previous is not None:
            job._emit("retrying", decision.name, from_server=previous.name, to_server=decision.name, reason=job.failures[-1][1])
        thread.start()
        return "moved"

    def _choose(self, job: Job) -> Any:
        """A server for ``job`` now, ``_WAIT`` (all suitable servers are full), or NoServerAvailable."""
        exclude = set(job.incapable)
        skip = job.inputs.keys()
        if job.tried:
            untried, _, _ = self._evaluate(job.workflow, exclude | set(job.tried), skip_nodes=skip, ignore_full=True)
            if untried:
                exclude |= set(job.tried)  # another attempt goes to a server not tried yet
        candidates, reasons, full = self._evaluate(job.workflow, exclude, skip_nodes=skip)
        if not candidates:
            return _WAIT if full else _no_server(reasons)
        if job.batch is not None and getattr(job.batch, "planned", False):
            return job.batch.plan_pick(job, candidates, self._plan_state(job.workflow, exclude, skip))
        return self._pick(candidates, job.workflow)

    def _plan_state(self, workflow: Mapping[str, Any], exclude: Set[str], skip: Iterable[str]) -> List[Tuple[ServerConfig, float, float]]:
        """``(server, seconds until its current backlog is done, seconds per job)`` for every
        server able to take the job, full or not: the batch planner's view of the cluster."""
        eligible, _, _ = self._evaluate(workflow, exclude, skip_nodes=skip, ignore_full=True)
        now = self._clock()
        out = []
        for c in eligible:
            d = c.expected_seconds
            ahead = max(c.status.load, c.status.in_flight)
            backlog = ahead * d
            with self._cond:
                jobs = list(self._on_server[c.name])
            starts = [j._last_exec_start for j in jobs if j.status == "running" and j._last_exec_start is not None]
            if starts and backlog > 0:
                backlog -= min(d, max(0.0, now - max(starts)))
            out.append((c.server, max(0.0, backlog), d))
        return out

    def _run_attempt(self, job: Job, server: ServerConfig) -> None:
        name = server.name
        try:
            ctx = AttemptContext(
                client=self._clients[name],
                socket=self._sockets[name],
                client_id=self.client_id,
                # The job itself is already counted in the load: the ones ahead of it.
                position=lambda: max(0, self._monitor.snapshot(name).load - 1),
                reconcile_interval=self._reconcile_interval,
                server_lost_after=self._server_lost_after,
                clock=self._clock,
            )
            outcome = run_attempt(job, server, ctx, lambda client: self._uploaded_workflow(job, client))
        except Exception as exc:  # never lose a job to a bug: fail it with the reason
            log.exception("job attempt on %s crashed", name)
            outcome = Outcome("failed", error=ServerError(f"{name}: internal error: {exc!r}", server=name))
        try:
            self._attempt_done(job, server, outcome)
        finally:
            with self._cond:
                self._runners.discard(threading.current_thread())
                self._cond.notify_all()

    def _uploaded_workflow(self, job: Job, client: ComfyClient) -> Dict[str, Any]:
        if not job.inputs:
            return job.workflow
        values = {node: {"image": client.upload_image(path)} for node, path in job.inputs.items()}
        return set_inputs(job.workflow, values)

    def _attempt_done(self, job: Job, server: ServerConfig, outcome: Outcome) -> None:
        name = server.name
        ok = True if outcome.kind == "succeeded" else False if outcome.kind == "failed" else None
        self._monitor.job_released(name, seconds=outcome.exec_seconds, ok=ok)
        with self._cond:
            self._on_server[name].discard(job)
            self._owner_running[job.owner] -= 1
        if outcome.kind == "succeeded":
            result = JobResult(
                prompt_id=job.prompt_id or "",
                server=name,
                outputs=outcome.result_outputs or {},
                attempts=job.attempts,
                seconds=time.monotonic() - job.created,
            )
            job._emit("succeeded", name, raw=outcome.raw)
            job._finish("succeeded", result=result)
        elif outcome.kind == "failed":
            err = outcome.error or JobFailed(f"{name}: job failed", server=name)
            if isinstance(err, (JobFailed, ServerError)) and job.failures:
                err.attempts = list(job.failures) + [(name, str(err))]
            job._emit("failed", name, reason=str(err), raw=outcome.raw)
            job._finish("failed", error=err)
        elif outcome.kind == "cancelled":
            self._finish_cancelled(job, name, outcome.reason or "cancelled", raw=outcome.raw)
        else:
            self._handle_retry(job, server, outcome)
        with self._cond:
            self._cond.notify_all()

    def _handle_retry(self, job: Job, server: ServerConfig, outcome: Outcome) -> None:
        name = server.name
        job.failures.append((name, outcome.reason))
        log.warning("job %s left %s: %s", job.prompt_id, name, outcome.reason)
        if outcome.server_down:
            self._monitor.mark_failed(name, outcome.reason)
        if job.prompt_id and outcome.server_down:
            with self._cond:
                self._orphans[name].add(job.prompt_id)
        if outcome.incapable:
            job.incapable.add(name)
            job.last_error = outcome.error if isinstance(outcome.error, ComfyClusterError) else None
        if job.cancel_requested:
            self._finish_cancelled(job, name, "cancelled")
            return
        if job.attempts > job.retries:
            if outcome.incapable and isinstance(outcome.error, WorkflowError):
                err: ComfyClusterError = outcome.error
            else:
                tried = "; ".join(f"{s}: {r}" for s, r in job.failures)
                err = ServerError(
                    f"job failed after {job.attempts} attempt(s): {tried}", server=name, attempts=job.failures
                )
            job._emit("failed", name, reason=str(err))
            job._finish("failed", error=err)
            return
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                # Back to the front: it has waited longest.
                self._pending.appendleft(job)
                job._set_status("queued")
        if closed:
            self._finish_cancelled(job, name, "pool closed")

    def _fail(self, job: Job, err: ComfyClusterError) -> None:
        job._emit("failed", None, reason=str(err))
        job._finish("failed", error=err)

    def _finish_cancelled(self, job: Job, server: Optional[str], reason: str, raw: Optional[Dict[str, Any]] = None) -> None:
        job._emit("cancelled", server, reason=reason, raw=raw)
        job._finish("cancelled", error=JobCancelled(f"job {job.prompt_id or '(not submitted)'} {reason}", prompt_id=job.prompt_id or "", server=server))

    def _job_cancel_requested(self, job: Job) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- outputs ------------------------------------------------------------------------------

    def _download(self, server: ServerConfig, files: Sequence[OutputFile], dest_dir: str, tag: str = "") -> List[str]:
        return download_outputs(self._clients[server.name], server, files, dest_dir, tag)

    # -- closing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ComfyClusterError("the pool is closed")

    def close(self) -> None:
        """Cancel unfinished jobs (on their servers too), stop every thread, close every socket."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            running = [j for jobs in self._on_server.values() for j in jobs]
            self._cond.notify_all()
        for job in pending:
            self._finish_cancelled(job, None, "cancelled: pool closed")
        for job in running:
            job.cancel()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=10)
        deadline = time.monotonic() + 15.0
        while True:
            with self._cond:
                runners = [t for t in self._runners if t is not threading.current_thread()]
            if not runners or time.monotonic() > deadline:
                break
            runners[0].join(timeout=max(0.0, deadline - time.monotonic()))
        for sock in self._sockets.values():
            sock.close()
        self._monitor.close()
        for client in self._clients.values():
            client.close()


class _View:
    """Selection's view of one version of the snapshots: the online, enabled servers as
    candidates (with expected job durations), what still needs a first probe, and when the
    next TTL expires."""

    __slots__ = ("version", "snapshots", "online", "unchecked", "next_due", "next_retry")

    def __init__(self, version: int, snapshots: List[ServerStatus], servers: Sequence[ServerConfig]) -> None:
        self.version = version
        self.snapshots = snapshots
        exp = expected_seconds(snapshots, servers)
        self.online = [
            Candidate(srv, st, i, exp[i]) for i, (srv, st) in enumerate(zip(servers, snapshots)) if srv.enabled and st.online
        ]
        self.unchecked = [st.name for srv, st in zip(servers, snapshots) if srv.enabled and not st.checked]
        self.next_due = min((st.next_probe_at for st in snapshots if st.online), default=math.inf)
        self.next_retry = min((st.next_probe_at for st in snapshots if not st.online and st.checked), default=math.inf)


def _no_server(reasons: Mapping[str, str]) -> NoServerAvailable:
    detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    return NoServerAvailable(f"no server can take the job ({detail})", dict(reasons))


def _check_inputs(workflow: Mapping[str, Any], inputs: Mapping[str, str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for node_id, path in inputs.items():
        node_id = str(node_id)
        node = workflow.get(node_id)
        if not isinstance(node, Mapping):
            raise WorkflowInputError(f"inputs: node {node_id} is not in the workflow")
        if "image" not in (node.get("inputs") or {}) and node.get("class_type") != "LoadImage":
            raise WorkflowInputError(f"inputs: node {node_id} ({node.get('class_type')}) has no image input")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise WorkflowInputError(f"inputs: node {node_id}: file not found: {path}")
        out[node_id] = path
    return out
