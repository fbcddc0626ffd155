"""Gateway replicas on one PostgreSQL, and crashes: load, take-over, restart.

Processes as deployed: mock ComfyUI servers (``comfy-cluster mock-server``, jobs of
``--job-seconds``), a real PostgreSQL server of its own (a temporary cluster), and
``comfy-cluster gateway`` replicas, each a process of its own. Twenty client threads each
hold a websocket on one replica and post their prompts through another (as behind a load
balancer), then wait for each prompt's end (``executing`` with ``node: null``) on their
socket; a client whose replica was killed reconnects to another with its clientId.

Modes:
* ``replicas``: 3 replicas, no fault.
* ``kill``: the same, and replica r0 is killed with SIGKILL once a third of the prompts are
  accepted; reported: seconds from the kill until no prompt is held by r0 any more (taken
  over by the others).
* ``sqlite``: one gateway on SQLite, killed with SIGKILL at a third and started again on the
  same state; reported: seconds from the kill until the new process listens with every
  unfinished prompt taken up.
* ``latency``: added latency per job against a mock server directly (one client, one job
  after another), through a replica on PostgreSQL and through a gateway on SQLite.

Checked for every prompt: answered 200 at POST, ended with ``execution_success`` on its
client's socket, in ``/history``, and executed exactly once on the servers (each prompt has
a seed of its own; the servers' histories are counted by seed).

Run: python -m bench.bench_gateway_replicas --mode replicas|kill|sqlite|latency [--clients 20] [--prompts 50]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Dict, List, Optional, Set

import requests
import websocket

from comfy_cluster.cli import demo_workflow
from comfy_cluster.testing.postgres import postgres_server

try:
    from bench.bench_gateway import client_jobs, free_port, wait_listening
except ImportError:  # python bench/bench_gateway_replicas.py
    from bench_gateway import client_jobs, free_port, wait_listening  # type: ignore[import-not-found,no-redef]


def start_mocks(n: int, speed: float) -> "tuple[List[str], List[subprocess.Popen[bytes]]]":
    urls, procs = [], []
    for i in range(n):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "mock-server", "--port", str(port), "--speed", str(speed), "--name", f"m{i}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_listening(url, p)
        urls.append(url)
        procs.append(p)
    return urls, procs


class Replica:
    def __init__(self, servers: str, state: str, name: Optional[str]) -> None:
        self.servers, self.state, self.name = servers, state, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: "Optional[subprocess.Popen[bytes]]" = None

    def start(self) -> "Replica":
        extra = ["--replica", self.name] if self.name else []
        env = dict(os.environ, NUKE_COMFYUI_SERVERS=self.servers)
        self.proc = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "gateway", "--port", str(self.port), "--state", self.state, *extra],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.url, self.proc, timeout=60)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class _Accepted:
    """The answer a lost POST had: accepted under the client's prompt_id."""

    status_code = 200

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id

    def json(self) -> Dict[str, str]:
        return {"prompt_id": self.prompt_id}


