"""Status probing costs.

1. ``status(refresh=True)`` of 32 mock servers that each answer after 50 ms, against one such
   server (target: <= 1.5x the single-server time); also the first status of a new pool, which
   starts its probe threads, opens its connections and reads /system_stats too.
2. A pool with one server that accepts connections and never answers: the first refresh takes
   no longer than the probe timeout, and later ``select()`` calls are as fast as without it.

Run: python -m bench.bench_status [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import List

from comfy_cluster import ServerPool
from comfy_cluster.testing import Fault, MockCluster
from comfy_cluster.testing.stubs import stub_servers


def first_status(urls: List[str], n: int) -> float:
    """The first status of a brand-new pool: probe threads, connections, /system_stats too."""
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls[:n])]
    with ServerPool(servers, background_status=False) as pool:
        t0 = time.perf_counter()
        pool.status(refresh=True)
        return time.perf_counter() - t0


def forced_refresh(urls: List[str], n: int, times: int = 5) -> float:
    """``status(refresh=True)`` of a pool in use: every server probed now, nothing cached."""
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls[:n])]
    with ServerPool(servers, background_status=False) as pool:
        pool.status(refresh=True)
        samples = []
        for _ in range(times):
            t0 = time.perf_counter()
            pool.status(refresh=True)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


def select_times(pool: ServerPool, calls: int = 2000) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        pool.select()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    # 32 servers that answer /queue and /system_stats after 50 ms, in another process: 32 full
    # mock servers (aiohttp) on this 2-core machine would measure their own CPU time.
    with stub_servers(32, delay=0.05) as urls:
        first_status(urls, 32)  # warm-up: imports
        rows = []
        for label, fn in (("status(refresh=True) of a pool in use", forced_refresh), ("first status() of a new pool", first_status)):
            one = statistics.median(fn(urls, 1) for _ in range(args.runs))
            many = statistics.median(fn(urls, 32) for _ in range(args.runs))
            rows.append((label, one, many))
    print("| every server answers after 50 ms | 1 server, ms | 32 servers, ms | ratio |")
    print("|---|---|---|---|")
    for label, one, many in rows:
        print(f"| {label} | {one * 1000:.1f} | {many * 1000:.1f} | {many / one:.2f}x |")
    print()
    with MockCluster(speeds=[1.0, 1.0]) as cluster:
        hang, good = cluster.servers[0], cluster.servers[1]
        probe_timeout = (1.0, 2.0)
        hang.set_fault(Fault.HANG)
        firsts, with_hang, without = [], [], []
        for _ in range(args.runs):
            with ServerPool([{"name": "hang", "url": hang.url}, {"name": "good", "url": good.url}],
                            background_status=False, probe_timeout=probe_timeout, status_ttl=3600) as pool:
                t0 = time.perf_counter()
                pool.status(refresh=True)
                firsts.append(time.perf_counter() - t0)
                with_hang.append(select_times(pool))
            with ServerPool([{"name": "good", "url": good.url}], background_status=False, status_ttl=3600) as pool:
                pool.status(refresh=True)
                without.append(select_times(pool))
        hang.set_fault(None)
        print(f"| one server hangs (probe timeout {probe_timeout[0]:g} s connect + {probe_timeout[1]:g} s read) | median |")
        print("|---|---|")
        print(f"| first refresh | {statistics.median(firsts):.2f} s |")
        print(f"| later select(), with the hanging server configured | {statistics.median(with_hang):.1f} µs |")
        print(f"| later select(), without it | {statistics.median(without):.1f} µs |")


if __name__ == "__main__":
    main()
