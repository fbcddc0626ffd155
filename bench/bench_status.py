"""Status probing costs.

1. ``status(refresh=True)`` of 32 mock servers that each answer after 50 ms, against one such
   server (target: <= 1.5x the single-server time); also the first status of a new pool, which
   starts its probe threads, opens its connections and reads /system_stats too.
2. A pool with one server that accepts connections and never answers: the first refresh takes
   no longer than the probe timeout, and later ``select()`` calls are as fast as without it.

Run: python -m bench.bench_status [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import List

from comfy_cluster import ServerPool
from comfy_cluster.testing import Fault, MockCluster


# 32 servers that answer /queue and /system_stats after 50 ms, in another process. Each answer
# costs the serving process almost no CPU, as it would cost a real server on a machine of its
# own; 32 full mock servers (aiohttp) on this 2-core machine would measure their own CPU time.
SERVE = r"""
import asyncio, json, sys
QUEUE = json.dumps({"queue_running": [], "queue_pending": []}).encode()
STATS = json.dumps({"system": {"comfyui_version": "0.3.64"}, "devices": [{"name": "stub", "vram_total": 1, "vram_free": 1}]}).encode()

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = STATS if b"/system_stats" in head.split(b"\r\n", 1)[0] else QUEUE
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(32)]
    print(json.dumps(["http://127.0.0.1:%d" % s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def first_status(urls: List[str], n: int) -> float:
    """The first status of a brand-new pool: probe threads, connections, /system_stats too."""
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls[:n])]
    with ServerPool(servers, background_status=False) as pool:
        t0 = time.perf_counter()
        pool.status(refresh=True)
        return time.perf_counter() - t0


def forced_refresh(urls: List[str], n: int, times: int = 5) -> float:
    """``status(refresh=True)`` of a pool in use: every server probed now, nothing cached."""
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls[:n])]
    with ServerPool(servers, background_status=False) as pool:
        pool.status(refresh=True)
        samples = []
        for _ in range(times):
            t0 = time.perf_counter()
            pool.status(refresh=True)
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


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
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = json.loads(proc.stdout.readline())
        first_status(urls, 32)  # warm-up: imports
        rows = []
        for label, fn in (("status(refresh=True) of a pool in use", forced_refresh), ("first status() of a new pool", first_status)):
            one = statistics.median(fn(urls, 1) for _ in range(args.runs))
            many = statistics.median(fn(urls, 32) for _ in range(args.runs))
            rows.append((label, one, many))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    print("| every server answers after 50 ms | 1 server, ms | 32 servers, ms | ratio |")
    print("|---|---|---|---|")
    for label, one, many in rows:
        print(f"| {label} | {one * 1000:.1f} | {many * 1000:.1f} | {many / one:.2f}x |")
    print()
    with MockCluster(speeds=[1.0, 1.0]) as cluster:
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