class Client(threading.Thread):
    def __init__(self, socket_url: str, post_url: str, prompts: int, seed0: int, go: threading.Event, seconds: float) -> None:
        super().__init__(daemon=True)
        self.socket_url, self.post_url, self.prompts, self.seed0, self.go, self.seconds = socket_url, post_url, prompts, seed0, go, seconds
        self.cid = str(uuid.uuid4())
        self.errors: List[str] = []
        self.ids: Set[str] = set()
        self.ended: Dict[str, str] = {}
        self.accepted = 0
        self.from_history = 0  # ends found in /history, not on the socket
        self.reposted = 0  # POSTs sent again through a live replica (as a load balancer would)
        self.fallback: List[str] = []
        self._lock = threading.Lock()
        self.ws = self._connect(socket_url)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _connect(self, url: str) -> websocket.WebSocket:
        ws = websocket.create_connection(url.replace("http", "ws", 1) + f"/ws?clientId={self.cid}", timeout=600)
        return ws

    def reconnect(self, url: str) -> None:
        """As a client does after its socket dropped: a new socket (same clientId) on a live
        replica, then /history for the prompts whose end it may have missed meanwhile."""
        self.socket_url = url
        self.ws = self._connect(url)
        with self._lock:
            missing = [p for p in self.ids if p not in self.ended]
        for pid in missing:
            item = requests.get(url + f"/history/{pid}", timeout=60).json().get(pid)
            if item is not None:
                with self._lock:
                    self.ended.setdefault(pid, "execution_success" if item["status"]["status_str"] == "success" else "execution_error")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        ws = self.ws
        try:
            while True:
                msg = ws.recv()
                if not isinstance(msg, str):
                    continue
                m = json.loads(msg)
                data = m.get("data") or {}
                pid = data.get("prompt_id")
                with self._lock:
                    if m["type"] in ("execution_success", "execution_error", "execution_interrupted") and pid:
                        self.ended.setdefault(pid, m["type"])
        except Exception:  # noqa: BLE001 - the replica was killed: reconnect() follows
            return

    def poll_history(self, url: str) -> None:
        """A client that missed an end on its socket (its replica died) finds it in /history."""
        with self._lock:
            missing = [p for p in self.ids if p not in self.ended]
        for pid in missing:
            item = requests.get(url + f"/history/{pid}", timeout=60).json().get(pid)
            if item is not None:
                with self._lock:
                    self.ended.setdefault(pid, "execution_success" if item["status"]["status_str"] == "success" else "execution_error")
                    self.from_history += 1

    def finished(self) -> bool:
        with self._lock:
            return self.ids <= set(self.ended)

    def run(self) -> None:
        s = requests.Session()
        self.go.wait()
        for i in range(self.prompts):
            # The client's own prompt_id: a POST sent again after its answer was lost is
            # refused as a duplicate instead of running the prompt twice.
            body = {"prompt": demo_workflow(self.seconds, 1, self.seed0 + i), "client_id": self.cid, "prompt_id": str(uuid.uuid4())}
            for attempt in range(600):
                try:
                    r = s.post(self.post_url + "/prompt", json=body, timeout=120)
                    if attempt and r.status_code == 400 and "invalid_prompt_id" in r.text:
                        r = _Accepted(body["prompt_id"])  # the first POST got there
                    break
                except requests.ConnectionError:  # its replica is down: another (or it, restarted)
                    self.post_url = self.fallback[attempt % len(self.fallback)]
                    self.reposted += 1
                    time.sleep(0.1)
            with self._lock:
                if r.status_code != 200:
                    self.errors.append(f"POST {r.status_code}")
                else:
                    self.ids.add(r.json()["prompt_id"])
                self.accepted += 1


def executions_by_seed(mocks: List[str]) -> Dict[int, int]:
    counts: Dict[int, int] = collections.Counter()
    for url in mocks:
        for item in requests.get(url + "/history", timeout=60).json().values():
            prompt = item["prompt"][2]
            counts[int(prompt["2"]["inputs"]["seed"])] += 1
    return counts


