"""How long ``pool.close()`` takes, and what it leaves, when a job's server stops answering.

Issue 17's defect 1: a job runs, its server starts refusing connections, ``close()`` is
called. Measured: close()'s duration, the pool's threads alive when it returns, and the job's
terminal events seen by ``on_event`` over the next ``server_lost_after`` (+1 s), when a runner
left behind would report the job again.

Run: python -m bench.bench_close [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import List, Tuple

from comfy_cluster import ServerPool
from comfy_cluster.testing import MockComfyServer
from comfy_cluster.testing.workflows import sleep_workflow

LOST_AFTER = 15.0


def once() -> Tuple[float, List[str], List[str]]:
    server = MockComfyServer().start()
    try:
        server.pause_jobs()
        pool = ServerPool([{"name": "m", "url": server.url}], probe_timeout=(0.5, 1.0), request_timeout=(1.0, 2.0),
                          reconcile_interval=0.5, server_lost_after=LOST_AFTER)
        events: List[str] = []
        pool.submit(sleep_workflow(seconds=3, steps=6), on_event=lambda e: events.append(e.kind))
        while not server.queue_snapshot()[0]:
            threading.Event().wait(0.01)  # the mock's queue: nothing to await
        server.set_fault("refuse")
        start = time.monotonic()
        pool.close()
        took = time.monotonic() - start
        left = [t.name for t in threading.enumerate() if t.name.startswith("comfy-cluster")]
        threading.Event().wait(LOST_AFTER + 1)  # a runner left behind would report again by then
        return took, left, [k for k in events if k in ("succeeded", "failed", "cancelled")]
    finally:
        server.set_fault(None)
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [once() for _ in range(args.runs)]
    print("| close() seconds (median) | library threads left | terminal events per job |")
    print("|---|---|---|")
    print(f"| {statistics.median(r[0] for r in runs):.2f} | {sorted({n for r in runs for n in r[1]}) or 'none'} | "
          f"{sorted({len(r[2]) for r in runs})} |")


if __name__ == "__main__":
    main()
