"""Where a job's time goes in a gateway on SQLite: per-stage timestamps and CPU per job.

Processes as deployed: one mock ComfyUI (instant jobs) and one ``comfy-cluster gateway`` on a
SQLite state, each a process of its own; the client is the bare ComfyUI script of
``bench_gateway`` (socket first, POST /prompt, wait for ``executing`` null, GET /history),
run against the server directly, then through the gateway, then directly again. The gateway
runs with timestamps at the stages of a job's path (``--trace``; they cost some time
themselves) or without them; ``CLOCK_MONOTONIC`` is shared by the processes, so each stage is
given in ms from the client's POST (median of the jobs). Also: the gateway's and the mock's
CPU time per job (from /proc), which a shared machine's load disturbs less than wall time.

Run: python -m bench.bench_gateway_stages [--jobs 300] [--trace] [--state sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

try:
    from bench.bench_gateway import Times, client_stages as client, free_port, wait_listening
except ImportError:  # python bench/bench_gateway_stages.py
    from bench_gateway import Times, client_stages as client, free_port, wait_listening  # type: ignore[import-not-found,no-redef]

#: Runs the gateway's command line with timestamps at these stages (class, method, label).
_TRACED = """
import atexit, functools, json, os, sys, threading, time
EV = []
def wrap(cls, name, label, extra=None):
    f = getattr(cls, name)
    if hasattr(f, '__wrapped_stage__'):
        return
    import inspect
    if inspect.iscoroutinefunction(f):
        async def g(*a, **k):
            EV.append((time.perf_counter(), label + '>', extra(*a) if extra else None))
            try:
                return await f(*a, **k)
            finally:
                EV.append((time.perf_counter(), label + '<', None))
    else:
        def g(*a, **k):
            EV.append((time.perf_counter(), label + '>', extra(*a) if extra else None))
            try:
                return f(*a, **k)
            finally:
                EV.append((time.perf_counter(), label + '<', None))
    g.__wrapped_stage__ = True
    setattr(cls, name, functools.wraps(f)(g))
if os.environ.get('STAGES_TRACE') == '1':
    from comfy_cluster.gateway.prompt_routes import PromptRoutes
    from comfy_cluster.gateway.book import JobBook
    from comfy_cluster.scheduling import Scheduler
    from comfy_cluster.lifecycle import Runners
    from comfy_cluster.client import ComfyClient
    from comfy_cluster.events import ServerSocket
    from comfy_cluster.jobs import Job
    from comfy_cluster.state.group import GroupCommit
    wrap(PromptRoutes, 'post_prompt', 'gateway: POST /prompt handler')
    wrap(JobBook, '_submit', 'pool.submit (executor thread)')
    wrap(Scheduler, '_start', 'dispatcher: attempt started')
    wrap(Runners, '_run', 'runner: attempt')
    wrap(ComfyClient, 'post_prompt', 'runner: POST /prompt to the server')
    wrap(ComfyClient, 'history', 'runner: GET /history from the server')
    wrap(ServerSocket, '_handle', 'pool socket: frame', extra=lambda s, m: m.get('type') + ('' if (m.get('data') or {}).get('node', 1) is not None else ' null'))
    wrap(Job, '_finish', 'job: final')
    wrap(JobBook, '_on_done', 'loop: job done')
    wrap(JobBook, '_told', 'loop: end told (history item committed)')
    wrap(JobBook, 'history_json', 'loop: GET /history item')
    wrap(JobBook, 'history_row', 'loop: history item read from the store')
    wrap(GroupCommit, '_commit', 'commit', extra=lambda s, b: ','.join(getattr(e.op, '__name__', '?') for e in b))
    atexit.register(lambda: json.dump(EV, open(os.environ['STAGES_OUT'], 'w')))
