"""``/metrics`` in Prometheus' text format (prometheus-client), one registry per gateway.

Counted as they happen: jobs ended (by status) and their durations, attempts posted per
server, moves off a server. Read at each scrape: jobs waiting per user, jobs running per
server, servers online, and the dispatch leases each replica holds.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, Iterable, List, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["GatewayMetrics"]

_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))


class _Live(Collector):
    """Gauges read from the gateway at scrape time."""

    def __init__(self, read: Callable[[], Dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._read()
        waiting = GaugeMetricFamily("comfy_cluster_queue_depth", "Jobs waiting (not started yet), per user", labels=["user"])
        for user, n in sorted(now["waiting"].items()):
            waiting.add_metric([user], n)
        running = GaugeMetricFamily("comfy_cluster_server_running", "Gateway jobs running, per server", labels=["server"])
        online = GaugeMetricFamily("comfy_cluster_server_online", "1 if the server answers, else 0", labels=["server"])
        for server in now["servers"]:
            running.add_metric([server], now["running"].get(server, 0))
            online.add_metric([server], 1 if server in now["online"] else 0)
        leases = GaugeMetricFamily("comfy_cluster_leases", "Backend servers whose dispatch a replica holds", labels=["replica"])
        for replica, n in sorted(now["leases"].items()):
            leases.add_metric([replica], n)
        return [waiting, running, online, leases]


class GatewayMetrics:
    """The gateway's metrics; ``read()`` returns the scrape-time state (see :class:`_Live`)."""

    def __init__(self, read: Callable[[], Dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.jobs = Counter("comfy_cluster_jobs", "Jobs ended, by status", ["status"], registry=self.registry)
        self.durations = Histogram("comfy_cluster_job_seconds", "Seconds from posting to the end, by status", ["status"],
                                   buckets=_BUCKETS, registry=self.registry)
        self.attempts = Counter("comfy_cluster_attempts", "Attempts posted, per server", ["server"], registry=self.registry)
        self.moves = Counter("comfy_cluster_moves", "Jobs moved off a server to another", ["server"], registry=self.registry)
        self.registry.register(_Live(read))

    def job_ended(self, status: str, seconds: float) -> None:
        self.jobs.labels(status).inc()
        self.durations.labels(status).observe(max(0.0, seconds))

    def attempt(self, server: str) -> None:
        self.attempts.labels(server).inc()

    def moved(self, server: Optional[str]) -> None:
        self.moves.labels(server or "").inc()

    async def handler(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def live_state(active: Iterable[Any], servers: List[str], online: Iterable[str], leases: Dict[str, int]) -> Dict[str, Any]:
    """The scrape-time numbers from the gateway's unfinished jobs (``GatewayJob``s)."""
    waiting: Dict[str, int] = collections.Counter()
    running: Dict[str, int] = collections.Counter()
    for gj in active:
        if gj.state == "done" or gj.deleted:
            continue
        if gj.started and gj.server:
            running[gj.server] += 1
        elif not gj.started:
            waiting[gj.user or gj.client_id or "-"] += 1
    return {"waiting": dict(waiting), "running": dict(running), "servers": servers, "online": set(online), "leases": leases}
