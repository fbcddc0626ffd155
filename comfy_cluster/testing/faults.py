"""The faults a :class:`~comfy_cluster.testing.MockComfyServer` can be told to show.

Kept apart from the server module so that code which only names a fault (a test, the CLI's
argument parsing) does not need aiohttp.
"""

from __future__ import annotations

import enum
from typing import Optional, Union

__all__ = ["Fault", "parse_fault", "RouteFault", "parse_route_fault"]


class Fault(enum.Enum):
    """A standing fault of a mock server; one is active at a time (``set_fault``)."""

    #: The listening socket is closed: new connections are refused and open ones (websockets
    #: included) are cut. Queue, history and the running job are kept: "the machine is
    #: unreachable", not "the server restarted".
    REFUSE = "refuse"
    #: Connections are accepted, but neither HTTP requests nor the websocket handshake are
    #: ever answered while the fault lasts.
    HANG = "hang"
    #: Every HTTP route answers a plain-text 500, like an aiohttp handler that raised.
    ERROR_500 = "500"
    #: JSON routes answer 200 with a body that is not JSON (the handler still runs).
    MALFORMED = "malformed"
    #: Answers announce a Content-Length larger than the body sent, then the connection is
    #: closed (the handler still runs).
    TRUNCATED = "truncated"
    #: JSON routes stream an endless (64 MiB) body; every websocket gets one 32 MiB text frame.
    HUGE = "huge"


_ALIASES = {
    "refuse": Fault.REFUSE,
    "refused": Fault.REFUSE,
    "down": Fault.REFUSE,
    "hang": Fault.HANG,
    "500": Fault.ERROR_500,
    "error_500": Fault.ERROR_500,
    "error": Fault.ERROR_500,
    "malformed": Fault.MALFORMED,
    "truncated": Fault.TRUNCATED,
    "truncate": Fault.TRUNCATED,
    "huge": Fault.HUGE,
}


def parse_fault(value: Union[str, Fault, None]) -> Optional[Fault]:
    """Turn a name such as ``"hang"``, ``"500"`` or ``"off"`` into a :class:`Fault` (or None)."""
    if value is None or isinstance(value, Fault):
        return value
    key = value.strip().lower()
    if key in ("", "off", "none", "clear"):
        return None
    try:
        return _ALIASES[key]
    except KeyError:
        names = ", ".join(sorted(set(_ALIASES)) + ["off"])
        raise ValueError(f"unknown fault {value!r}; expected one of {names}") from None


class RouteFault(enum.Enum):
    """A fault of one route (``MockComfyServer.fail_route``), for the next N requests or until cleared."""

    #: Answer a plain-text 500 without running the handler.
    ERROR_500 = "500"
    #: Answer another HTTP status (a proxy in front of the server: 401, 403, 404, 413, 429,
    #: ...) with a plain-text body, without running the handler; ``fail_route("/prompt", "429")``.
    STATUS = "status"
    #: Hold the request unanswered (the handler does not run) until released or the delay passes.
    HANG = "hang"
    #: Cut the connection without an answer (the handler does not run).
    RESET = "reset"
    #: Run the handler (a POST /prompt queues and runs the job), then hold the answer until
    #: released or the delay passes: "the server accepted it, the answer never came".
    STALL = "stall"


def parse_route_fault(value: Union[str, RouteFault]) -> RouteFault:
    """Turn ``"500"``, ``"hang"``, ``"timeout"``, ``"reset"``, ``"stall"`` or another HTTP error
    status (``"429"``: :attr:`RouteFault.STATUS`) into a :class:`RouteFault`."""
    if isinstance(value, RouteFault):
        return value
    key = value.strip().lower()
    if key.isdigit() and key != "500":
        if not 400 <= int(key) <= 599:
            raise ValueError(f"route fault status {value!r} must be an HTTP error status (400-599)")
        return RouteFault.STATUS
    aliases = {"500": RouteFault.ERROR_500, "error": RouteFault.ERROR_500, "hang": RouteFault.HANG,
               "timeout": RouteFault.HANG, "reset": RouteFault.RESET, "stall": RouteFault.STALL}
    try:
        return aliases[key]
    except KeyError:
        raise ValueError(f"unknown route fault {value!r}; expected one of {', '.join(sorted(aliases))}") from None
