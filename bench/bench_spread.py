"""Ten pools in one process (ten artists) each submitting 20 jobs into the same 4 servers.

For each strategy: the spread of the servers' queue lengths once every job is queued
(max / mean; 1.0 is perfectly even). Target for least_loaded: <= 1.5.
Every pool submits from its own thread at the same time, with max_queue high enough that
all jobs go to a server at once. Jobs are long, so queues only grow during the measurement;
they are cancelled afterwards.

Run: python -m bench.bench_spread [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
from typing import List

from comfy_cluster import ServerPool
from comfy_cluster.cli import demo_workflow
from comfy_cluster.testing import MockCluster


def spread(cluster: MockCluster, strategy: str, seed0: int, pools_n: int = 10, jobs_n: int = 20) -> float:
    servers = [{"name": s.name, "url": s.url, "max_queue": 1000} for s in cluster.servers]
    pools = [ServerPool(servers, strategy=strategy) for _ in range(pools_n)]
    for p in pools:
        p.status()
    jobs: List = []
    lock = threading.Lock()
    go = threading.Barrier(pools_n)

    def artist(k: int) -> None:
        go.wait()
        mine = [pools[k].submit(demo_workflow(600.0, 1, seed0 + k * 100 + i)) for i in range(jobs_n)]
        with lock:
            jobs.extend(mine)

    threads = [threading.Thread(target=artist, args=(k,)) for k in range(pools_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every job posted (not just dispatched), then read the servers' own queues.
    for j in jobs:
        while j.prompt_id is None and not j.done:
            threading.Event().wait(0.01)
    lengths = []
    for s in cluster.servers:
        running, pending = s.queue_snapshot()
        lengths.append(len(running) + len(pending))
    for p in pools:
        p.close()  # cancels every job on its server
    for s in cluster.servers:
        s.wait_idle(30)
    return max(lengths) / (sum(lengths) / len(lengths))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--strategies", default="least_loaded,round_robin,priority,fastest_completion,warm_models")
    args = ap.parse_args()
    print("| strategy | queue length spread max/mean (median of runs) |")
    print("|---|---|")
    seed = 0
    with MockCluster(speeds=[1.0] * 4) as cluster:
        for strategy in args.strategies.split(","):
            vals = []
            for _ in range(args.runs):
                seed += 10_000
                vals.append(spread(cluster, strategy, seed))
            print(f"| {strategy} | {statistics.median(vals):.2f} |", flush=True)


if __name__ == "__main__":
    main()
