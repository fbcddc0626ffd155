"""The client's own overhead per job, against a bare requests + websocket-client script.

One instant mock server (jobs take no time). Both sides run the same jobs one after another:
POST /prompt, wait on the websocket for the job's end, GET /history. Target: the library
within 1.2x of the bare script.

Run: python -m bench.bench_overhead [--runs 5] [--jobs 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

from comfy_cluster import ServerPool
from comfy_cluster.cli import demo_workflow
from comfy_cluster.testing import MockComfyServer

try:
    from bench.bench_gateway import client_stages
except ImportError:  # python bench/bench_overhead.py
    from bench_gateway import client_stages  # type: ignore[import-not-found,no-redef]


def bare(url: str, jobs: int, seed0: int) -> float:
    """Seconds per job for requests + websocket-client alone (bench_gateway's bare client)."""
    times = client_stages(url, jobs, seed0)
    return (times[-1][3] - times[0][0]) / jobs


def library(url: str, jobs: int, seed0: int) -> float:
    with ServerPool([{"name": "m", "url": url}]) as pool:
        pool.submit(demo_workflow(0.0, 1, seed0 - 1)).result()  # socket open, node list read
        t0 = time.perf_counter()
        for i in range(jobs):
            pool.submit(demo_workflow(0.0, 1, seed0 + i)).result()
        return (time.perf_counter() - t0) / jobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    b, lib = [], []
    with MockComfyServer(speed=1000.0) as srv:
        seed = 0
        for _ in range(args.runs):
            seed += 100_000
            b.append(bare(srv.url, args.jobs, seed))
            seed += 100_000
            lib.append(library(srv.url, args.jobs, seed))
    mb, ml = statistics.median(b), statistics.median(lib)
    print(f"| {args.jobs} instant jobs, one after another | ms per job (median of {args.runs}) |")
    print("|---|---|")
    print(f"| bare requests + websocket-client | {mb * 1000:.2f} |")
    print(f"| comfy_cluster pool.submit().result() | {ml * 1000:.2f} |")
    print(f"| ratio | {ml / mb:.2f}x |")


if __name__ == "__main__":
    main()
