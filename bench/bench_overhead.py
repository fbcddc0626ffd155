"""The client's own overhead per job, against a bare requests + websocket-client script.

One instant mock server (jobs take no time). Both sides run the same jobs one after another:
POST /prompt, wait on the websocket for the job's end, GET /history. Target: the library
within 1.2x of the bare script.

Run: python -m bench.bench_overhead [--runs 5] [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

import requests
import websocket

from comfy_cluster import ServerPool
from comfy_cluster.cli import demo_workflow
from comfy_cluster.testing import MockComfyServer


def bare(url: str, jobs: int, seed0: int) -> float:
    cid = str(uuid.uuid4())
    ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={cid}")
    ws.recv()  # first status
    s = requests.Session()
    t0 = time.perf_counter()
    for i in range(jobs):
        pid = s.post(url + "/prompt", json={"prompt": demo_workflow(0.0, 1, seed0 + i), "client_id": cid}).json()["prompt_id"]
        while True:
            msg = ws.recv()
            if isinstance(msg, str):
                m = json.loads(msg)
                if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid:
                    break
        s.get(url + f"/history/{pid}").json()
    took = time.perf_counter() - t0
    ws.close()
    s.close()
    return took / jobs


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
