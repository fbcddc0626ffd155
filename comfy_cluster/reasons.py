"""Why a request failed, decided from the exception's type (never its text, which differs
between Windows, macOS and Linux), and a short reason for messages."""

from __future__ import annotations

import socket
import ssl
from typing import Set

import requests
import urllib3

__all__ = ["classify", "explain_status", "failure_reason", "short_reason"]


def classify(exc: BaseException) -> str:
    """The :data:`~comfy_cluster.errors.FAULTS` kind of a requests/urllib3/socket exception.

    Decided by exception type along the whole chain (``__cause__``, ``__context__``, urllib3's
    ``reason``, requests' wrapped exception), never by message text: Windows says
    ``[WinError 10061] ... actively refused it`` where Linux says ``Connection refused``.
    """
    kinds: Set[str] = set()
    seen: Set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen or len(seen) > 50:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "refused"  # nothing listens there, whatever else the chain says
        if isinstance(e, (ssl.SSLError, requests.exceptions.SSLError, urllib3.exceptions.SSLError)):
            kinds.add("tls")
        elif isinstance(e, urllib3.exceptions.NewConnectionError):  # a ConnectTimeoutError subclass
            kinds.add("connect")
        elif isinstance(e, (requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError)):
            kinds.add("connect_timeout")
        # socket.timeout: on Python 3.9 (Nuke 14) an OSError of its own, not yet TimeoutError.
        elif isinstance(e, (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout)):
            kinds.add("read_timeout")
        elif isinstance(e, (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError, OSError)):
            kinds.add("connect")
        nxt = [e.__cause__, e.__context__, getattr(e, "reason", None), *getattr(e, "args", ())]
        stack.extend(x for x in nxt if isinstance(x, BaseException))
    for kind in ("tls", "connect_timeout", "read_timeout", "connect"):
        if kind in kinds:
            return kind
    return ""


def failure_reason(exc: BaseException) -> str:
    """Why a request failed, in a few words, for requests' and urllib3's exceptions alike."""
    fault = classify(exc)
    if fault == "refused":
        return "connection refused"
    if fault == "tls":
        return f"TLS error: {short_reason(exc)}"
    if fault == "connect_timeout":
        return "connect timed out"
    if fault == "read_timeout":
        return "no answer (read timed out)"
    if fault == "connect":
        return f"cannot connect: {short_reason(exc)}"
    return f"request failed: {short_reason(exc)}"


def short_reason(exc: BaseException) -> str:
    """A short reason from a requests exception (its text can be a long nested repr)."""
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "certificate verify failed",
                   "Connection reset", "Connection aborted", "IncompleteRead", "RemoteDisconnected"):
        if marker in text:
            return marker.lower() if marker != "IncompleteRead" else "incomplete read"
    return text if len(text) <= 120 else text[:117] + "..."


def explain_status(status: int, what: str) -> str:
    """What a 4xx from ComfyUI (or a proxy in front of it) on a POST means, for the message."""
    if status == 413:
        return f": {what} is too large for the server (or a proxy in front of it)"
    if status == 429:
        return ": busy (too many requests); try later"
    if status in (401, 403):
        return ": not allowed (check the server's headers or token, or the proxy in front of it)"
    if status == 404:
        return ": no ComfyUI API at this URL (check the server's url)"
    return ""