from comfy_cluster.gateway.cli import run_gateway
sys.exit(run_gateway(sys.argv[1:]))
"""

def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--trace", action="store_true", help="timestamps at each stage (they cost some time themselves)")
    ap.add_argument("--state", choices=["sqlite", "postgresql"], default="sqlite",
                    help="the gateway's store: a SQLite file, or a replica on a PostgreSQL server of its own")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        state = None
        if args.state == "postgresql":
            from comfy_cluster.testing.postgres import postgres_server

            state = stack.enter_context(postgres_server())
        run(args, state)


def run(args: argparse.Namespace, pg_url: "str | None") -> None:
    folder = tempfile.mkdtemp(prefix="bench-stages-")
    port = free_port()
    mock = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "mock-server", "--port", str(port), "--speed", "1000", "--name", "m0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    murl = f"http://127.0.0.1:{port}"
    gw = None
    try:
        wait_listening(murl, mock)
        gport = free_port()
        env = dict(os.environ, NUKE_COMFYUI_SERVERS=json.dumps([{"name": "m0", "url": murl, "max_queue": 2}]),
                   STAGES_TRACE="1" if args.trace else "0", STAGES_OUT=f"{folder}/stages.json", PYTHONPATH=os.getcwd())
        state = ["--state", pg_url, "--replica", "r0"] if pg_url else ["--state", f"sqlite:///{folder}/gw.sqlite3"]
        gw = subprocess.Popen([sys.executable, "-c", _TRACED, "--port", str(gport), *state],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gurl = f"http://127.0.0.1:{gport}"
        wait_listening(gurl, gw)
        client(gurl, 20, 1)  # warm up both
        client(murl, 20, 1)
        direct = client(murl, args.jobs, 100_000)
        g0, m0 = cpu_seconds(gw.pid), cpu_seconds(mock.pid)
        via = client(gurl, args.jobs, 200_000)
        g1, m1 = cpu_seconds(gw.pid), cpu_seconds(mock.pid)
        direct += client(murl, args.jobs, 300_000)
        m2 = cpu_seconds(mock.pid)
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        mock.terminate()
        mock.wait(30)

    def med(rows: List[Times], i: int) -> float:
        return statistics.median((r[i] - r[0]) * 1000 for r in rows)

    print(f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}; jobs {args.jobs}; trace {args.trace}; state {args.state}")
    print(f"CPU per job: gateway {(g1 - g0) / args.jobs * 1000:.2f} ms, mock {(m1 - m0) / args.jobs * 1000:.2f} ms "
          f"(mock per direct job {(m2 - m1) / args.jobs * 1000:.2f} ms)")
    print(f"{'ms from the POST (median)':40s} {'direct':>8s} {'gateway':>8s}")
    for i, name in ((1, "client: POST answered"), (2, "client: end seen"), (3, "client: history read")):
        print(f"{name:40s} {med(direct, i):8.2f} {med(via, i):8.2f}")
    print(f"added at the median: {med(via, 3) - med(direct, 3):.2f} ms")
    if args.trace and os.path.exists(f"{folder}/stages.json"):
        events = sorted(json.load(open(f"{folder}/stages.json")), key=lambda e: e[0])
        stages: Dict[str, List[float]] = collections.defaultdict(list)
        for t0, _, _, t3 in via:
            seen: Dict[str, int] = collections.Counter()
            for t, label, extra in (e for e in events if t0 <= e[0] <= t3):
                key = label + (f" ({extra})" if extra else "")
                seen[key] += 1
                stages[key if seen[key] == 1 else f"{key} #{seen[key]}"].append((t - t0) * 1000)
        print("stage (> begins, < ends), ms from the client's POST, median over the jobs that have it")
        for key, values in sorted(stages.items(), key=lambda kv: statistics.median(kv[1])):
            wanted = "frame" not in key or "execution_start" in key or "null" in key
            if wanted and len(values) >= len(via) // 2:
                print(f"  {statistics.median(values):7.2f}  {key}")


if __name__ == "__main__":
    main()
