"""Status probing costs.

1. A cold ``status(refresh=True)`` of 32 mock servers that each answer after 50 ms, against
   one such server (target: <= 1.5x the single-server time).
2. A pool with one server that accepts connections and never answers: the first refresh takes
   no longer than the probe timeout, and later ``select()`` calls are as fast as without it.

Run: python bench/bench_status.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from comfy_cluster import ServerPool
from comfy_cluster.testing import Fault, MockCluster


def cold_status(cluster: MockCluster, n: int) -> float:
    servers = [{"name": f"s{i}", "url": s.url} for i, s in enumerate(cluster.servers[:n])]
    with ServerPool(servers, background_status=False) as pool:
        t0 = time.perf_counter()
        pool.status(refresh=True)
        return time.perf_counter() - t0


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
    with MockCluster(speeds=[1.0] * 32) as cluster:
        for s in cluster.servers:
            s.set_latency(0.05)
        one = statistics.median(cold_status(cluster, 1) for _ in range(args.runs))
        many = statistics.median(cold_status(cluster, 32) for _ in range(args.runs))
        print("| cold status(refresh=True), each server answers after 50 ms | median ms |")
        print("|---|---|")
        print(f"| 1 server | {one * 1000:.1f} |")
        print(f"| 32 servers | {many * 1000:.1f} |")
        print(f"| ratio | {many / one:.2f}x |")
        print()
        for s in cluster.servers:
            s.set_latency(0.0)
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
