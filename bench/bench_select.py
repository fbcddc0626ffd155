"""select() with a warm cache: median and p99 latency for 8 and 64 servers.

Run: python -m bench.bench_select [--runs 5] [--calls 20000]
No network: the servers' snapshots are set online in the pool's monitor, as after a probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from comfy_cluster import ServerPool


def make_pool(n: int, strategy: str) -> ServerPool:
    servers = [{"name": f"s{i}", "host": "127.0.0.1", "port": 20000 + i, "max_queue": 4} for i in range(n)]
    pool = ServerPool(servers, strategy=strategy, background_status=False, status_ttl=1e9)
    mon = pool._monitor
    now = time.monotonic()
    for i, s in enumerate(pool.servers):
        old = mon.snapshot(s.name)
        mon._snapshots[s.name] = dataclasses.replace(
            old, online=True, last_checked=now, next_probe_at=now + 1e9, queue_pending=i % 3, rtt_ms=1.0
        )
    return pool


def measure(n: int, strategy: str, calls: int) -> tuple:
    pool = make_pool(n, strategy)
    try:
        for _ in range(200):  # warm up
            pool.select()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            t0 = clock()
            pool.select()
            samples.append(clock() - t0)
        samples.sort()
        return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    print("| servers | strategy | median µs | p99 µs |")
    print("|---|---|---|---|")
    for n in (8, 64):
        for strategy in ("least_loaded", "round_robin", "priority", "fastest_completion"):
            runs = [measure(n, strategy, args.calls) for _ in range(args.runs)]
            med = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            print(f"| {n} | {strategy} | {med:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
