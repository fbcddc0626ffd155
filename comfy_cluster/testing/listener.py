"""A small blocking websocket listener for tests of a (mock or real) ComfyUI server.

Built on websocket-client, which the library depends on anyway. It keeps every frame it
read so that a test can assert on the exact order of events.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Dict, List, Optional, Sequence

import websocket

__all__ = ["WsListener", "TERMINAL_EVENTS", "types_of"]

TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")

Message = Dict[str, Any]


class WsListener:
    """``GET /ws?clientId=...`` on ``base_url``; reads the first status frame on connect.
    ``timeout`` bounds the connect and each read (a hang), generously for a loaded machine."""

    def __init__(self, base_url: str, client_id: Optional[str] = None, timeout: float = 30.0, read_first: bool = True) -> None:
        self.client_id = client_id if client_id is not None else str(uuid.uuid4())
        ws_base = "ws" + base_url.rstrip("/")[len("http") :]
        query = f"?clientId={self.client_id}" if self.client_id else ""
        self.ws = websocket.create_connection(f"{ws_base}/ws{query}", timeout=timeout)
        self.messages: List[Message] = []
        self.first: Optional[Message] = self.recv() if read_first else None

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next frame (binary frames become ``{"binary": True, "length": n}``)."""
        if timeout is not None:
            self.ws.settimeout(timeout)
        raw = self.ws.recv()
        if isinstance(raw, bytes):
            message: Message = {"binary": True, "length": len(raw)}
        else:
            message = json.loads(raw)
        self.messages.append(message)
        return message

    def until(self, predicate: Callable[[Message], bool], timeout: Optional[float] = None) -> List[Message]:
        """Read until a frame satisfies ``predicate``; returns the frames read, that one last."""
        read: List[Message] = []
        while True:
            message = self.recv(timeout)
            read.append(message)
            if predicate(message):
                return read

    def until_done(self, prompt_id: str, timeout: Optional[float] = None) -> List[Message]:
        """Read until ``executing`` with ``node: null`` for ``prompt_id`` (the job is in history)."""
        return self.until(
            lambda m: m.get("type") == "executing"
            and m["data"].get("node") is None
            and m["data"].get("prompt_id") == prompt_id,
            timeout,
        )

    def until_event(self, prompt_id: str, kinds: Sequence[str] = TERMINAL_EVENTS, timeout: Optional[float] = None) -> List[Message]:
        """Read until one of ``kinds`` arrives for ``prompt_id``."""
        return self.until(lambda m: m.get("type") in kinds and m.get("data", {}).get("prompt_id") == prompt_id, timeout)

    def expect_silence(self, seconds: float) -> List[Message]:
        """Read for ``seconds``; returns whatever arrived (a test usually wants nothing)."""
        got: List[Message] = []
        before = self.ws.gettimeout()
        self.ws.settimeout(seconds)
        try:
            while True:
                got.append(self.recv())
        except websocket.WebSocketTimeoutException:
            return got
        finally:
            if self.ws.connected:
                self.ws.settimeout(before)  # later reads keep the listener's own bound

    def close(self) -> None:
        try:
            self.ws.close(timeout=1)
        except Exception:  # noqa: BLE001 - closing a broken socket is fine
            pass

    def __enter__(self) -> "WsListener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def types_of(messages: Sequence[Message], skip: Sequence[str] = ("progress_state",)) -> List[str]:
    """The ``type`` of each frame, without the ones in ``skip``."""
    return [m.get("type", "binary") for m in messages if m.get("type") not in skip]
