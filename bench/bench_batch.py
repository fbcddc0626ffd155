"""Makespan of a batch: each strategy submitting everything at once vs the batch dispatcher.

60 jobs of cost 1 s (at speed 1) on three mock servers of speed 1, 2 and 4, against the
optimal makespan for those speeds (best split of whole jobs).

Run: python -m bench.bench_batch [--runs 3] [--jobs 60] [--cost 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List, Tuple

from comfy_cluster import ServerPool
from comfy_cluster.cli import demo_workflow, ideal_makespan
from comfy_cluster.testing import MockCluster

SPEEDS = (1.0, 2.0, 4.0)


def run(mode: str, jobs: int, cost: float, seed0: int) -> Tuple[float, Dict[str, int]]:
    with MockCluster(speeds=SPEEDS) as cluster:
        at_once = mode != "dispatcher"
        servers = [{"name": f"x{s:g}", "url": srv.url, "max_queue": jobs if at_once else 2} for s, srv in zip(SPEEDS, cluster.servers)]
        strategy = mode if at_once else "least_loaded"
        with ServerPool(servers, strategy=strategy) as pool:
            pool.status()
            wfs = [demo_workflow(cost, 2, seed0 + i) for i in range(jobs)]
            start = time.monotonic()
            if at_once:
                results = [j.result() for j in [pool.submit(w) for w in wfs]]
            else:
                results = pool.map(wfs)
            makespan = time.monotonic() - start
    per: Dict[str, int] = {}
    for r in results:
        per[r.server] = per.get(r.server, 0) + 1
    return makespan, per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--cost", type=float, default=1.0)
    ap.add_argument("--modes", default="round_robin,least_loaded,priority,fastest_completion,warm_models,dispatcher")
    args = ap.parse_args()
    ideal = ideal_makespan(args.jobs, SPEEDS, args.cost)
    print(f"{args.jobs} jobs of {args.cost:g} s on speeds {', '.join(f'{s:g}' for s in SPEEDS)}; optimal makespan {ideal:.2f} s; median of {args.runs} runs")
    print()
    print("| mode | makespan s | / optimal | jobs on x1 / x2 / x4 |")
    print("|---|---|---|---|")
    seed = 0
    for mode in args.modes.split(","):
        spans: List[float] = []
        splits = []
        for _ in range(args.runs):
            seed += 10_000
            span, per = run(mode, args.jobs, args.cost, seed)
            spans.append(span)
            splits.append(per)
        med = statistics.median(spans)
        split = splits[spans.index(med)] if med in spans else splits[0]
        label = "batch dispatcher (map)" if mode == "dispatcher" else f"{mode}, all at once"
        print(f"| {label} | {med:.2f} | {med / ideal:.2f} | {' / '.join(str(split.get(f'x{s:g}', 0)) for s in SPEEDS)} |", flush=True)


if __name__ == "__main__":
    main()
