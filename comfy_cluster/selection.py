"""Selection: which servers may take a job now, and why the others may not.

Filters, in order: enabled; online; not excluded; offering every node type and model file the
workflow names (from ``/object_info``); with room (fewer than ``max_queue`` of this process's
jobs there). Each filter records why it dropped a server, for :class:`NoServerAvailable`.

Node lists come from :class:`Capabilities`, a cache filled on the probe executor. A failed
fetch is cached too (and retried after a backoff), so a server whose ``/object_info`` fails
costs one fetch per backoff, never one per submission; the dispatcher never fetches at all.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .balance import Candidate, expected_seconds
from .client import PROBE_TIMEOUT, ComfyClient
from .errors import ComfyClusterError, ConfigError, NoServerAvailable
from .server_config import ServerConfig
from .status import ServerStatus, StatusMonitor
from .workflow import missing_capabilities

__all__ = ["Capabilities", "View", "StatusView", "no_server", "UNKNOWN"]

log = logging.getLogger(__name__)

#: A capability answer meaning "node list not read yet".
UNKNOWN = "node list not read yet"
OBJECT_INFO_TIMEOUT = (PROBE_TIMEOUT[0], 10.0)


class Capabilities:
    """``/object_info`` per server: fetched once on ``submit(fn, *args)`` (the probe
    executor), failures cached for ``retry_after`` seconds (doubling, capped). ``on_change``
    is called after every fetch that ended."""

    def __init__(
        self,
        clients: Mapping[str, ComfyClient],
        submit: Callable[..., Any],
        clock: Callable[[], float],
        on_change: Callable[[], None],
        retry_after: float = 2.0,
        retry_cap: float = 60.0,
    ) -> None:
        self._clients = clients
        self._submit = submit
        self._clock = clock
        self._on_change = on_change
        self._retry_after = retry_after
        self._retry_cap = retry_cap
        self._lock = threading.Lock()
        #: server -> node list (tests may set entries directly)
        self.info: Dict[str, Dict[str, Any]] = {}
        self._failed: Dict[str, Tuple[str, float, int]] = {}  # reason, retry at, failures
        self._fetching: Dict[str, threading.Event] = {}
        self.version = 0

    def get(self, name: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """``(node list, None)``, ``(None, why not)`` or ``(None, UNKNOWN)``; no I/O."""
        info = self.info.get(name)
        if info is not None:
            return info, None
        failed = self._failed.get(name)
        return None, f"cannot read its node list (/object_info): {failed[0]}" if failed else UNKNOWN

    def forget(self, name: str) -> None:
        """The server may have restarted with other nodes or models: read again."""
        with self._lock:
            self.info.pop(name, None)
            self._failed.pop(name, None)
            self.version += 1

    def fetch(self, names: Iterable[str], *, wait: bool) -> None:
        """Start fetches for ``names`` not known (and not failed recently); ``wait`` for them
        (callers' threads only: never the dispatcher)."""
        now = self._clock()
        events: List[threading.Event] = []
        for name in names:
            with self._lock:
                if name in self.info:
                    continue
                failed = self._failed.get(name)
                if failed is not None and now < failed[1]:
                    continue
                ev = self._fetching.get(name)
                if ev is None:
                    ev = threading.Event()
                    self._fetching[name] = ev
                    try:
                        self._submit(self._fetch_one, name, ev)
                    except RuntimeError:  # executor shut down: the pool is closing
                        self._fetching.pop(name, None)
                        continue
            events.append(ev)
        if wait:
            for ev in events:
                ev.wait(sum(OBJECT_INFO_TIMEOUT) + 1.0)

    def checker(
        self, workflow: Optional[Mapping[str, Any]], skip_nodes: Iterable[str] = (), *, wait: bool
    ) -> Callable[[List[str]], Dict[str, Optional[str]]]:
        """``can(names)`` for :func:`evaluate`: fetches node lists not known yet (waiting for
        them with ``wait``: callers' threads only), then answers as :func:`capable` does.
        Without a workflow every server can."""

        def can(names: List[str]) -> Dict[str, Optional[str]]:
            if workflow is None:
                return {}
            self.fetch(names, wait=wait)
            return capable(self, workflow, names, skip_nodes)

        return can

    def _fetch_one(self, name: str, done: threading.Event) -> None:
        try:
            info = self._clients[name].object_info(timeout=OBJECT_INFO_TIMEOUT)
        except ComfyClusterError as exc:
            reason = str(exc)
            reason = reason[len(name) + 2:] if reason.startswith(name + ": ") else reason
            log.warning("cannot read object_info of %s: %s", name, reason)
            with self._lock:
                n = self._failed.get(name, ("", 0.0, 0))[2] + 1
                delay = min(self._retry_after * 2 ** (n - 1), self._retry_cap)
                self._failed[name] = (reason, self._clock() + delay, n)
                self.version += 1
        else:
            with self._lock:
                self.info[name] = info
                self._failed.pop(name, None)
                self.version += 1
        finally:
            with self._lock:
                self._fetching.pop(name, None)
            done.set()
        self._on_change()


class View:
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


class StatusView:
    """The monitor's snapshots as selection reads them: a :class:`View` rebuilt only when a
    snapshot changed, and the probes selection may start. Handed the monitor, the servers
    and the pool's clock."""

    def __init__(self, monitor: StatusMonitor, servers: Sequence[ServerConfig], clock: Callable[[], float]) -> None:
        self._monitor = monitor
        self._servers = tuple(servers)
        self._enabled = {s.name for s in servers if s.enabled}
        self._clock = clock
        self._cache: Optional[View] = None

    def current(self, *, probe: bool) -> View:
        """The current view. With ``probe`` (callers' threads only), probes servers never
        checked and, without the background thread, online servers whose TTL expired; never
        a server known offline (those are re-probed in the background once due)."""
        mon = self._monitor
        view = self._cache
        if view is None or view.version != mon.version:
            view = View(mon.version, mon.snapshots(), self._servers)
            self._cache = view
        if not probe:
            return view
        names: List[str] = view.unchecked
        if not names and not mon.background:
            now = self._clock()
            if now >= view.next_due:
                names = [n for n in mon.due(include_offline=False) if n in self._enabled]
            if now >= view.next_retry:
                self.retry_offline(view, now)
        if names:
            mon.probe(names)
            return self.current(probe=True)
        return view

    def retry_offline(self, view: View, now: float) -> None:
        """Offline servers whose backoff is over are probed in the background, never waited for."""
        retry = [s.name for s in view.snapshots if not s.online and s.checked and now >= s.next_probe_at]
        self._monitor.probe([n for n in retry if n in self._enabled], wait_for_them=False)

    def tick(self) -> Optional[float]:
        """For the dispatcher: without the background monitor, start (never wait for)
        re-probes of offline servers whose backoff is over; seconds until the next is due."""
        if self._monitor.background:
            return None
        view = self.current(probe=False)
        now = self._clock()
        if now >= view.next_retry:
            self.retry_offline(view, now)
        return None if math.isinf(view.next_retry) else max(0.05, min(1.0, view.next_retry - now))


def capable(
    caps: Capabilities, workflow: Mapping[str, Any], names: Iterable[str], skip_nodes: Iterable[str]
) -> Dict[str, Optional[str]]:
    """Per server: None when it offers everything ``workflow`` needs, else why not (or
    :data:`UNKNOWN`)."""
    out: Dict[str, Optional[str]] = {}
    for name in names:
        info, why = caps.get(name)
        if info is None:
            out[name] = why
            continue
        types, models = missing_capabilities(workflow, info, skip_nodes=skip_nodes)
        if types:
            out[name] = f"missing node types {', '.join(types)}"
        elif models:
            out[name] = f"missing model {', '.join(models)}"
        else:
            out[name] = None
    return out


def evaluate(
    view: View,
    servers: Sequence[ServerConfig],
    can: Callable[[List[str]], Dict[str, Optional[str]]],
    exclude: Iterable[str] = (),
    *,
    ignore_full: bool = False,
    reasons_wanted: bool = True,
) -> Tuple[List[Candidate], Dict[str, str], List[str], List[str]]:
    """``(candidates, reasons of the others, names only full, names not known yet)``.

    ``can(names)`` gives each name's capability answer (see :func:`capable`). The reasons are
    worked out only when no server qualifies (the hot path skips them).
    """
    excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    online = [c for c in view.online if c.name not in excluded]
    answers = can([c.name for c in online]) if online else {}
    fit = [c for c in online if answers.get(c.name) is None]
    cands = fit if ignore_full else [c for c in fit if c.status.in_flight < c.server.max_queue]
    if cands or not reasons_wanted:
        return cands, {}, [], []
    reasons: Dict[str, str] = {}
    full: List[str] = []
    unknown: List[str] = []
    for srv, st in zip(servers, view.snapshots):
        if not srv.enabled:
            reasons[srv.name] = "disabled"
        elif srv.name in excluded:
            reasons[srv.name] = "excluded"
        elif not st.online:
            reasons[srv.name] = f"offline: {st.error or 'not reachable'}"
    for c in online:
        why = answers.get(c.name)
        if why is not None:
            reasons[c.name] = why
            if why == UNKNOWN:
                unknown.append(c.name)
        elif not ignore_full:
            reasons[c.name] = f"full ({c.status.in_flight} of max_queue {c.server.max_queue} jobs)"
            full.append(c.name)
    # In config order (README promises it), whichever filter dropped each server.
    ordered = {srv.name: reasons[srv.name] for srv in servers if srv.name in reasons}
    return [], ordered, full, unknown


def pick(strategy: Any, name: str, candidates: Sequence[Candidate], workflow: Optional[Mapping[str, Any]]) -> ServerConfig:
    """The strategy's choice among ``candidates``; a choice that is not one of them (a custom
    strategy naming a full, offline or unknown server) is refused, never obeyed; one that
    raises gives a ConfigError naming the strategy and its exception (it fails that job only)."""
    try:
        chosen = strategy.select(list(candidates), workflow)
    except Exception as exc:  # a custom strategy's bug: that job fails, the pool goes on
        raise ConfigError(f"strategy {name} raised {type(exc).__name__}: {exc}") from exc
    by_name = {c.name: c.server for c in candidates}
    if isinstance(chosen, Candidate):
        chosen = chosen.name
    elif isinstance(chosen, ServerConfig):
        chosen = chosen.name
    if isinstance(chosen, str) and chosen in by_name:
        return by_name[chosen]
    if chosen is None:
        raise NoServerAvailable(f"strategy {name} chose no server")
    allowed = ", ".join(by_name)
    raise ConfigError(f"strategy {name}: returned {chosen!r}, which is not one of the candidates ({allowed})")


def no_server(reasons: Mapping[str, str]) -> NoServerAvailable:
    detail = "; ".join(f"{name}: {why}" for name, why in reasons.items())
    return NoServerAvailable(f"no server can take the job ({detail})", dict(reasons))
