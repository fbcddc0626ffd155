"""Where a gateway's CPU goes: its threads and functions sampled while one client runs jobs.

Processes as deployed (one mock ComfyUI with instant jobs, one ``comfy-cluster gateway`` on a
SQLite state) and the bare ComfyUI client of ``bench_gateway``, one job after another. The
gateway is sampled by py-spy (``pip install py-spy``: a measuring tool, not a dependency of the
project) with ``--gil``: only the thread that holds the GIL at each sample counts, so waits are
left out and the shares are of the Python work. Printed: samples per job, the share of each
thread, and the functions with the most samples (in them, and below them).

Run: python -m bench.bench_gateway_profile [--seconds 20] [--rate 500] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Counter, Dict, List, Tuple

try:
    from bench.bench_gateway import client_jobs
    from bench.bench_gateway_replicas import Replica, start_mocks
except ImportError:  # python bench/bench_gateway_profile.py
    from bench_gateway import client_jobs  # type: ignore[import-not-found,no-redef]
    from bench_gateway_replicas import Replica, start_mocks  # type: ignore[import-not-found,no-redef]


def read_raw(path: str) -> Tuple[int, Counter[str], Counter[str], Counter[str]]:
    """py-spy's raw output (``thread;frame;...;frame count`` per line): samples in all, per
    thread, per function where the sample was (self), per function anywhere on the stack."""
    threads: Counter[str] = collections.Counter()
    inside: Counter[str] = collections.Counter()
    below: Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            threads[re.sub(r"\s*\(\d+\)|\(0x[0-9a-f]+\)", "", frames[0]).strip()] += n
            names = [re.sub(r":\d+\)$", ")", f) for f in frames[1:]]
            if names:
                inside[names[-1]] += n
            for name in set(names):
                below[name] += n
    return total, threads, inside, below


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    spy_bin = shutil.which("py-spy")
    if spy_bin is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    urls, mocks = start_mocks(1, 1000.0)
    folder = tempfile.mkdtemp(prefix="bench-profile-")
    raw = os.path.join(folder, "raw.txt")
    gw = Replica(json.dumps([{"name": "m0", "url": urls[0], "max_queue": 2}]), f"sqlite:///{folder}/gw.sqlite3", None).start()
    try:
        assert gw.proc is not None
        client_jobs(gw.url, 50, 1)  # warm: sockets, node lists
        spy = subprocess.Popen([spy_bin, "record", "--pid", str(gw.proc.pid), "--gil", "--threads", "--rate", str(args.rate),
                                "--format", "raw", "--output", raw, "--duration", str(int(args.seconds))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times: List[float] = []
        stop = threading.Event()

        def client() -> None:
            seed = 100_000
            while not stop.is_set():
                times.extend(client_jobs(gw.url, 20, seed))
                seed += 20

        runner = threading.Thread(target=client, daemon=True)
        runner.start()
        spy.wait()
        stop.set()
        runner.join(timeout=60)
        total, threads, inside, below = read_raw(raw)
    finally:
        gw.stop()
        for p in mocks:
            p.terminate()
            p.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
    jobs = len(times)
    out: Dict[str, object] = {
        "jobs": jobs, "job_ms_median": round(statistics.median(times) * 1000, 2) if times else None,
        "samples": total, "cpu_ms_per_job": round(total / args.rate / max(jobs, 1) * 1000, 2),
        "threads": {name: round(100 * n / total, 1) for name, n in threads.most_common()},
    }
    print(json.dumps(out, indent=1))
    for title, counts in (("in the function", inside), ("in it or below it", below)):
        print(f"-- samples {title} (% of all)")
        for name, n in counts.most_common(args.top):
            print(f"{100 * n / total:6.1f}  {name}")


if __name__ == "__main__":
    main()
