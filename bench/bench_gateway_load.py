"""1,000 prompts queued at once by 20 clients through one gateway: held without errors, with
bounded memory.

Processes as deployed: three mock ComfyUI servers (jobs of 30 ms) and ``comfy-cluster
gateway`` in front of them, each a process of its own. Twenty client threads here each open
their websocket and post 50 prompts as fast as they can, then wait for every one of their
prompts to end (``executing`` with ``node: null``). Checked: every POST answered 200, every
prompt ended in ``execution_success`` on its own client's socket, with its own prompt_id,
and appears in ``/history``. Reported: wall time, the gateway's queue at its longest, and the
gateway process's memory (RSS) before, at its peak, and after each of ``--rounds`` rounds
(bounded: later rounds do not grow it further beyond the history it keeps).

Run: python -m bench.bench_gateway_load [--clients 20] [--prompts 50] [--rounds 3] [--job-seconds 0.03]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Dict, List, Set

import requests
import websocket

from comfy_cluster.cli import demo_workflow

try:  # python -m bench.bench_gateway_load (from the repository folder)
    from bench.bench_gateway import processes
except ImportError:  # python bench/bench_gateway_load.py
    from bench_gateway import processes  # type: ignore[import-not-found,no-redef]


def rss_kib(pid: int) -> Dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


class Client(threading.Thread):
    def __init__(self, url: str, prompts: int, seed0: int, start: threading.Event, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url, self.prompts, self.seed0, self.start_event, self.seconds = url, prompts, seed0, start, seconds
        self.cid = str(uuid.uuid4())
        self.errors: List[str] = []
        self.ids: Set[str] = set()
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={self.cid}", timeout=300)
        self.ws.recv()

    def run(self) -> None:
        s = requests.Session()
        self.start_event.wait()
        for i in range(self.prompts):
            r = s.post(self.url + "/prompt", json={"prompt": demo_workflow(self.seconds, 1, self.seed0 + i), "client_id": self.cid}, timeout=60)
            if r.status_code != 200:
                self.errors.append(f"POST {r.status_code}")
                continue
            self.ids.add(r.json()["prompt_id"])
        pending = set(self.ids)
        succeeded: Set[str] = set()
        while pending:
            raw = self.ws.recv()
            if not isinstance(raw, str):
                continue
            m = json.loads(raw)
            data = m.get("data", {})
            pid = data.get("prompt_id")
            if m["type"] in ("execution_error", "execution_interrupted"):
                self.errors.append(f"{m['type']} {pid}")
            if m["type"] == "execution_success":
                succeeded.add(pid)
            if m["type"] == "executing" and data.get("node") is None:
                if pid not in self.ids:
                    self.errors.append(f"foreign prompt {pid}")
                pending.discard(pid)
        if succeeded != self.ids:
            self.errors.append(f"{len(self.ids - succeeded)} without execution_success")
        self.ws.close()
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--job-seconds", type=float, default=0.03, help="time each job takes on its server (default 0.03)")
    args = ap.parse_args()
    total = args.clients * args.prompts
    print("| round | prompts | errors | wall s | longest queue | RSS before MiB | RSS after MiB | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    with processes(mocks=3, speed=1.0) as env:
        url, pid = env.gateway, env.gateway_pid
        for rnd in range(1, args.rounds + 1):
            before = rss_kib(pid)
            start = threading.Event()
            clients = [Client(url, args.prompts, rnd * 10_000_000 + c * 10_000, start, args.job_seconds) for c in range(args.clients)]
            for c in clients:
                c.start()
            longest = 0
            t0 = time.perf_counter()
            start.set()
            while any(c.is_alive() for c in clients):
                longest = max(longest, requests.get(url + "/prompt", timeout=30).json()["exec_info"]["queue_remaining"])
                time.sleep(0.05)
            wall = time.perf_counter() - t0
            errors = [e for c in clients for e in c.errors]
            history = requests.get(url + "/history", timeout=60).json()
            missing = sum(1 for c in clients for p in c.ids if p not in history)
            after = rss_kib(pid)
            print(f"| {rnd} | {total} | {len(errors) + missing} | {wall:.1f} | {longest} | {before['VmRSS'] / 1024:.0f} | "
                  f"{after['VmRSS'] / 1024:.0f} | {after['VmHWM'] / 1024:.0f} |")
            if errors:
                print("  first errors:", errors[:5])


if __name__ == "__main__":
    main()
