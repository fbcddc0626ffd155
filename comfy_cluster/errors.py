"""The error hierarchy of comfy-cluster.

Every error the library raises on purpose is a :class:`ComfyClusterError`, so a caller (a
Nuke button, a pipeline script) can catch one class and show ``str(error)``: messages are one
line, name what was wrong, and never contain a header value (tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "ComfyClusterError",
    "ConfigError",
    "NoServerAvailable",
    "ServerError",
    "WorkflowError",
    "NodeError",
    "JobFailed",
    "JobCancelled",
    "UnsafePathError",
    "LocalFileError",
]


class ComfyClusterError(Exception):
    """Base class of every error raised by comfy-cluster.

    The message is kept on one line: a server's words (an exception message, a traceback's
    last line, validation details) may span lines, which would break a status line, a log
    line or ``submit --json``. The full text stays on the error's own fields.
    """

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str) and ("\n" in args[0] or "\r" in args[0]):
            args = (_one_line(args[0]),) + args[1:]
        super().__init__(*args)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class ConfigError(ComfyClusterError, ValueError):
    """Bad configuration: the message names the variable, the server and the field."""


class NoServerAvailable(ComfyClusterError):
    """No configured server can take the job now.

    ``reasons`` maps each server name to why it was passed over (offline: reason; full;
    missing node types ...; excluded).
    """

    def __init__(self, message: str, reasons: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.reasons: Dict[str, str] = dict(reasons or {})


#: What a :class:`ServerError` can be about. "refused": nothing listens (ComfyUI not running
#: there); "connect_timeout": no answer to the connection attempt (host down, network split, or
#: a refusal that Windows retried past the timeout); "read_timeout": connected, but no (complete)
#: answer in time; "connect": another connection failure (reset, DNS, aborted); "tls": a TLS
#: failure; "http": an HTTP error status (see ``status``); "malformed": an answer that could not
#: be used (bad JSON, wrong shape, over the size cap, cut short); "": anything else.
FAULTS = ("refused", "connect_timeout", "read_timeout", "connect", "tls", "http", "malformed", "")


class ServerError(ComfyClusterError):
    """A server could not be reached or answered something unusable.

    ``server`` is the server's name, ``status`` the HTTP status when there was one.
    ``fault`` says what went wrong, decided from the exception's type (never its text, which
    differs between Windows, macOS and Linux): one of :data:`FAULTS`. ``attempts`` holds, for a
    job that failed over and ran out of servers, what each attempt saw as
    ``(server name, reason)`` pairs.
    """

    def __init__(
        self,
        message: str,
        *,
        server: Optional[str] = None,
        status: Optional[int] = None,
        attempts: Sequence[Tuple[str, str]] = (),
        fault: str = "",
    ) -> None:
        super().__init__(message)
        self.server = server
        self.status = status
        self.attempts: List[Tuple[str, str]] = list(attempts)
        if not fault and status is not None:
            fault = "http"
        if fault not in FAULTS:
            raise ValueError(f"fault: must be one of {FAULTS}, got {fault!r}")
        self.fault = fault


@dataclass(frozen=True)
class NodeError:
    """One readable validation problem of one node, from ComfyUI's ``node_errors``."""

    node_id: str
    class_type: str
    input: Optional[str]
    message: str
    type: str = ""

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input:
            where += f" input {self.input!r}"
        return f"{where}: {self.message}"


class WorkflowError(ComfyClusterError):
    """ComfyUI refused the workflow (HTTP 400), with its own words.

    ``error_type`` is ComfyUI's ``error.type`` (``prompt_outputs_failed_validation``,
    ``invalid_prompt``, ...), ``node_errors`` the readable per-node problems.
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "",
        node_errors: Sequence[NodeError] = (),
        server: Optional[str] = None,
        raw: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.error_type = error_type
        self.node_errors: List[NodeError] = list(node_errors)
        self.server = server
        self.raw = raw
        detail = "; ".join(str(e) for e in self.node_errors)
        super().__init__(f"{message}: {detail}" if detail else message)


class JobFailed(ComfyClusterError):
    """The job ran and ComfyUI reported ``execution_error``: the node, its type, the exception."""

    def __init__(
        self,
        message: str,
        *,
        prompt_id: str = "",
        server: Optional[str] = None,
        node_id: Optional[str] = None,
        node_type: Optional[str] = None,
        exception_type: str = "",
        exception_message: str = "",
        traceback: Sequence[str] = (),
        attempts: Sequence[Tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id
        self.server = server
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback: List[str] = list(traceback)
        self.attempts: List[Tuple[str, str]] = list(attempts)


class JobCancelled(ComfyClusterError):
    """The job was cancelled (by ``job.cancel()``, a batch cancel or an interrupt)."""

    def __init__(self, message: str, *, prompt_id: str = "", server: Optional[str] = None) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id
        self.server = server


class UnsafePathError(ComfyClusterError):
    """A file name or subfolder from a server would land outside the target folder."""


class LocalFileError(ComfyClusterError, OSError):
    """A local file could not be written, replaced or removed (a full disk, no permission, or
    on Windows a file held open by another program past the retries). ``path`` names it."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path
