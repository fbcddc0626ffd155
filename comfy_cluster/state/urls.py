"""Where the gateway keeps its state: ``--state URL`` / ``COMFY_CLUSTER_GATEWAY_STATE``.

``sqlite:///PATH`` for one gateway (the default: ``gateway.sqlite3`` in the user's data
folder of each OS), ``postgresql://USER@HOST:PORT/DB`` for replicas sharing one queue.
A password is never shown: :func:`safe_url` hides it in every message and log line.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Optional
from urllib.parse import urlsplit, urlunsplit

__all__ = ["ENV_STATE", "StateURLError", "default_state_url", "data_dir", "engine_url", "safe_url", "is_postgres"]

ENV_STATE = "COMFY_CLUSTER_GATEWAY_STATE"


class StateURLError(ValueError):
    """A ``--state`` URL the gateway cannot use (the message names what was wrong)."""


def data_dir(environ: Optional[Mapping[str, str]] = None, platform: str = sys.platform) -> str:
    """The user's data folder for comfy-cluster on this OS (not created here)."""
    env = os.environ if environ is None else environ
    home = os.path.expanduser("~")
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA") or env.get("APPDATA") or os.path.join(home, "AppData", "Local")
    elif platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        base = env.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "comfy-cluster")


def default_state_url(environ: Optional[Mapping[str, str]] = None, platform: str = sys.platform) -> str:
    """``$COMFY_CLUSTER_GATEWAY_STATE``, else SQLite in the user's data folder."""
    env = os.environ if environ is None else environ
    given = env.get(ENV_STATE, "").strip()
    if given:
        return given
    return "sqlite:///" + os.path.join(data_dir(env, platform), "gateway.sqlite3").replace("\\", "/")


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].lower() in ("postgresql", "postgres", "postgresql+psycopg")


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a state URL; raises :class:`StateURLError` naming the problem."""
    if not isinstance(url, str) or "://" not in url:
        raise StateURLError(f"state: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB, got {safe_url(str(url))!r}")
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        if rest.startswith("/") and not path:
            raise StateURLError("state: sqlite:/// needs a file path (sqlite:///PATH)")
        if not rest.startswith("/"):
            raise StateURLError(f"state: {safe_url(url)!r}: a SQLite URL is sqlite:///PATH (three slashes)")
        if path == ":memory:":
            raise StateURLError("state: an in-memory SQLite database would lose everything on restart; give a file")
        # sqlite:////abs/path and sqlite:///C:/path keep their form; sqlite:///rel is relative.
        return "sqlite+pysqlite:///" + path
    if is_postgres(url):
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise StateURLError(f"state: {safe_url(url)!r}: expected postgresql://USER@HOST:PORT/DB")
        try:
            parts.port
        except ValueError:
            raise StateURLError(f"state: {safe_url(url)!r}: the port is not a number") from None
        return "postgresql+psycopg://" + rest
    raise StateURLError(f"state: unknown kind {scheme!r} in {safe_url(url)!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
