"""ServerPool: the cluster as one object (the façade).

The pool is the composition root: it holds the configuration, one :class:`ComfyClient` and
one :class:`ServerSocket` per server, and builds and wires the parts that do the work, each
owning its state and handed its collaborators: the :class:`StatusMonitor` (snapshots,
probes) and its :class:`StatusView`, :class:`Capabilities` (node lists), the :class:`Ledger`
(every attempt until its end on its server is confirmed), the :class:`CopyRemover`, the
:class:`Scheduler` (the local queue and placement; no I/O), the :class:`Runners` (one thread
per attempt; the attempt itself is :func:`comfy_cluster.runner.run_attempt`) and the
:class:`CallbackExecutor` (user callbacks). ``status``, ``select``, ``submit``, ``map`` and
``close`` are here; nothing else imports this module.

Threads (all daemons with names, all stopped by :meth:`ServerPool.close`): one status
monitor, one probe executor (probes, node lists, clean-up), one dispatcher, one callback
thread, one websocket reader per server in use, and one runner per job on a server.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .attempt import Attempt, CopyRemover, Ledger, PostGate
from .affinity import CacheAffinity
from .balance import DEFAULT_STRATEGY, StrategyLike, get_strategy, strategy_name
from .callbacks import CallbackExecutor
from .client import DEFAULT_TIMEOUT, PROBE_TIMEOUT, ComfyClient, Timeouts
from .config import servers_from_env, status_ttl_from_env, strategy_from_env
from .errors import ComfyClusterError, ConfigError
from .events import ServerSockets
from .loaders import check_inputs
from .jobs import Job, JobControl, JobEvent, OutputFile
from .lifecycle import Runners
from .outputs import download_outputs
from .planner import Batch, inputs_per_job
from .scheduling import Scheduler
from .selection import Capabilities, StatusView, evaluate, no_server, pick
from .server_config import ServerConfig, check_unique, make_server
from .status import ServerStatus, StatusMonitor
from .workflow import WorkflowInputError, load_workflow

__all__ = ["ServerPool"]

log = logging.getLogger(__name__)

WorkflowLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]
#: How long close() lets runners end their jobs on the servers before cutting connections.
CLOSE_GRACE = 2.0
#: How long close() waits for runners once every connection is cut (they end in moments).
RUNNER_JOIN_CAP = 10.0


class ServerPool:
    """A cluster of ComfyUI servers used as one.

    ``strategy`` is a name (``warm_models``, the default, ``least_loaded``, ``round_robin``,
    ``priority``, ``fastest_completion``), an object with ``select(candidates, workflow)``, or a callable.
    ``status_ttl`` is how long a probe result is trusted. ``clock`` (monotonic seconds) is
    injectable so TTLs and backoff are tested without sleeping; ``background_status=False``
    turns the refreshing thread off (status is then probed on demand).

    Use as a context manager, or call :meth:`close`: it cancels unfinished jobs on their
    servers and stops every thread and socket of the pool, in bounded time.
    """

    def __init__(
        self,
        servers: Iterable[Union[ServerConfig, Mapping[str, Any]]],
        strategy: StrategyLike = DEFAULT_STRATEGY,
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
                configs.append(make_server(dict(s), f"servers[{i}]"))
            else:
                raise ConfigError(f"servers[{i}]: must be a ServerConfig or a dict, got {type(s).__name__}")
        if not configs:
            raise ConfigError("servers: give at least one server")
        check_unique(configs, "servers")
        if not (status_ttl >= 0) or math.isinf(status_ttl):
            raise ConfigError(f"status_ttl: must be >= 0 seconds, got {status_ttl!r}")
        self._servers: Tuple[ServerConfig, ...] = tuple(configs)
        self._by_name: Dict[str, ServerConfig] = {s.name: s for s in configs}
        # Wrapped once, so the scheduler and select() share it: use_cache_affinity() turns the
        # affinity on later without replacing the object they hold.
        self._strategy = CacheAffinity(get_strategy(strategy, rng), enabled=False)
        self._clock = clock
        # The websocket clientId the servers route our jobs' events to: a process that follows
        # jobs an earlier one posted (a restarted gateway) passes the same id to get them.
        self.client_id = client_id or str(uuid.uuid4())
        self._clients: Dict[str, ComfyClient] = {s.name: ComfyClient(s, timeout=request_timeout) for s in configs}
        self._monitor = StatusMonitor(
            configs, self._clients, ttl=status_ttl, clock=clock, probe_timeout=probe_timeout,
            backoff_cap=backoff_cap, background=background_status,
        )
        self._sockets = ServerSockets(configs, self.client_id, on_status=self._monitor.queue_reading, connect_timeout=ws_connect_timeout)
        self._callbacks = CallbackExecutor()
        self._closed = threading.Event()
        self._cut = threading.Event()  # close(): connections cut, runners give up at once
        self._post_gate = PostGate()
        self._view = StatusView(self._monitor, configs, clock)
        # Built before what they wake: their wake-ups reach the scheduler through the pool.
        # Real time, not the injected clock: a failed node-list read is retried after seconds
        # that pass, whatever a test's clock says.
        self._caps = Capabilities(self._clients, self._monitor.submit, time.monotonic, on_change=self._wake)
        self._ledger = Ledger([s.name for s in configs], self._monitor, on_release=self._wake)
        self._cleanup = CopyRemover(self._clients, self._ledger, self._monitor.submit, clock, self._closed)
        self._scheduler = Scheduler(
            configs, self._view, self._caps, self._ledger, self._strategy,
            launch=self._launch, clock=clock, wait_for_server=wait_for_server,
        )
        self._cut = threading.Event()  # close(): connections cut, runners give up at once
        self._runners = Runners(
            clients=self._clients, sockets=self._sockets, client_id=self.client_id, monitor=self._monitor,
            ledger=self._ledger, post_gate=self._post_gate, queue=self._scheduler, cleanup=self._cleanup.schedule,
            clock=clock, reconcile_interval=reconcile_interval, server_lost_after=server_lost_after, cut=self._cut,
        )
        self._seq = itertools.count()
        self._monitor.add_listener(self._on_status_change)
        log.debug("pool of %d servers, strategy %s", len(configs), self.strategy)

    def _wake(self) -> None:
        self._scheduler.wake()

    def _launch(self, attempt: Attempt, *, follow_only: bool = False) -> None:
        self._runners.launch(attempt, follow_only=follow_only)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "ServerPool":
        """A pool configured from the environment (see :mod:`comfy_cluster.config`).

        Keyword arguments override the environment (``strategy=``, ``status_ttl=``, ...).
        """
        servers, source = servers_from_env(environ)
        if "strategy" not in kwargs:
            kwargs["strategy"] = strategy_from_env(environ) or DEFAULT_STRATEGY
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

    def use_cache_affinity(self) -> None:
        """From now on an identical workflow goes to the server that was given it last, when
        that server can take it (ComfyUI's cache there makes the rerun nearly free); otherwise
        the strategy chooses. The gateway turns this on. Idempotent."""
        self._strategy.enabled = True

    @property
    def _object_info(self) -> Dict[str, Dict[str, Any]]:
        return self._caps.info

    # -- status -------------------------------------------------------------------------------

    def status(self, refresh: bool = False) -> List[ServerStatus]:
        """One :class:`ServerStatus` per server, in config order.

        Cached results younger than ``status_ttl`` are returned as they are; ``refresh=True``
        probes every server now (in parallel, each bounded by the probe timeout).
        """
        self._check_open()
        return self._monitor.refresh(force=refresh)

    def _on_status_change(self, old: ServerStatus, new: ServerStatus) -> None:
        """Every probe (on the probe executor): forget node lists of a server that was away,
        remove copies left there, and wake the scheduler when a server came or went."""
        if new.online and not old.online and old.checked:
            self._caps.forget(new.name)  # it may have restarted with other nodes or models
        if new.online and self._ledger.unconfirmed(new.name):
            self._cleanup.schedule(new.name)
        if new.online != old.online:
            self._scheduler.wake()

    # -- selection ----------------------------------------------------------------------------

    def capabilities(self, workflow: WorkflowLike) -> Dict[str, Optional[str]]:
        """Per online server: None when it offers every node type and model file ``workflow``
        names, else why not. Node lists are read once per server and cached; offline servers
        are left out. Waits for servers never probed (callers' threads only)."""
        self._check_open()
        wf = load_workflow(workflow)
        return self._caps.checker(wf, wait=True)([c.name for c in self._view.current(probe=True).online])

    def node_info(self) -> Dict[str, Dict[str, Any]]:
        """``/object_info`` of every online server whose node list could be read (server name
        -> node type -> definition); read once per server and cached, as for capabilities."""
        self._check_open()
        names = [c.name for c in self._view.current(probe=True).online]
        self._caps.fetch(names, wait=True)
        return {n: info for n in names for info, _ in [self._caps.get(n)] if info is not None}

    def select(self, workflow: Optional[WorkflowLike] = None, exclude: Iterable[str] = ()) -> ServerConfig:
        """The server the strategy picks now among those passing the filters.

        Filters: enabled; online; fewer than ``max_queue`` of this process's jobs there; not in
        ``exclude`` (names); and, given a workflow, offering every node type and model file it
        names. Raises :class:`NoServerAvailable` saying, per server, why none qualified.
        Never waits on a probe of a server already known to be offline.
        """
        self._check_open()
        wf = load_workflow(workflow) if workflow is not None else None
        cands, reasons, _, _ = evaluate(self._view.current(probe=True), self._servers, self._caps.checker(wf, wait=True), exclude)
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
        (control,) = self._prepare([workflow], [inputs], on_event=on_event, retries=retries, owner=owner)
        control.job._on_attempt = on_attempt
        self._enqueue([control])
        return control.job

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
        client_id: Optional[str] = None,
    ) -> Job:
        """A :class:`Job` for ``workflow`` already posted to ``server`` as ``prompt_id`` (by an
        earlier process: a gateway that restarted, a replica that died). It is followed there
        to its end, never posted again; if the server does not hold it (it never arrived, or
        the server restarted) it runs like a submitted job, on any server. ``client_id``: the
        websocket clientId it was posted under, when not this pool's (a dead process's): its
        events are read from a socket under that id while it is followed (the process that
        had it is gone, so nothing else listens there). Other arguments as in :meth:`submit`.
        Raises :class:`ConfigError` for a server not in the pool or a prompt_id that is not a
        non-empty string."""
        self._check_open()
        config = self._by_name.get(server)
        if config is None:
            raise ConfigError(f"adopt: no server named {server!r} in the pool")
        if not isinstance(prompt_id, str) or not prompt_id.strip():
            # A job read before its POST was answered has no prompt_id yet: adopting None
            # would post the workflow again beside the copy already running there.
            raise ConfigError(f"adopt: prompt_id must be the non-empty id the server took, got {prompt_id!r}")
        job = Job(load_workflow(workflow), inputs={str(k): os.fspath(v) for k, v in (inputs or {}).items()},
                  on_event=on_event, retries=retries, owner=owner)
        job._on_attempt = on_attempt
        control = JobControl(job, seq=next(self._seq), executor=self._callbacks, on_cancel=self._scheduler.wake, download=self._download_for)
        self._scheduler.adopt(control, config, prompt_id, client_id if client_id != self.client_id else None)
        return job

    def _prepare(
        self, workflows: Sequence[WorkflowLike], inputs: Sequence[Optional[Mapping[str, str]]], *,
        on_event: Optional[Callable[[JobEvent], None]], retries: int, owner: Optional[str], batch: Any = None,
    ) -> List[JobControl]:
        """Check every workflow and input, and that some server could run each; make the jobs
        (with their controls). Nothing is sent."""
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
                checked = check_inputs(wf, job_inputs or {})
            except WorkflowInputError as exc:
                raise WorkflowInputError(f"{where}{exc}") from None
            job = Job(wf, inputs=checked, on_event=on_event, retries=retries, index=i if batch is not None else None, owner=owner)
            job.batch = batch
            jobs.append(JobControl(job, seq=next(self._seq), executor=self._callbacks, on_cancel=self._scheduler.wake, download=self._download_for))
        view = self._view.current(probe=True)
        seen: Set[Tuple[str, ...]] = set()
        for control in jobs:
            job = control.job
            kind = tuple(sorted(str(n.get("class_type")) for n in job.workflow.values()))
            if kind in seen and not job.inputs:
                continue
            seen.add(kind)
            cands, reasons, _, _ = evaluate(view, self._servers, self._caps.checker(job.workflow, job.inputs, wait=True), ignore_full=True)
            if not cands:
                raise no_server(reasons)
        return jobs

    def _enqueue(self, controls: List[JobControl]) -> None:
        self._check_open()
        self._scheduler.add(controls)

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

        Every workflow and input is checked before any job is sent (a bad input 37 of 100
        sends nothing), and every job is queued at once: none is dispatched before the last
        one is queued, so ``fail_fast`` and ``cancel`` reach every job."""
        items = list(workflows)
        batch = Batch(fail_fast=fail_fast, quiet_posts=self._post_gate.quiet)
        controls = self._prepare(items, inputs_per_job(inputs, len(items)), on_event=on_event, retries=retries, owner=owner, batch=batch)
        batch.attach(controls)
        if controls:
            self._enqueue(controls)
        return batch

    # -- outputs ------------------------------------------------------------------------------

    def _download(self, server: ServerConfig, files: Sequence[OutputFile], dest_dir: str, tag: str = "") -> List[str]:
        return download_outputs(self._clients[server.name], server, files, dest_dir, tag)

    def _download_for(self, name: str, files: Sequence[OutputFile], dest_dir: str, tag: str) -> List[str]:
        """A job's ``download``: ``files`` of server ``name``."""
        server = self._by_name.get(name)
        if server is None:
            raise ComfyClusterError(f"unknown server {name}")
        return self._download(server, files, dest_dir, tag)

    # -- closing ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ComfyClusterError("the pool is closed")

    def close(self, *, cancel: bool = True) -> None:
        """Cancel unfinished jobs (on their servers too), stop every thread, close every socket.

        Bounded whatever servers and user code do: runners get ``CLOSE_GRACE`` seconds to
        remove their jobs from the servers (a server that does not answer is not waited for);
        then every connection is cut, and a job still without an end is reported cancelled (a
        copy that could not be removed is logged with its server and prompt_id). When it
        returns, every job is done with exactly one terminal event, and no thread of the pool
        is alive except the callback thread while a callback that has not returned holds it
        (it then runs the terminal events and done-callbacks queued behind that callback, and
        ends; progress events still queued are dropped).

        ``cancel=False`` leaves the jobs running on their servers (another process that
        recorded them follows them there: a gateway replica handing over) and only cuts
        the connections; their ``Job`` objects end as cancelled here.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        self._runners.close()  # runner threads waiting for an attempt end now
        for control in self._scheduler.close():
            control.cancelled(None, "cancelled: pool closed")
        running = self._ledger.live()
        if cancel:
            for a in running:
                a.job.cancel()
            self._runners.join(time.monotonic() + CLOSE_GRACE)
        self._cut.set()
        for client in self._clients.values():
            client.close()  # cuts requests still hanging (a server that never answers)
        self._sockets.close()
        # Every request now fails at once and a runner gives up on a server that does not
        # answer once connections are cut: this join returns in moments (the bound only rules
        # out a hang), so no runner outlives close() to report its job a second time.
        self._runners.join(time.monotonic() + RUNNER_JOIN_CAP)
        for a in running:
            a.control.cancelled(a.server, "cancelled: pool closed")  # no-op for a job already final
        left = self._ledger.live()
        if left:
            log.warning("pool closed with %d job copies not confirmed removed: %s", len(left),
                        ", ".join(f"{a.prompt_id} on {a.server}" for a in left))
        self._monitor.close()
        # Every job is done already (set by the thread that ended it); the callback thread gets
        # CLOSE_GRACE to deliver what is queued, then close returns whatever user code does.
        self._callbacks.close(CLOSE_GRACE)

