"""Server status: immutable :class:`ServerStatus` snapshots and the :class:`StatusMonitor`.

The monitor keeps one snapshot per server. A snapshot is never edited: probes, websocket
``status`` frames and the pool's own bookkeeping build a new one with
:func:`dataclasses.replace` and swap it in under one lock. No network call is made while that
lock is held, so readers (``select()``) never wait on a slow server.

Probes are ``GET /queue`` on every server in parallel. A server that fails is marked offline
with the reason and probed again after a backoff that doubles with each consecutive failure
up to a cap; a success resets it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .client import as_dict, as_list, PROBE_TIMEOUT, ComfyClient, Timeouts
from .errors import ComfyClusterError
from .server_config import ServerConfig
from .warm import NO_WARMTH, Warmth

__all__ = ["ServerStatus", "StatusMonitor"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# Learned job durations: an exponential moving average, so a server that speeds up or slows
# down (another user's load, a model swap) is followed within a few jobs.
EMA_ALPHA = 0.3


@dataclass(frozen=True)
class ServerStatus:
    """What the pool knows about one server at one moment. Immutable: a new one replaces it.

    ``queue_running``/``queue_pending`` are the server's whole queue (every client's jobs) as
    last read from ``GET /queue`` or a websocket ``status`` frame. ``in_flight`` counts this
    process's jobs there that have not been seen to finish; ``unseen`` those submitted since
    the last reading (so not yet in the queue counts). ``load`` is the queue as it is now
    believed to be. Times are in the pool's clock (``time.monotonic`` unless injected).

    ``models``, ``prompt_key`` and ``node_keys`` are what the server will have loaded and
    cached once the jobs this pool queued there have run (those of the last one; see
    :mod:`comfy_cluster.warm`); forgotten when the server goes offline. ``avg_job_seconds`` is
    learned from jobs that loaded no new model, ``cold_job_seconds`` from those that did;
    ``model_load_seconds`` is their difference.
    """

    name: str
    url: str
    online: bool = False
    queue_running: int = 0
    queue_pending: int = 0
    in_flight: int = 0
    unseen: int = 0
    rtt_ms: Optional[float] = None
    last_checked: Optional[float] = None
    error: Optional[str] = None
    consecutive_failures: int = 0
    next_probe_at: float = 0.0
    enabled: bool = True
    comfyui_version: Optional[str] = None
    device_name: Optional[str] = None
    vram_total: Optional[int] = None
    vram_free: Optional[int] = None
    jobs_succeeded: int = 0
    jobs_failed: int = 0
    avg_job_seconds: Optional[float] = None
    cold_job_seconds: Optional[float] = None
    models: Tuple[str, ...] = ()
    prompt_key: Optional[str] = None
    node_keys: Tuple[str, ...] = ()

    @property
    def checked(self) -> bool:
        """Whether this server has been probed at least once."""
        return self.last_checked is not None

    @property
    def load(self) -> int:
        """Jobs believed to be on the server now: its queue plus ours it has not shown yet,
        and never fewer than our own jobs there (a queue reading can be older than our last
        submissions: it must not make the server look emptier than we know it is)."""
        return max(self.queue_running + self.queue_pending + self.unseen, self.in_flight)

    @property
    def model_load_seconds(self) -> Optional[float]:
        """Seconds a job here spends loading a model it did not have (learned; None until a
        job with and one without a load have finished here)."""
        if self.cold_job_seconds is None or self.avg_job_seconds is None:
            return None
        return max(0.0, self.cold_job_seconds - self.avg_job_seconds)

    def to_dict(self) -> Dict[str, object]:
        """A JSON-ready dict (used by ``comfy-cluster status --json``)."""
        data = dataclasses.asdict(self)
        data["load"] = self.load
        data["model_load_seconds"] = self.model_load_seconds
        del data["node_keys"]  # cache keys: long, and of no use to a reader
        return data


class StatusMonitor:
    """Holds the snapshots and probes the servers; owned by a :class:`ServerPool`."""

    def __init__(
        self,
        servers: Sequence[ServerConfig],
        clients: Mapping[str, ComfyClient],
        *,
        ttl: float = 5.0,
        clock: Clock = time.monotonic,
        probe_timeout: Timeouts = PROBE_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        background: bool = True,
    ) -> None:
        self._servers = tuple(servers)
        self._clients = clients
        self.ttl = ttl
        self._clock = clock
        self._probe_timeout = probe_timeout
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._lock = threading.Lock()
        self._snapshots: Dict[str, ServerStatus] = {
            s.name: ServerStatus(name=s.name, url=s.url, enabled=s.enabled) for s in self._servers
        }
        # Bumped on every swap, so readers can cache what they derive from the snapshots.
        self.version = 0
        self._stats_fetched: Dict[str, bool] = {s.name: False for s in self._servers}
        self._executor = ThreadPoolExecutor(
            max_workers=max(2, min(64, 2 * len(self._servers))), thread_name_prefix="comfy-cluster-probe"
        )
        self._probing: Dict[str, threading.Event] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._listeners: List[Callable[[ServerStatus, ServerStatus], None]] = []
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._run, name="comfy-cluster-status", daemon=True)
            self._thread.start()

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self, name: str) -> ServerStatus:
        return self._snapshots[name]

    def snapshots(self) -> List[ServerStatus]:
        """Current snapshots in config order, without probing."""
        current = self._snapshots  # the dict's values are immutable; a stale read is fine
        return [current[s.name] for s in self._servers]

    @property
    def background(self) -> bool:
        """Whether a thread keeps the snapshots fresh."""
        return self._thread is not None

    def add_listener(self, fn: Callable[[ServerStatus, ServerStatus], None]) -> None:
        """``fn(old, new)`` is called (outside the lock) whenever a probe changes ``online``."""
        self._listeners.append(fn)

    # -- updating -----------------------------------------------------------------------------

    def _update(self, name: str, fn: Callable[[ServerStatus], Dict[str, object]]) -> ServerStatus:
        with self._lock:
            old = self._snapshots[name]
            new = dataclasses.replace(old, **fn(old))  # type: ignore[arg-type]
            self._snapshots[name] = new
            self.version += 1
        return new

    def job_reserved(self, name: str, warmth: Warmth = NO_WARMTH) -> bool:
        """A job of ours is given to ``name``: count it in ``in_flight`` and, until the next
        queue reading shows it, in ``load`` (so two quick submissions spread out); what it
        leaves loaded and cached there (``warmth``) replaces what was. True when the job must
        load a model the server will not have (a cold job)."""
        cold = [False]

        def change(s: ServerStatus) -> Dict[str, object]:
            cold[0] = not warmth.warm_on(s.models)
            out: Dict[str, object] = {"in_flight": s.in_flight + 1, "unseen": s.unseen + 1}
            if warmth.models:
                out["models"] = warmth.models
            if warmth.prompt is not None:
                out["prompt_key"], out["node_keys"] = warmth.prompt, warmth.nodes
            return out

        self._update(name, change)
        return cold[0]

    def job_released(self, name: str, *, seconds: Optional[float] = None, ok: Optional[bool] = None, cold: bool = False) -> None:
        """A job of ours left ``name``: finished (``ok``, in ``seconds``; ``cold`` if it loaded
        a model), failed over, or was cancelled."""

        def change(s: ServerStatus) -> Dict[str, object]:
            out: Dict[str, object] = {"in_flight": max(0, s.in_flight - 1)}
            if ok is True:
                out["jobs_succeeded"] = s.jobs_succeeded + 1
                if seconds is not None and seconds > 0:
                    field = "cold_job_seconds" if cold else "avg_job_seconds"
                    prev = getattr(s, field)
                    out[field] = seconds if prev is None else prev + EMA_ALPHA * (seconds - prev)
            elif ok is False:
                out["jobs_failed"] = s.jobs_failed + 1
            return out

        self._update(name, change)

    def queue_reading(self, name: str, remaining: int) -> None:
        """A websocket ``status`` frame: the server's queue length, live."""
        if remaining < 0:
            return
        running = 1 if remaining > 0 else 0
        self._update(
            name,
            lambda s: {"queue_running": running, "queue_pending": remaining - running, "unseen": 0}
            if s.online
            else {},
        )

    def mark_failed(self, name: str, reason: str) -> None:
        """A job saw ``name`` fail: offline now, and re-checked after the backoff."""
        self._apply_failure(name, reason)
        self._wake.set()

    # -- probing ------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        return float(min(self._backoff_base * 2 ** max(0, failures - 1), self._backoff_cap))

    def _apply_failure(self, name: str, reason: str) -> None:
        now = self._clock()

        def change(s: ServerStatus) -> Dict[str, object]:
            failures = s.consecutive_failures + 1
            return {
                "online": False,
                "error": reason,
                "consecutive_failures": failures,
                "last_checked": now,
                "next_probe_at": now + self._backoff(failures),
                "rtt_ms": None,
                # It may come back restarted, with nothing loaded or cached.
                "models": (),
                "prompt_key": None,
                "node_keys": (),
            }

        old = self._snapshots[name]
        new = self._update(name, change)
        if old.online or not old.checked:
            log.warning("server %s is offline: %s", name, reason)
        self._notify(old, new)

    def _probe_one(self, server: ServerConfig) -> None:
        client = self._clients[server.name]
        wall = time.perf_counter()
        try:
            running, pending = client.queue(timeout=self._probe_timeout, probe=True)
        except ComfyClusterError as exc:
            self._apply_failure(server.name, _reason(exc, server.name))
            return
        except Exception as exc:  # a bug must not kill the probe thread; report it as the reason
            log.exception("probe of %s failed unexpectedly", server.name)
            self._apply_failure(server.name, f"probe error: {exc.__class__.__name__}")
            return
        rtt = (time.perf_counter() - wall) * 1000.0
        now = self._clock()
        old = self._snapshots[server.name]
        new = self._update(
            server.name,
            lambda s: {
                "online": True,
                "queue_running": len(running),
                "queue_pending": len(pending),
                "unseen": 0,
                "rtt_ms": rtt,
                "last_checked": now,
                "error": None,
                "consecutive_failures": 0,
                "next_probe_at": now + self.ttl,
            },
        )
        if not old.online and old.checked:
            log.info("server %s is back online", server.name)
        self._notify(old, new)

    def _fetch_stats(self, server: ServerConfig) -> None:
        if self._stats_fetched[server.name]:
            return
        try:
            stats = self._clients[server.name].system_stats(timeout=self._probe_timeout, probe=True)
        except ComfyClusterError as exc:
            log.debug("system_stats of %s failed: %s", server.name, exc)
            return
        system = as_dict(stats.get("system"))
        devices = as_list(stats.get("devices"))
        dev = devices[0] if devices and isinstance(devices[0], dict) else {}
        self._stats_fetched[server.name] = True
        changes: Dict[str, object] = dict(
            comfyui_version=_str_or_none(system.get("comfyui_version")),
            device_name=_str_or_none(dev.get("name")),
            vram_total=_int_or_none(dev.get("vram_total")),
            vram_free=_int_or_none(dev.get("vram_free")),
        )
        self._update(server.name, lambda _old: changes)

    def _notify(self, old: ServerStatus, new: ServerStatus) -> None:
        for fn in list(self._listeners):
            try:
                fn(old, new)
            except Exception:  # a listener must not break probing
                log.exception("status listener failed")

    def probe(self, names: Iterable[str], *, wait_for_them: bool = True, fresh: bool = False) -> None:
        """Probe ``names`` in parallel now and wait for them (each bounded by the probe timeout).

        A server already being probed by another thread is waited for, not probed twice;
        ``fresh``: then probed once more, since that probe began before this call and may
        have read the server as it was before (a forced refresh must show it as it is now).
        ``wait_for_them=False`` only starts the probes.
        """
        futures = []
        waits: List[threading.Event] = []
        joined: List[str] = []
        by_name = {s.name: s for s in self._servers}
        for name in names:
            if self._closed.is_set():
                break
            with self._lock:
                running = self._probing.get(name)
                if running is None:
                    done = threading.Event()
                    self._probing[name] = done
            if running is not None:
                waits.append(running)
                joined.append(name)
                continue
            try:
                futures.append(self._executor.submit(self._probe_task, by_name[name], done))
            except RuntimeError:  # executor shut down by close(): no probe will end this one
                self._probe_over(name, done)
                break
            if not self._stats_fetched[name]:
                try:  # alongside the first probe, not after it: a cold status costs one round trip
                    futures.append(self._executor.submit(self._fetch_stats, by_name[name]))
                except RuntimeError:
                    break
        if not wait_for_them:
            return
        wait(futures)
        for ev in waits:
            ev.wait(self._probe_timeout[0] + self._probe_timeout[1] + 1.0)
        if fresh and joined:
            # A probe found running now began after the one waited for ended: joining it is fresh.
            self.probe(joined)

    def _probe_task(self, server: ServerConfig, done: threading.Event) -> None:
        try:
            self._probe_one(server)
        finally:
            self._probe_over(server.name, done)

    def _probe_over(self, name: str, done: threading.Event) -> None:
        """``name`` is no longer being probed: wake whoever waits for that probe."""
        with self._lock:
            self._probing.pop(name, None)
        done.set()

    def due(self, *, include_offline: bool = True) -> List[str]:
        """Names whose cached status has expired (offline ones only once their backoff is over)."""
        now = self._clock()
        out = []
        for s in self.snapshots():
            if not s.checked:
                out.append(s.name)
            elif s.online and now >= s.next_probe_at:
                out.append(s.name)
            elif not s.online and include_offline and now >= s.next_probe_at:
                out.append(s.name)
        return out

    def refresh(self, force: bool = False) -> List[ServerStatus]:
        """Probe what is due (everything when ``force``) and return the snapshots."""
        names = [s.name for s in self._servers] if force else self.due()
        if names:
            self.probe(names, fresh=force)
        return self.snapshots()

    def submit(self, fn: Callable[..., object], *args: object) -> "Future[object]":
        """Run ``fn(*args)`` on the probe executor (parallel fetches such as /object_info)."""
        return self._executor.submit(fn, *args)

    def request_check(self) -> None:
        """Wake the background thread early (a job saw a server fail)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                names = self.due()
                if names:
                    self.probe(names)
                now = self._clock()
                nexts = [s.next_probe_at for s in self.snapshots() if s.checked]
                delay = min(nexts) - now if nexts else self.ttl
                delay = max(0.05, min(delay, max(self.ttl, 0.05)))
            except Exception:  # keep the monitor alive whatever happens
                log.exception("status monitor loop failed")
                delay = 1.0
            self._wake.wait(delay)
            self._wake.clear()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._executor.shutdown(wait=True)


def _reason(exc: BaseException, name: str) -> str:
    text = str(exc)
    prefix = f"{name}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _str_or_none(v: object) -> Optional[str]:
    return v if isinstance(v, str) else None


def _int_or_none(v: object) -> Optional[int]:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (OverflowError, ValueError):  # Infinity / NaN, which json.loads accepts
        return None
