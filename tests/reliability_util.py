"""Process-level measurements and tiny raw servers shared by the reliability and security suites."""

from __future__ import annotations

import gc
import http.server
import os
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional


def trimmed_rss_bytes() -> int:
    """:func:`rss_bytes` after a garbage collection and, with glibc, ``malloc_trim(0)``:
    memory freed but kept by the allocator (each thread that allocated has an arena of its
    own, and a load of many threads leaves tens of MiB free in them) is given back first,
    so what remains is what is still held."""
    gc.collect()
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "malloc_trim"):
                libc.malloc_trim(0)
        except OSError:  # not glibc (musl has no malloc_trim): the plain figure
            pass
    return rss_bytes()


def rss_bytes() -> int:
    """Resident memory of this process: /proc on Linux, the Win32 API on Windows, ``ps`` on
    macOS (which has neither /proc nor a current-RSS call in the standard library)."""
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/self/status")
    if sys.platform == "win32":  # pragma: no cover - Windows only
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
                (n, ctypes.c_size_t) for n in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                                               "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage", "QuotaNonPagedPoolUsage",
                                               "PagefileUsage", "PeakPagefileUsage")]

        counters = Counters()
        counters.cb = ctypes.sizeof(counters)
        handle = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(handle, ctypes.byref(counters), counters.cb):
            raise AssertionError("GetProcessMemoryInfo failed")
        return int(counters.WorkingSetSize)
    out = subprocess.run(["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) * 1024


def socket_fds() -> int:
    """Open sockets of this process: from the file descriptors where the OS lists them
    (/proc/self/fd on Linux, /dev/fd on macOS), else (Windows: sockets are not file
    descriptors) the socket objects still open."""
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd" if os.path.isdir("/dev/fd") else ""
    if not fd_dir:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() != -1)
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            if stat.S_ISSOCK(os.fstat(int(fd)).st_mode):
                count += 1
        except (OSError, ValueError):
            pass  # closed between listdir and fstat
    return count


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class RawServer:
    """An HTTP server on 127.0.0.1 whose answers a test writes by hand.

    ``handler(path, wfile)`` writes the whole response (status line, headers, body) for a GET
    or POST of ``path``; whatever it raises just closes the connection.
    """

    def __init__(self, handler: Callable[[str, "object"], None]) -> None:
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                outer.headers_seen.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                try:
                    handler(self.path, self.wfile)
                except Exception:
                    pass
                self.close_connection = True

            do_GET = _any
            do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.headers_seen: List[Dict[str, str]] = []
        self.httpd = _Server(("127.0.0.1", 0), H)
        self.httpd.timeout = 0.5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "RawServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def json_response(body: bytes, status: int = 200) -> Callable[[str, object], None]:
    def handler(path: str, wfile: object) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        wfile.write(head.encode() + body)  # type: ignore[attr-defined]

    return handler


_MOCK_SCRIPT = """
import sys
from comfy_cluster.testing import MockComfyServer
server = MockComfyServer(name=sys.argv[2], speed=float(sys.argv[3])).start()
if sys.argv[1] != "-":
    server.set_fault(sys.argv[1])
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


class SubprocessMock:
    """A mock server (with a standing ``fault``, or none) in another process, so that this
    process's memory holds only what the client keeps (the server's own buffers, history
    and jobs are elsewhere)."""

    def __init__(self, fault: Optional[str] = None, *, name: str = "sub", speed: float = 1.0) -> None:
        self.fault = fault
        self.name = name
        self.speed = speed

    def __enter__(self) -> "SubprocessMock":
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOCK_SCRIPT, self.fault or "-", self.name, str(self.speed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
