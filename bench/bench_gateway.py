"""The gateway's added latency per job: a ComfyUI client talking to the server directly, and
the same client talking to ``comfy-cluster gateway`` in front of that server.

Real processes, as deployed: one mock ComfyUI (``comfy-cluster mock-server``, instant jobs)
and one gateway (``comfy-cluster gateway``) each in a process of its own; the client here
is the bare requests + websocket-client script every ComfyUI client is: POST /prompt, wait
on its websocket for ``executing`` with ``node: null``, GET /history. Each job is timed on
its own; direct and gateway rounds alternate. Goal: at most 5 ms added at the median.

Run: python -m bench.bench_gateway [--runs 5] [--jobs 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import requests
import websocket

from comfy_cluster.cli import demo_workflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(url: str, proc: "subprocess.Popen[bytes]", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            requests.get(url + "/queue", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


class Procs(NamedTuple):
    mocks: List[str]  # the mock servers' URLs
    gateway: str  # the gateway's URL
    gateway_pid: int


@contextlib.contextmanager
def processes(mocks: int = 1, speed: float = 1000.0, state: Optional[str] = None) -> Iterator[Procs]:
    """``mocks`` mock servers and one gateway over them, each a process of its own; the
    gateway's state in ``state`` (default: a SQLite file in a temporary folder)."""
    procs: List["subprocess.Popen[bytes]"] = []
    folder = tempfile.mkdtemp(prefix="bench-gateway-")
    try:
        urls = []
        for i in range(mocks):
            port = free_port()
            p = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "mock-server", "--port", str(port), "--speed", str(speed), "--name", f"m{i}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            url = f"http://127.0.0.1:{port}"
            wait_listening(url, p)
            urls.append(url)
        gport = free_port()
        env = dict(os.environ, NUKE_COMFYUI_SERVERS=json.dumps([{"name": f"m{i}", "url": u, "max_queue": 2} for i, u in enumerate(urls)]))
        state = state or f"sqlite:///{folder}/gateway.sqlite3"
        g = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "gateway", "--port", str(gport), "--state", state], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(g)
        gurl = f"http://127.0.0.1:{gport}"
        wait_listening(gurl, g)
        yield Procs(urls, gurl, g.pid)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(folder, ignore_errors=True)


#: One job of a bare ComfyUI client: when it posted, had its answer, saw its end on the socket,
#: and had read its history (``time.perf_counter``: CLOCK_MONOTONIC on Linux).
Times = Tuple[float, float, float, float]


def client_stages(url: str, jobs: int, seed0: int) -> List[Times]:
    """A bare ComfyUI client (socket first, then post, follow, history), one job after another."""
    cid = str(uuid.uuid4())
    ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={cid}")
    ws.recv()  # first status
    s = requests.Session()
    out = []
    try:
        for i in range(jobs):
            t0 = time.perf_counter()
            pid = s.post(url + "/prompt", json={"prompt": demo_workflow(0.0, 1, seed0 + i), "client_id": cid}).json()["prompt_id"]
            t1 = time.perf_counter()
            while True:
                msg = ws.recv()
                if isinstance(msg, str):
                    m = json.loads(msg)
                    if m["type"] == "executing" and m["data"].get("node") is None and m["data"].get("prompt_id") == pid:
                        break
            t2 = time.perf_counter()
            item = s.get(url + f"/history/{pid}").json()[pid]
            assert item["status"]["status_str"] == "success", item["status"]
            out.append((t0, t1, t2, time.perf_counter()))
    finally:
        ws.close()
        s.close()
    return out


def client_jobs(url: str, jobs: int, seed0: int) -> List[float]:
    """Seconds per job for a bare ComfyUI client (see :func:`client_stages`)."""
    return [end - start for start, _, _, end in client_stages(url, jobs, seed0)]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=200)
    args = ap.parse_args()
    direct_medians, gateway_medians, direct_all, gateway_all = [], [], [], []
    with processes(mocks=1) as env:
        mock, gw = env.mocks[0], env.gateway
        client_jobs(mock, 20, 1)  # warm up both paths (sockets, node lists)
        client_jobs(gw, 20, 1000)
        seed = 10_000
        for _ in range(args.runs):
            seed += 100_000
            d = client_jobs(mock, args.jobs, seed)
            seed += 100_000
            g = client_jobs(gw, args.jobs, seed)
            direct_medians.append(statistics.median(d))
            gateway_medians.append(statistics.median(g))
            direct_all += d
            gateway_all += g
    md, mg = statistics.median(direct_medians), statistics.median(gateway_medians)
    print(f"| {args.jobs} instant jobs, one after another, x{args.runs} runs | median ms | p90 ms |")
    print("|---|---|---|")
    print(f"| client -> ComfyUI (mock) directly | {md * 1000:.2f} | {pct(direct_all, 0.9) * 1000:.2f} |")
    print(f"| client -> gateway -> ComfyUI (mock) | {mg * 1000:.2f} | {pct(gateway_all, 0.9) * 1000:.2f} |")
    print(f"| added by the gateway | {(mg - md) * 1000:.2f} | |")
    print(f"runs (median ms per run): direct {[round(x * 1000, 2) for x in direct_medians]}, gateway {[round(x * 1000, 2) for x in gateway_medians]}")


if __name__ == "__main__":
    main()
