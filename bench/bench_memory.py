"""Memory of a large pool: what a 100-server pool holds after its first status round.

100 stub servers (another process, answering /queue and /system_stats as ComfyUI does), one
``ServerPool`` over them, ``status()`` once; tracemalloc counts what this process allocated
from just before the pool was made to just after that round (imports warmed up first), and
the largest holders by file. Target: <= 1 MB.

Run: python -m bench.bench_memory [--servers 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tracemalloc
from typing import List, Tuple

from comfy_cluster import ServerPool
from comfy_cluster.testing.stubs import stub_servers


def measure(urls: List[str]) -> Tuple[int, List[Tuple[str, int]]]:
    """Bytes held after the first status round of a new pool over ``urls``, and the top files."""
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls)]
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    pool = ServerPool(servers, background_status=False)
    try:
        pool.status()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        pool.close()
    stats = after.compare_to(before, "filename")
    total = sum(s.size_diff for s in stats)
    top = [(str(s.traceback[0].filename).split("site-packages/")[-1].split("comfy-cluster/")[-1], s.size_diff) for s in stats[:8]]
    return total, top


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with stub_servers(args.servers) as urls:
        measure(urls[:2])  # warm-up: imports, first-use caches of requests and urllib3
        results = [measure(urls) for _ in range(args.runs)]
    totals = sorted(r[0] for r in results)
    median = statistics.median(totals)
    print(f"{args.servers}-server pool after its first status round: {median / 1e6:.2f} MB held "
          f"(median of {args.runs}; runs {', '.join(f'{t / 1e6:.2f}' for t in totals)})")
    print()
    print("| file | KB |")
    print("|---|---|")
    for name, size in results[0][1]:
        print(f"| {name} | {size / 1000:.0f} |")


if __name__ == "__main__":
    main()