def run_load(mode: str, clients: int, prompts: int, job_seconds: float, mocks: int) -> Dict[str, object]:
    urls, mock_procs = start_mocks(mocks, 1.0)
    servers = json.dumps([{"name": f"m{i}", "url": u, "max_queue": 2} for i, u in enumerate(urls)])
    folder = tempfile.mkdtemp(prefix="bench-replicas-")
    replicas: List[Replica] = []
    out: Dict[str, object] = {"mode": mode}
    try:
        with postgres_server() as pg:
            if mode == "sqlite":
                replicas = [Replica(servers, f"sqlite:///{folder}/gw.sqlite3", None).start()]
            else:
                replicas = [Replica(servers, pg, f"r{i}").start() for i in range(3)]
            n = len(replicas)
            go = threading.Event()
            cs = [Client(replicas[i % n].url, replicas[(i + 1) % n].url, prompts, 1_000_000 * (i + 1), go, job_seconds) for i in range(clients)]
            for c in cs:
                c.fallback = [r.url for r in replicas[1:]] or [replicas[0].url]
                c.start()
            t0 = time.monotonic()
            go.set()
            total = clients * prompts
            fault_seconds = None
            if mode in ("kill", "sqlite"):
                while sum(c.accepted for c in cs) < total // 3:
                    time.sleep(0.01)
                victim = replicas[0]
                victim.kill9()
                killed = time.monotonic()
                if mode == "sqlite":
                    victim.start()
                    fault_seconds = time.monotonic() - killed
                    for c in cs:
                        c.reconnect(victim.url)
                else:
                    for c in cs:
                        if c.socket_url == victim.url:
                            c.reconnect(replicas[1].url)
                    import psycopg

                    host, port = pg.split("@")[1].split("/")[0].split(":")
                    with psycopg.connect(f"host={host} port={port} user=postgres dbname=comfy", autocommit=True) as conn:
                        while True:
                            held = conn.execute("SELECT count(*) FROM cc_prompts WHERE replica = 'r0'").fetchone()[0]
                            alive = conn.execute("SELECT count(*) FROM cc_replicas WHERE replica = 'r0'").fetchone()[0]
                            if not held and not alive:
                                break
                            time.sleep(0.05)
                    fault_seconds = time.monotonic() - killed
            posted_by = time.monotonic()
            for c in cs:
                c.join()
            accept_seconds = time.monotonic() - t0
            deadline = time.monotonic() + 900
            framed_at = None
            while not all(c.finished() for c in cs) and time.monotonic() < deadline:
                time.sleep(0.05)
                if mode != "replicas" and time.monotonic() - t0 > 5 and framed_at is None and sum(len(c.ended) for c in cs) >= total:
                    framed_at = time.monotonic()
                if mode != "replicas" and int(time.monotonic() * 20) % 40 == 0:  # every 2 s: what a client polls
                    live = [r for r in replicas if r.proc is not None and r.proc.poll() is None][-1]
                    for c in cs:
                        c.poll_history(live.url)
            wall = time.monotonic() - t0
            alive = [r for r in replicas if r.proc is not None and r.proc.poll() is None]
            errors = sum(len(c.errors) for c in cs)
            lost = 0
            for c in cs:
                for pid in c.ids:
                    if c.ended.get(pid) != "execution_success":
                        lost += 1
                    elif pid not in requests.get(alive[-1].url + f"/history/{pid}", timeout=60).json():
                        lost += 1
            counts = executions_by_seed(urls)
            twice = sum(1 for n_ in counts.values() if n_ > 1)
            out.update(prompts=total, reposted=sum(c.reposted for c in cs), ends_from_history=sum(c.from_history for c in cs), errors=errors, lost=lost, twice=twice, executed=sum(counts.values()),
                       wall_s=round(wall, 1), accepted_per_s_per_replica=round(total / accept_seconds / n, 1),
                       fault_s=None if fault_seconds is None else round(fault_seconds, 2), posted_s=round(posted_by - t0, 1))
    finally:
        for r in replicas:
            r.stop()
        for p in mock_procs:
            p.terminate()
            p.wait(timeout=30)
    return out


def run_latency(jobs: int, runs: int) -> Dict[str, object]:
    urls, mock_procs = start_mocks(1, 1000.0)
    servers = json.dumps([{"name": "m0", "url": urls[0], "max_queue": 2}])
    folder = tempfile.mkdtemp(prefix="bench-latency-")
    out: Dict[str, object] = {}
    try:
        with postgres_server() as pg:
            gws = {"sqlite": Replica(servers, f"sqlite:///{folder}/gw.sqlite3", None).start(), "postgresql": Replica(servers, pg, "r0").start()}
            client_jobs(urls[0], 20, 1)
            for g in gws.values():
                client_jobs(g.url, 20, 1000)
            direct: List[float] = []
            via: Dict[str, List[float]] = {k: [] for k in gws}
            seed = 10_000
            for _ in range(runs):
                seed += 100_000
                direct.append(statistics.median(client_jobs(urls[0], jobs, seed)))
                for k, g in gws.items():
                    seed += 100_000
                    via[k].append(statistics.median(client_jobs(g.url, jobs, seed)))
            d = statistics.median(direct)
            out["direct_ms"] = round(d * 1000, 2)
            for k in gws:
                out[f"{k}_ms"] = round(statistics.median(via[k]) * 1000, 2)
                out[f"{k}_added_ms"] = round((statistics.median(via[k]) - d) * 1000, 2)
            for g in gws.values():
                g.stop()
    finally:
        for p in mock_procs:
            p.terminate()
            p.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["replicas", "kill", "sqlite", "latency"], default="replicas")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--job-seconds", type=float, default=0.03)
    ap.add_argument("--mocks", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if args.mode == "latency":
        print(json.dumps(run_latency(args.jobs, args.runs)))
    else:
        print(json.dumps(run_load(args.mode, args.clients, args.prompts, args.job_seconds, args.mocks)))


if __name__ == "__main__":
    main()
