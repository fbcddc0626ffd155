"""The gateway's memory with one client that stops reading: peak RSS while a prompt's events
(JSON frames and preview images) pile up for it.

In-process: a mock ComfyUI, a pool and the gateway; one websocket client connects with a small
receive buffer and never reads; then the events of one long prompt are handed to the gateway's
relay on its loop, as the job book does: 20,000 ``progress`` frames of 2 KB and 2,000 previews
of 100 KB (about 240 MB offered). Prints the process's RSS before, at its peak (VmHWM) and
after, and what the relay holds.

Run: python -m bench.bench_gateway_memory [--json-frames 20000] [--previews 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import uuid
from typing import Any, Callable, Dict

import websocket

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.testing import MockComfyServer


def _status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024  # MiB
    return out


def _on_loop(gw: Gateway, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(run(), gw._loop).result(timeout=60)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-frames", type=int, default=20000)
    ap.add_argument("--previews", type=int, default=2000)
    args = ap.parse_args()
    with MockComfyServer(name="m") as server:
        pool = ServerPool([{"url": server.url, "name": "m"}], background_status=False)
        gw = Gateway(pool, port=0).start()
        try:
            cid = str(uuid.uuid4())
            ws = websocket.create_connection("ws" + gw.url[4:] + f"/ws?clientId={cid}", timeout=60, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
            # The relay's key: (user, clientId) since users came; the clientId before.
            key: Any = ("default", cid) if hasattr(gw.relay, "queue_bytes") else cid
            before = _status()
            progress = {"value": 1, "max": 100, "prompt_id": "p", "node": "3", "pad": "x" * 2000}
            preview = struct.pack(">II", 1, 2) + b"\x89" * 100_000
            every = max(1, args.json_frames // max(1, args.previews))
            for i in range(args.json_frames):
                _on_loop(gw, lambda: gw.relay.send(key, "progress", progress))
                if i % every == 0:  # each preview its own bytes, as each event's are
                    frame = preview + i.to_bytes(4, "big")
                    _on_loop(gw, lambda: gw.relay.send_bytes(key, frame))
            after = _status()
            print(f"RSS before {before['VmRSS']} MiB, peak {after['VmHWM']} MiB, after {after['VmRSS']} MiB; "
                  f"open sockets {gw.relay.connected}")
            ws.close()
        finally:
            gw.stop()
            pool.close()


if __name__ == "__main__":
    main()
