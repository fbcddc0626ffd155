"""The :class:`ServerConfig` model, and turning raw values (one JSON object per server) into
it with one-line errors that never show a header value or a URL's credentials or query.

Users import it from :mod:`comfy_cluster.config`, which adds the environment readers of
:mod:`.environment` (built on this module, so neither imports the other in a circle).
"""

from __future__ import annotations

import json
import math
import ntpath
import posixpath
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .paths import check_part
from .textfiles import loads_json, path_problem

__all__ = ["ServerConfig", "parse_servers_json", "make_server", "check_unique", "platform_key", "DEFAULT_PORT"]

DEFAULT_PORT = 8188
ENV_SERVERS = "NUKE_COMFYUI_SERVERS"
ENV_STRATEGY = "NUKE_COMFYUI_STRATEGY"
ENV_TTL = "NUKE_COMFYUI_STATUS_TTL"
# A host name or address: letters, digits, dots, dashes, underscores, or a bracketed IPv6.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+|[0-9A-Fa-f:]+:[0-9A-Fa-f:.]*)$")


class ServerConfig(BaseModel):
    """One ComfyUI server. Frozen and hashable, so it can key dicts and sets.

    Give either ``host`` (alias ``ip``) and ``port``, or ``url``. After validation ``url`` is
    always the normalised base URL (``http://host:port[/prefix]``, no trailing slash) and
    ``host``/``port`` are filled from it. ``headers`` are sent on every HTTP request and on the
    websocket handshake; their values are never shown in ``repr``, logs or errors.
    """

    # hide_input_in_errors: pydantic's own message would show the whole input, headers included.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    name: str = ""
    host: Optional[str] = Field(default=None, alias="ip")
    port: int = DEFAULT_PORT
    url: str = ""
    priority: int = 0
    weight: float = 1.0
    enabled: bool = True
    max_queue: int = 2
    headers: Dict[str, str] = Field(default_factory=dict, repr=False)
    verify_tls: Union[bool, str] = True
    dir_local: Union[None, str, Dict[str, str]] = None
    dir_remote: Optional[str] = None
    tags: Tuple[str, ...] = ()

    @field_validator("port")
    @classmethod
    def _port_range(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"must be 1..65535, got {v}")
        return v

    @field_validator("weight")
    @classmethod
    def _weight_positive(cls, v: float) -> float:
        if not (v > 0) or math.isinf(v):
            raise ValueError(f"must be a number > 0, got {v}")
        return v

    @field_validator("max_queue")
    @classmethod
    def _max_queue_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _name_clean(cls, v: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError("must not contain control characters (line breaks, tabs, ...)")
        return v.strip()

    @field_validator("headers")
    @classmethod
    def _headers_clean(cls, v: Dict[str, str]) -> Dict[str, str]:
        for key, value in v.items():
            # Never echo the value: it is usually a token.
            if not key or any(c in key for c in "\r\n:") or any(c in value for c in "\r\n"):
                raise ValueError(f"header {key!r} has an empty name or a line break")
        return v

    @field_validator("dir_local")
    @classmethod
    def _dir_local_platforms(cls, v: Union[None, str, Dict[str, str]]) -> Union[None, str, Dict[str, str]]:
        if isinstance(v, dict):
            for key, path in v.items():
                if key not in PLATFORMS:
                    raise ValueError(f"unknown platform {key!r} (use {', '.join(PLATFORMS)})")
                if not path.strip():
                    raise ValueError(f"empty path for {key}")
        return v

    @field_validator("dir_local", "dir_remote", "verify_tls")
    @classmethod
    def _no_control_characters(cls, v: Any) -> Any:
        # "Z:\renders" typed with one backslash in JSON is Z: + CR + "enders": refused, never
        # used silently as a path that matches nothing.
        for path in (v.values() if isinstance(v, dict) else [v]):
            problem = path_problem(path) if isinstance(path, str) else None
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _normalise(self) -> "ServerConfig":
        # Frozen model: fill derived fields with object.__setattr__ during validation only.
        if self.url:
            base, host, port = _normalise_url(self.url)
            # Equal values are fine (a dumped config validates again); a different host or
            # port beside a url was silently dropped before.
            if self.host is not None and self.host.strip().strip("[]").lower() != host.lower():
                raise ValueError(f"url: give either url or host/port, not both (host {self.host!r} is not the url's {host!r})")
            if "port" in self.model_fields_set and self.port != port:
                raise ValueError(f"url: give either url or host/port, not both (port {self.port} is not the url's {port})")
            object.__setattr__(self, "url", base)
            object.__setattr__(self, "host", host)
            object.__setattr__(self, "port", port)
        elif self.host:
            host = self.host.strip()
            if not _HOST.match(host):
                raise ValueError(f"host: not a host name or address, got {host!r}")
            shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
            object.__setattr__(self, "host", host)
            object.__setattr__(self, "url", f"http://{shown}:{self.port}")
        else:
            raise ValueError("host: host or url is required")
        if not self.name:
            object.__setattr__(self, "name", f"{self.host}:{self.port}")
        return self

    @property
    def ws_url(self) -> str:
        """The websocket base URL (``ws://`` or ``wss://``, same host, port and prefix)."""
        if self.url.startswith("https://"):
            return "wss://" + self.url[len("https://"):]
        return "ws://" + self.url[len("http://"):]

    def __hash__(self) -> int:
        # The name is unique within a pool and the url pins the server; equality still
        # compares every field, so equal configs always hash alike.
        return hash((self.name, self.url))

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, value
        if self.headers:
            # Header names are useful when debugging a proxy; values are secrets.
            yield "headers", {k: "***" for k in self.headers}

    def local_dir(self, platform: Optional[str] = None) -> Optional[str]:
        """The server's ComfyUI folder as seen from this machine (``dir_local``), or None.

        ``dir_local`` is one path, or one per OS (``{"windows": "Z:\\ComfyUI", "macos":
        "/Volumes/ComfyUI", "linux": "/mnt/ComfyUI"}``) so one studio config serves every
        artist. ``platform`` is a ``sys.platform`` value (this machine's by default).
        """
        if isinstance(self.dir_local, dict):
            return self.dir_local.get(platform_key(platform))
        return self.dir_local

    def map_remote_path(self, remote_path: str, platform: Optional[str] = None) -> Optional[str]:
        """Map a path as the server sees it (under ``dir_remote``) to this machine's
        (under :meth:`local_dir`), for tools that get server-side paths.

        Returns ``None`` without a mapping or for a path not under ``dir_remote``, which is
        compared without case when it is a Windows path (a drive letter or a share). Every
        component is checked: ``..`` or a drive letter inside raises UnsafePathError.
        """
        local = self.local_dir(platform)
        if not local or not self.dir_remote:
            return None
        remote = self.dir_remote.replace("\\", "/").rstrip("/")
        path = remote_path.replace("\\", "/").rstrip("/")
        windows_server = bool(re.match(r"^([A-Za-z]:|//)", remote))
        fold = str.casefold if windows_server else str
        if fold(path) != fold(remote) and not fold(path).startswith(fold(remote) + "/"):
            return None
        parts = check_part(path[len(remote):].lstrip("/"), "path", allow_empty=True)
        pathmod = ntpath if platform_key(platform) == "windows" else posixpath
        return pathmod.join(local, *parts) if parts else local


#: The keys of a per-OS ``dir_local``.
PLATFORMS = ("windows", "macos", "linux")


def platform_key(platform: Optional[str] = None) -> str:
    """``windows``, ``macos`` or ``linux`` for a ``sys.platform`` value (this machine's by default)."""
    plat = sys.platform if platform is None else platform
    if plat.startswith(("win", "cygwin")):
        return "windows"
    if plat.startswith("darwin"):
        return "macos"
    return "linux"


def _normalise_url(raw: str) -> Tuple[str, str, int]:
    text = raw.strip()
    if "://" not in text:
        raise ValueError(f"url: must start with http:// or https://, got {_safe_url(text)!r}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url: scheme must be http or https, got {scheme!r}")
    if not parts.hostname:
        raise ValueError(f"url: no host in {_safe_url(text)!r}")
    if parts.username or parts.password:
        # Credentials in a URL leak into logs; they belong in headers.
        raise ValueError("url: must not contain user:password; put credentials in headers")
    if parts.query or parts.fragment:
        raise ValueError(f"url: must not have a query or fragment, got {_safe_url(text)!r}")
    if port is None:
        port = 443 if scheme == "https" else 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    prefix = parts.path.rstrip("/")
    return f"{scheme}://{shown}:{port}{prefix}", host, port


def _safe_url(text: str) -> str:
    """A URL without its user:password part, query and fragment (tokens), for error messages."""
    for mark in ("?", "#"):
        if mark in text:
            text = text.split(mark, 1)[0] + mark + "***"
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    if not sep and "@" in text:
        return "***@" + text.split("@", 1)[1]
    return text


# ---------------------------------------------------------------------------------------------
# Turning raw values into ServerConfig, with one-line errors.


def _describe(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _format_validation(err: ValidationError, data: Mapping[str, Any]) -> str:
    """The first pydantic error as ``field: message, got value`` (header values hidden)."""
    first = err.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = loc[0] if loc else ""
    msg = str(first.get("msg", "invalid"))
    kind = first.get("type", "")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "extra_forbidden":
        valid = ", ".join(sorted(_FIELD_NAMES))
        return f"{field}: unknown field (valid fields: {valid})"
    if not field:
        # Model-level errors already start with the field they concern where there is one.
        return msg
    if field == "headers":
        return f"headers: {msg}" if "header" in msg else "headers: must be an object of string values"
    if "got" in msg or "backslash" in msg:  # messages that show the value themselves
        return f"{field}: {msg}"
    if field == "url":
        # The url's own errors (port out of range ...) are ours; its value may hold a token.
        return msg if msg.startswith("url:") else f"url: {msg.lower()}"
    value = data.get(field, data.get("ip") if field == "host" else None)
    return f"{field}: {msg.lower()}, got {_describe(value)}"


_FIELD_NAMES = {f.alias or n for n, f in ServerConfig.model_fields.items()} | {"host"}


def make_server(data: Any, where: str) -> ServerConfig:
    """Build one ServerConfig; ``where`` names the variable and index for errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object, got {_describe(data)}")
    name = data.get("name")
    printable = isinstance(name, str) and name.strip() and name.isprintable() and len(name) <= 60
    label = f"{where} ({name})" if printable else where
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {_format_validation(exc, data)}") from None


def check_unique(servers: Sequence[ServerConfig], source: str) -> None:
    seen: Dict[str, int] = {}
    for i, server in enumerate(servers):
        if server.name in seen:
            raise ConfigError(
                f"{source}[{i}] ({server.name}): name: duplicate of {source}[{seen[server.name]}]"
            )
        seen[server.name] = i


def parse_servers_json(text: str, source: str = ENV_SERVERS) -> List[ServerConfig]:
    """Parse a JSON array of server objects (the ``NUKE_COMFYUI_SERVERS`` format)."""
    try:
        data = loads_json(text, source)  # the message names no part of the text: it may hold tokens
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, list):
        raise ConfigError(f"{source}: must be a JSON array of server objects, got {type(data).__name__}")
    if not data:
        raise ConfigError(f"{source}: the array is empty; give at least one server")
    servers = [make_server(item, f"{source}[{i}]") for i, item in enumerate(data)]
    check_unique(servers, source)
    return servers
