"""The websocket side of talking to a ComfyUI server, below the routing of :mod:`.events`:
a socket that refuses to buffer a message beyond a cap, reading one message, decoding a JSON
frame, the prompt a binary preview names, why a socket failed in a few words, and the TLS
options a ``wss://`` socket shares with HTTPS."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any, Dict, Optional

import websocket

from .config import ServerConfig
from .reasons import classify, failure_reason
from .tls import ssl_context

__all__ = [
    "MAX_MESSAGE_BYTES", "ENDING", "MessageTooBig", "CappedWebSocket", "sslopt_for", "abort", "receive", "decode",
    "binary_prompt_id", "describe",
]

log = logging.getLogger(__name__)

# A single websocket message larger than this is refused (the socket is dropped and
# reconnected): real messages are small JSON or preview images of a few MB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class MessageTooBig(websocket.WebSocketException):
    pass


class CappedWebSocket(websocket.WebSocket):
    """A WebSocket that refuses to buffer a message beyond a byte cap.

    websocket-client reads a whole frame into memory before returning it; counting the raw
    bytes read since the last message lets us stop a huge or endless message early.
    """

    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes_this_message = 0

    def _recv(self, bufsize: int) -> bytes:
        data: bytes = super()._recv(bufsize)
        self.bytes_this_message += len(data)
        if self.bytes_this_message > self.max_message_bytes:
            raise MessageTooBig(f"websocket message exceeds {self.max_message_bytes} bytes")
        return data


def sslopt_for(server: ServerConfig) -> Dict[str, Any]:
    """websocket-client TLS options: the very context HTTPS uses (tls.py), so both trust alike."""
    if not server.url.startswith("https://"):
        return {}
    ctx = ssl_context(server.verify_tls, server.name)
    return {"context": ctx, "cert_reqs": ctx.verify_mode, "check_hostname": ctx.check_hostname}


def abort(ws: websocket.WebSocket) -> None:
    """Cut ``ws`` whatever state it is in, waking the thread that reads it: during its
    opening handshake too (websocket-client's own ``abort()`` does nothing until the upgrade
    is answered, so a server that never answers it held ``close()`` for the whole connect
    time-out), and after its reader closed it a moment ago (``shutdown`` of a closed socket
    raises ``EBADF``)."""
    sock = ws.sock
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("websocket already closed when cut: %s", exc)


def receive(ws: websocket.WebSocket) -> Any:
    """The next message: ``str`` for a text frame (``None`` if not UTF-8), ``bytes`` for binary,
    ``""`` for a close frame."""
    with ws.readlock:
        opcode, data = ws.recv_data()
    if opcode == websocket.ABNF.OPCODE_TEXT:
        try:
            return data.decode("utf-8") if isinstance(data, bytes) else data
        except UnicodeDecodeError:
            log.debug("dropped a websocket text frame that is not UTF-8")
            return None
    if opcode == websocket.ABNF.OPCODE_BINARY:
        return data
    return ""


def decode(raw: Any) -> Optional[Dict[str, Any]]:
    """A JSON text frame as a dict with a string ``type``; anything else (binary previews,
    garbage) is None and ignored."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting makes json raise RecursionError
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None
    return msg


ENDING = ("execution_success", "execution_error", "execution_interrupted")
PREVIEW_WITH_METADATA = 4


def binary_prompt_id(frame: bytes) -> Optional[str]:
    """The prompt_id in a type-4 frame's metadata (4-byte type, 4-byte JSON length, JSON ...)."""
    if len(frame) < 8 or int.from_bytes(frame[:4], "big") != PREVIEW_WITH_METADATA:
        return None
    size = int.from_bytes(frame[4:8], "big")
    if size > len(frame) - 8 or size > 65536:
        return None
    try:
        meta = json.loads(frame[8 : 8 + size].decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    pid = meta.get("prompt_id") if isinstance(meta, dict) else None
    return pid if isinstance(pid, str) else None


def describe(exc: BaseException) -> str:
    """Why a websocket failed, in a few words: the HTTP side's reason (decided by exception
    type, as the text differs between Windows, macOS and Linux), with websocket-client's own
    time-out, which carries no socket exception, named as one."""
    if isinstance(exc, websocket.WebSocketTimeoutException) and not classify(exc):
        return "timed out"
    return failure_reason(exc)
