"""ServerPool: the cluster as one object (the façade).

The pool holds the configuration, one :class:`ComfyClient` and one :class:`ServerSocket` per
server, and wires the parts that do the work: the :class:`StatusMonitor` (snapshots, probes),
:class:`Capabilities` (node lists), the :class:`Ledger` (every attempt until its end on its
server is confirmed), the :class:`Dispatcher` (the local queue; no I/O) and the
:class:`CallbackExecutor` (user callbacks). ``status``, ``select``, ``submit``, ``map`` and
``close`` are here; the attempt itself is :func:`comfy_cluster.runner.run_attempt`.

Threads (all daemons with names, all stopped by :meth:`ServerPool.close`): one status
monitor, one probe executor (probes, node lists, clean-up), one dispatcher, one callback
thread, one websocket reader per server in use, and one runner per job on a server.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .attempt import Ledger, PostGate, remove_copies
from .balance import StrategyLike, get_strategy, strategy_name
from .callbacks import CallbackExecutor
from .client import DEFAULT_TIMEOUT, PROBE_TIMEOUT, ComfyClient, Timeouts
from .config import ServerConfig, _check_unique, _make_server, servers_from_env, status_ttl_from_env, strategy_from_env
from .dispatcher import Dispatcher
from .errors import ComfyClusterError, ConfigError
from .events import ServerSocket
from .jobs import Job, JobEvent, OutputFile
from .outputs import download_outputs
from .planner import Batch
from . import scheduling
from .lifecycle import finish_cancelled
from .selection import Capabilities, View, capable, evaluate, no_server, pick
from .status import ServerStatus, StatusMonitor
from .workflow import WorkflowInputError, load_workflow

__all__ = ["ServerPool"]

log = logging.getLogger(__name__)

WorkflowLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]
#: How long close() lets runners end their jobs on the servers before cutting connections.
CLOSE_GRACE = 2.0


class ServerPool:
    """A cluster of ComfyUI servers used as one.

    ``strategy`` is a name (``least_loaded``, ``round_robin``, ``priority``,
    ``fastest_completion``), an object with ``select(candidates, workflow)``, or a callable.
    ``status_ttl`` is how long a probe result is trusted. ``clock`` (monotonic seconds) is
    injectable so TTLs and backoff are tested without sleeping; ``background_status=False``
    turns the refreshing thread off (status is then probed on demand).

    Use as a context manager, or call :meth:`close`: it cancels unfinished jobs on their
    servers and stops every thread and socket of the pool, in bounded time.
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
        client_id: Optional[str] = None,
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
        self._strategy = get_strategy(strategy, rng)
        self._clock = clock
        # The websocket clientId the servers route our jobs' events to: a process that follows
        # jobs an earlier one posted (a restarted gateway) passes the same id to get them.
        self.client_id = client_id or str(uuid.uuid4())
        self._clients: Dict[str, ComfyClient] = {s.name: ComfyClient(s, timeout=request_timeout) for s in configs}
        self._monitor = StatusMonitor(
            configs, self._clients, ttl=status_ttl, clock=clock, probe_timeout=probe_timeout,
            backoff_cap=backoff_cap, background=background_status,
        )
        self._sockets: Dict[str, ServerSocket] = {
            s.name: ServerSocket(s, self.client_id, on_status=self._status_frame(s.name), connect_timeout=ws_connect_timeout)
            for s in configs
        }
        self._reconcile_interval = reconcile_interval
        self._server_lost_after = server_lost_after
        self._callbacks = CallbackExecutor()
        self._dispatcher = Dispatcher(
            functools.partial(scheduling.choose, self), functools.partial(scheduling.start_attempt, self),
            functools.partial(scheduling.end_unplaced, self), clock=clock, wait_for_server=wait_for_server,
            tick=functools.partial(scheduling.tick, self), key_of=functools.partial(scheduling.key_of, self),
        )
        # Real time, not the injected clock: a failed node-list read is retried after seconds
        # that pass, whatever a test's clock says.
        self._caps = Capabilities(self._clients, self._monitor.submit, time.monotonic, on_change=self._dispatcher.wake)
        self._ledger = Ledger([s.name for s in configs], self._monitor, on_release=self._dispatcher.wake)
        self._view_cache: Optional[View] = None
        self._lock = threading.Lock()
        self._runners: Set[threading.Thread] = set()
        self._cleaning: Set[str] = set()
        self._hashes: Dict[Tuple[str, int, int], str] = {}
        self._seq = itertools.count()
        self._post_gate = PostGate()
        self._closed = threading.Event()
        self._monitor.add_listener(self._on_status_change)
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

    @property
    def servers(self) -> Tuple[ServerConfig, ...]:
        """The configured servers, in config order."""
        return self._servers

    @property
    def strategy(self) -> str:
        """The strategy's name."""
        return strategy_name(self._strategy)

    @property
    def _object_info(self) -> Dict[str, Dict[str, Any]]:
        return self._caps.info

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
        """Every probe (on the probe executor): forget node lists of a server that was away,
        remove copies left there, and wake the dispatcher when a server came or went."""
        if new.online and not old.online and old.checked:
            self._caps.forget(new.name)  # it may have restarted with other nodes or models
        if new.online and self._ledger.unconfirmed(new.name):
            self._schedule_cleanup(new.name)
        if new.online != old.online:
            self._dispatcher.wake()

    def _schedule_cleanup(self, name: str) -> None:
        with self._lock:
            if name in self._cleaning or self._closed.is_set():
                return
            self._cleaning.add(name)

        def clean() -> None:
            try:
                remove_copies(self._clients[name], self._ledger, name, self._clock, closed=self._closed)
            finally:
                with self._lock:
                    self._cleaning.discard(name)

        try:
            self._monitor.submit(clean)
        except RuntimeError:  # the executor is shut down: closing
            with self._lock:
                self._cleaning.discard(name)

    # -- selection ----------------------------------------------------------------------------

    def _view(self, *, probe: bool) -> View:
        """The snapshots as selection needs them, rebuilt only when one changed. With
        ``probe`` (callers' threads only), probes servers never checked and, without the
        background thread, online servers whose TTL expired; never a server known offline."""
        mon = self._monitor
        view = self._view_cache
        if view is None or view.version != mon.version:
            view = View(mon.version, mon.snapshots(), self._servers)
            self._view_cache = view
        if not probe:
            return view
        names: List[str] = view.unchecked
        if not names and not mon.background:
            now = self._clock()
            if now >= view.next_due:
                names = [n for n in mon.due(include_offline=False) if self._by_name[n].enabled]
            if now >= view.next_retry:
                self._retry_offline(view, now)
        if names:
            mon.probe(names)
            return self._view(probe=True)
        return view

    def _retry_offline(self, view: View, now: float) -> None:
        """Offline servers whose backoff is over are probed in the background, never waited for."""
        retry = [s.name for s in view.snapshots if not s.online and s.checked and now >= s.next_probe_at]
        self._monitor.probe([n for n in retry if self._by_name[n].enabled], wait_for_them=False)

    def _can(self, workflow: Optional[Mapping[str, Any]], skip: Iterable[str], *, wait: bool, job: Optional[Job] = None) -> Callable[[List[str]], Dict[str, Optional[str]]]:
        def can(names: List[str]) -> Dict[str, Optional[str]]:
            if workflow is None:
                return {}
            if job is not None:
                version, cache = job._caps
                if version != self._caps.version:
                    cache = {}
                    job._caps = (self._caps.version, cache)
                todo = [n for n in names if n not in cache or (cache[n] is not None and n not in self._caps.info)]
                if todo:
                    # Unknown or failed: (re)fetched on the probe executor once due; never waited for.
                    self._caps.fetch(todo, wait=False)
                    cache.update(capable(self._caps, workflow, todo, skip))
                return cache
            self._caps.fetch(names, wait=wait)
            return capable(self._caps, workflow, names, skip)

        return can

    def select(self, workflow: Optional[WorkflowLike] = None, exclude: Iterable[str] = ()) -> ServerConfig:
        """The server the strategy picks now among those passing the filters.

        Filters: enabled; online; fewer than ``max_queue`` of this process's jobs there; not in
        ``exclude`` (names); and, given a workflow, offering every node type and model file it
        names. Raises :class:`NoServerAvailable` saying, per server, why none qualified.
        Never waits on a probe of a server already known to be offline.
        """
        self._check_open()
        wf = load_workflow(workflow) if workflow is not None else None
        cands, reasons, _, _ = evaluate(self._view(probe=True), self._servers, self._can(wf, (), wait=True), exclude)
        if not cands:
            raise no_server(reasons)
        return pick(self._strategy, self.strategy, cands, wf)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self,
        workflow: WorkflowLike,
        *,
        inputs: Optional[Mapping[str, str]] = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        owner: Optional[str] = None,
        on_attempt: Optional[Callable[[str, str, str], None]] = None,
    ) -> Job:
        """Run ``workflow`` on the cluster; returns a :class:`Job` at once.

        ``inputs`` maps LoadImage node ids to local image files, uploaded (under a name made
        from their content) to whichever server runs the job. Raises at once (nothing sent)
        for a malformed workflow or a missing input file, and :class:`NoServerAvailable` when
        no server is online and able to run it.

        ``owner`` names who the job is for (a user of a shared gateway): when jobs of several
        owners wait, the next free server slot goes to the owner with the fewest jobs on the
        servers now (then the fewest served so far), not to the oldest job.

        ``on_attempt(prompt_id, server, phase)`` is called inline on a library thread:
        ``"reserved"`` before each ``POST /prompt`` (if it raises, nothing is posted and the
        job fails), ``"ended"`` once that copy's end on its server is confirmed. A process
        that records them can follow its jobs after a crash with :meth:`adopt`.
        """
        (job,) = self._prepare([workflow], [inputs], on_event=on_event, retries=retries, owner=owner)
        job._on_attempt = on_attempt
        self._enqueue([job])
        return job

    def adopt(
        self,
        workflow: WorkflowLike,
        server: str,
        prompt_id: str,
        *,
        inputs: Optional[Mapping[str, str]] = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        owner: Optional[str] = None,
        on_attempt: Optional[Callable[[str, str, str], None]] = None,
    ) -> Job:
        """A :class:`Job` for ``workflow`` already posted to ``server`` as ``prompt_id`` (by an
        earlier process: a gateway that restarted, a replica that died). It is followed there
        to its end, never posted again; if the server does not hold it (it never arrived, or
        the server restarted) it runs like a submitted job, on any server. Arguments as in
        :meth:`submit`; the job's ``inputs`` must still exist for that case. Raises
        :class:`ConfigError` for a server not in the pool."""
        self._check_open()
        config = self._by_name.get(server)
        if config is None:
            raise ConfigError(f"adopt: no server named {server!r} in the pool")
        wf = load_workflow(workflow)
        checked = {str(k): os.fspath(v) for k, v in (inputs or {}).items()}
        job = Job(wf, inputs=checked, on_event=on_event, retries=retries, owner=owner)
        job._pool = self
        job._executor = self._callbacks
        job._seq = next(self._seq)
        job._on_attempt = on_attempt
        scheduling.adopt_attempt(self, job, config, prompt_id)
        return job

    def _prepare(
        self, workflows: Sequence[WorkflowLike], inputs: Sequence[Optional[Mapping[str, str]]], *,
        on_event: Optional[Callable[[JobEvent], None]], retries: int, owner: Optional[str], batch: Any = None,
    ) -> List[Job]:
        """Check every workflow and input, and that some server could run each; make the jobs.
        Nothing is sent."""
        self._check_open()
        if owner is not None and not isinstance(owner, str):
            raise WorkflowInputError(f"owner: must be a string or None, got {type(owner).__name__}")
        if retries < 0:
            raise WorkflowInputError(f"retries: must be >= 0, got {retries}")
        jobs = []
        for i, (workflow, job_inputs) in enumerate(zip(workflows, inputs)):
            where = f"workflows[{i}]: " if batch is not None else ""
            try:
                wf = load_workflow(workflow)
                checked = _check_inputs(wf, job_inputs or {})
            except WorkflowInputError as exc:
                raise WorkflowInputError(f"{where}{exc}") from None
            job = Job(wf, inputs=checked, on_event=on_event, retries=retries, index=i if batch is not None else None, owner=owner)
            job.batch = batch
            job._pool = self
            job._executor = self._callbacks
            job._seq = next(self._seq)
            jobs.append(job)
        view = self._view(probe=True)
        seen: Set[Tuple[str, ...]] = set()
        for job in jobs:
            kind = tuple(sorted(str(n.get("class_type")) for n in job.workflow.values()))
            if kind in seen and not job.inputs:
                continue
            seen.add(kind)
            cands, reasons, _, _ = evaluate(view, self._servers, self._can(job.workflow, job.inputs, wait=True), ignore_full=True)
            if not cands:
                raise no_server(reasons)
        return jobs

    def _enqueue(self, jobs: List[Job]) -> None:
        self._check_open()
        self._dispatcher.add(jobs)

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
        owner: Optional[str] = None,
    ) -> List[Any]:
        """Run many workflows over the cluster and return their results in input order.

        Late binding: at most ``max_queue`` jobs per server at once; each server gets the next
        job when it frees, planned so the batch ends as early as the cluster's speeds allow.
        One failed job does not stop the others (unless ``fail_fast``); once all have ended the
        first error is raised, or, with ``return_exceptions``, put in its place in the list.
        When ``timeout`` passes first, the batch is cancelled and TimeoutError raised.
        """
        batch = self.map_async(workflows, inputs=inputs, on_event=on_event, retries=retries, fail_fast=fail_fast, owner=owner)
        return batch.results_or_cancel(timeout, return_exceptions=return_exceptions)

    def map_async(
        self,
        workflows: Iterable[WorkflowLike],
        *,
        inputs: Any = None,
        on_event: Optional[Callable[[JobEvent], None]] = None,
        retries: int = 2,
        fail_fast: bool = False,
        owner: Optional[str] = None,
    ) -> Batch:
        """The non-blocking form of :meth:`map`: a :class:`~comfy_cluster.planner.Batch`.
        Every workflow and input is checked before any job is sent."""
        return Batch.start(self, list(workflows), inputs=inputs, on_event=on_event, retries=retries, fail_fast=fail_fast, owner=owner)

    def _job_cancel_requested(self, job: Job) -> None:
        """From ``job.cancel()``: the dispatcher ends a job still in the local queue on its
        next pass (at once: it is woken); a runner sees the request itself."""
        self._dispatcher.wake()

    # -- outputs ------------------------------------------------------------------------------

    def _download(self, server: ServerConfig, files: Sequence[OutputFile], dest_dir: str, tag: str = "") -> List[str]:
        return download_outputs(self._clients[server.name], server, files, dest_dir, tag)

    # -- closing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ComfyClusterError("the pool is closed")

    def close(self, *, cancel: bool = True) -> None:
        """Cancel unfinished jobs (on their servers too), stop every thread, close every socket.

        Bounded: runners get ``CLOSE_GRACE`` seconds to remove their jobs from the servers;
        then every connection is cut, and a job still without an end is reported cancelled
        (a copy that could not be removed is logged with its server and prompt_id).

        ``cancel=False`` leaves the jobs running on their servers (another process that
        recorded them follows them there: a gateway replica handing over) and only cuts
        the connections; their ``Job`` objects end as cancelled here.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        for job in self._dispatcher.close():
            finish_cancelled(job, None, "cancelled: pool closed")
        running = [a for a in self._ledger.live() if a.job is not None]
        if cancel:
            for a in running:
                a.job.cancel()
            self._join_runners(time.monotonic() + CLOSE_GRACE)
        for client in self._clients.values():
            client.close()  # cuts requests still hanging (a server that never answers)
        for sock in self._sockets.values():
            sock.close()
        self._join_runners(time.monotonic() + CLOSE_GRACE)
        for a in running:
            if not a.job._final:
                finish_cancelled(a.job, a.server, "cancelled: pool closed")
        left = self._ledger.live()
        if left:
            log.warning("pool closed with %d job copies not confirmed removed: %s", len(left),
                        ", ".join(f"{a.prompt_id} on {a.server}" for a in left))
        self._monitor.close()
        self._callbacks.close()
        for a in running:
            a.job._force_done()

    def _join_runners(self, deadline: float) -> None:
        while True:
            with self._lock:
                runners = [t for t in self._runners if t is not threading.current_thread() and t.is_alive()]
            if not runners or time.monotonic() >= deadline:
                return
            runners[0].join(timeout=max(0.0, deadline - time.monotonic()))


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
