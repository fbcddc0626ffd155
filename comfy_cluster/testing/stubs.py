"""Many cheap stand-ins for ComfyUI servers, in a process of their own: each answers
``GET /queue`` (empty) and ``GET /system_stats`` as ComfyUI does, and nothing else.

For measuring the client side of a large pool (memory, probe rounds) without running a full
mock server per port: 100 :class:`MockComfyServer` would cost this process their threads and
memory, and their CPU would be measured with the client's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from typing import Iterator, List

__all__ = ["stub_servers"]

_SERVE = r"""
import asyncio, json, sys
QUEUE = json.dumps({"queue_running": [], "queue_pending": []}).encode()
STATS = json.dumps({"system": {"comfyui_version": "0.3.64"}, "devices": [{"name": "stub", "vram_total": 1, "vram_free": 1}]}).encode()

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = STATS if b"/system_stats" in head.split(b"\r\n", 1)[0] else QUEUE
            if DELAY:
                await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main(n):
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(n)]
    print(json.dumps(["http://127.0.0.1:%d" % s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

DELAY = float(sys.argv[2])
asyncio.run(main(int(sys.argv[1])))
"""


@contextlib.contextmanager
def stub_servers(n: int, delay: float = 0.0) -> Iterator[List[str]]:
    """``n`` stub servers on 127.0.0.1 (their URLs), each answering after ``delay`` seconds
    (costing that process almost no CPU, as a server on a machine of its own); stopped on
    exit."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(n), str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the stub servers did not start")
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
