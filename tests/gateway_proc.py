"""``comfy-cluster gateway`` as a real process for tests: started on a port of its own, read
for its start-up line, killed with SIGKILL like a crash."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from typing import Dict, List, Optional

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """One gateway process over ``servers_json`` on ``state``; ``start()`` returns once it
    listens (its URL is the same after every restart: the port is fixed)."""

    def __init__(self, servers_json: str, state: str, port: Optional[int] = None, extra: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.servers_json = servers_json
        self.state = state
        self.port = port or free_port()
        self.extra = list(extra or [])
        self.env = dict(env or {})
        self.proc: "Optional[subprocess.Popen[str]]" = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "GatewayProcess":
        env = dict(os.environ, NUKE_COMFYUI_SERVERS=self.servers_json, **self.env)
        env.pop("COMFY_CLUSTER_GATEWAY_TOKEN", None)
        env.pop("COMFY_CLUSTER_GATEWAY_STATE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "comfy_cluster", "gateway", "--port", str(self.port), "--state", self.state, *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not re.match(r"comfy-cluster gateway on http://", line):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"gateway did not start: {line!r} {err[-2000:]}")
        return self

    def kill9(self) -> None:
        """A crash: SIGKILL, nothing cleaned up."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_pipes()

    def stop(self) -> str:
        """SIGTERM (or SIGKILL if it hangs); its stderr."""
        if self.proc is None or self.proc.poll() is not None:
            self._close_pipes()
            return ""
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
        return err

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def get(self, path: str, **params: str) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=10)
