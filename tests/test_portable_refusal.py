"""A stopped ComfyUI on Windows (issue 21 item 5): Windows retries a refused connection and
reports the refusal only after about 2 s. A probe whose connect timeout is shorter reads it as
"connect timed out" (an unreachable host), never "connection refused".

No server on Linux refuses that slowly, so the connection call is replaced (the one patch of
these tests): to the closed port it answers as Windows does, refused after 2 s, or timed out
if the caller's timeout is shorter."""

from __future__ import annotations

import socket
import threading
from typing import Any, Optional

import pytest
import urllib3.util.connection

from comfy_cluster import ServerPool

WINDOWS_REFUSAL_SECONDS = 2.0  # measured on Windows 10/11 against a closed port


@pytest.fixture
def windows_refusals(monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    real = urllib3.util.connection.create_connection
    seen = []

    def create_connection(address: Any, timeout: Optional[float] = None, *args: Any, **kwargs: Any) -> socket.socket:
        if address[1] != port:
            return real(address, timeout, *args, **kwargs)
        seen.append(timeout)
        waiting = threading.Event()  # the OS's own retries: nothing to wait for but time
        if timeout is not None and timeout < WINDOWS_REFUSAL_SECONDS:
            waiting.wait(timeout)
            raise socket.timeout("timed out")
        waiting.wait(WINDOWS_REFUSAL_SECONDS)
        raise ConnectionRefusedError(10061, "No connection could be made because the target machine actively refused it")

    monkeypatch.setattr(urllib3.util.connection, "create_connection", create_connection)
    return port, seen


def test_stopped_comfyui_on_windows_reads_as_refused(windows_refusals):
    port, seen = windows_refusals
    with ServerPool([{"name": "gpu1", "host": "127.0.0.1", "port": port}], background_status=False) as pool:
        st = pool.status(refresh=True)[0]
    assert seen, "the probe did not connect"
    assert not st.online and "connection refused" in (st.error or ""), st.error
