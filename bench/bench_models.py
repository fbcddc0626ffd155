"""Warm-model routing: makespan of jobs over several checkpoints on servers that load a
checkpoint in seconds (the mock's --model-load-seconds), per strategy, against a lower bound.

3 equal mock servers (speed 1, a checkpoint load takes 4 s), 60 jobs of 1 s (txt2img, 100
KSampler steps) over 3 checkpoints interleaved, all submitted at once (the pool's local queue,
max_queue 2 per server). Lower bound: every job's second on the best split, plus one load per
server (each checkpoint loaded once per server that runs it). ``--models 1``: one-model work.

Run: python -m bench.bench_models [--runs 3] [--jobs 60] [--models 3] [--load 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Dict, List, Tuple

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockCluster
from comfy_cluster.testing.workflows import txt2img_workflow

SERVERS = 3
STEPS = 100  # KSampler steps of 0.01 s: a 1 s job at speed 1


def run(strategy: str, jobs: int, models: int, load: float, seed0: int) -> Tuple[float, int, Dict[str, int]]:
    ckpts = [f"model{m}.safetensors" for m in range(models)]
    with MockCluster(speeds=[1.0] * SERVERS, models=ckpts, model_load_seconds=load) as cluster:
        servers = [{"name": f"gpu{i + 1}", "url": srv.url} for i, srv in enumerate(cluster.servers)]
        with ServerPool(servers, strategy=strategy) as pool:
            pool.status()
            wfs = [txt2img_workflow(ckpt_name=ckpts[i % models], steps=STEPS, seed=seed0 + i) for i in range(jobs)]
            start = time.monotonic()
            results = [j.result(timeout=600) for j in [pool.submit(w) for w in wfs]]
            makespan = time.monotonic() - start
        loads = sum(s.model_loads for s in cluster.servers)
    per: Dict[str, int] = {}
    for r in results:
        per[r.server] = per.get(r.server, 0) + 1
    return makespan, loads, per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=60)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--load", type=float, default=4.0)
    ap.add_argument("--strategies", default="least_loaded,round_robin,warm_models")
    args = ap.parse_args()
    bound = math.ceil(args.jobs / SERVERS) * STEPS * 0.01 + args.load
    print(f"{args.jobs} jobs of 1 s over {args.models} checkpoint(s) interleaved, {SERVERS} servers of speed 1, "
          f"load {args.load:g} s; lower bound {bound:.1f} s; median of {args.runs} runs")
    print()
    print("| strategy | makespan s | / lower bound | checkpoint loads | jobs per server |")
    print("|---|---|---|---|---|")
    seed = 0
    for strategy in args.strategies.split(","):
        rows: List[Tuple[float, int, Dict[str, int]]] = []
        for _ in range(args.runs):
            seed += 10_000
            rows.append(run(strategy, args.jobs, args.models, args.load, seed))
        rows.sort(key=lambda r: r[0])
        span, loads, per = rows[len(rows) // 2]
        split = " / ".join(str(per.get(f"gpu{i + 1}", 0)) for i in range(SERVERS))
        print(f"| {strategy} | {statistics.median(r[0] for r in rows):.1f} | {span / bound:.2f} | {loads} | {split} |", flush=True)


if __name__ == "__main__":
    main()
