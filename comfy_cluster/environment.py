"""Server configuration from environment variables, as users set them in bash, cmd.exe and
PowerShell.

Order of precedence in :func:`servers_from_env` (the first source that is set wins):

1. ``NUKE_COMFYUI_SERVERS``: a JSON array of server objects, or a path to a JSON file holding one.
2. Numbered variables ``NUKE_COMFYUI_IP_1``, ``NUKE_COMFYUI_PORT_1``, ``NUKE_COMFYUI_NAME_1``,
   ``NUKE_COMFYUI_PRIORITY_1``, ``NUKE_COMFYUI_WEIGHT_1``, then ``_2`` ... consecutively.
3. The legacy single-server variables of ComfyUI-for-Nuke: ``NUKE_COMFYUI_URL`` (or the older
   ``NUKE_COMFYUI_HOST``), ``NUKE_COMFYUI_IP`` with ``NUKE_COMFYUI_PORT``, ``NUKE_COMFYUI_DIR``.
4. Nothing: one server at ``127.0.0.1:8188``.

Every problem raises :class:`~comfy_cluster.errors.ConfigError` with a one-line message that
names the variable, the server (index and name) and the field. Header values are never shown.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .server_config import DEFAULT_PORT, ENV_SERVERS, ENV_STRATEGY, ENV_TTL, ServerConfig, check_unique, make_server, parse_servers_json
from .consoles import unquote
from .errors import ConfigError
from .textfiles import UnreadableText, read_text

__all__ = ["servers_from_env", "strategy_from_env", "status_ttl_from_env", "unquote_env"]

log = logging.getLogger("comfy_cluster.config")  # one logger name for configuration warnings

_NUMBERED = re.compile(r"^NUKE_COMFYUI_(IP|PORT|NAME|PRIORITY|WEIGHT)_(\d+)$")


def unquote_env(name: str, value: str) -> str:
    """``value`` stripped of blanks and of one matching pair of outer quotes.

    cmd.exe keeps quotes in the value: ``set VAR='[...]'`` and ``set VAR="C:\\x.json"`` store
    the quotes too. No valid value of ours starts and ends with the same quote, so one pair is
    removed, and a warning says so.
    """
    text = unquote(value)
    if text != value.strip():
        log.warning("%s: removed the quotes around its value (cmd.exe keeps quotes as part of a value)", name)
    return text


def _env(env: Mapping[str, str], name: str) -> str:
    return unquote_env(name, env.get(name, ""))




def _from_servers_var(text: str) -> List[ServerConfig]:
    if text[:1] in "[{\"" or text[:1].isdigit() or text in ("null", "true", "false"):
        return parse_servers_json(text)
    # Not JSON-looking: a path to a JSON file (studio-wide config).
    # A NUL byte makes expanduser and isfile raise ValueError: no such file either way.
    path = "" if "\x00" in text else os.path.expanduser(text)
    if not path or not os.path.isfile(path):
        # The value is shown only when it looks like a path: JSON gone wrong may hold tokens.
        shown = f": {text!r}" if len(text) <= 200 and not any(c in text for c in "{}[]\"'") else ""
        raise ConfigError(f"{ENV_SERVERS}: not a JSON array and no such file{shown}")
    try:
        content = read_text(path)  # UTF-8, or UTF-16/BOM as PowerShell writes
    except UnreadableText as exc:  # cp1252 ("ANSI"): say so and how to save it
        raise ConfigError(f"{ENV_SERVERS}: cannot read {text!r}: {exc}") from None
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{ENV_SERVERS}: cannot read {text!r}: {exc.__class__.__name__}") from None
    return parse_servers_json(content, source=f"{ENV_SERVERS} ({text})")


def _from_numbered(env: Mapping[str, str]) -> List[ServerConfig]:
    found: Dict[int, Dict[str, str]] = {}
    for key, value in env.items():
        m = _NUMBERED.match(key)
        if m:
            found.setdefault(int(m.group(2)), {})[m.group(1)] = unquote_env(key, value)
    if not found:
        return []
    servers: List[ServerConfig] = []
    indexes = sorted(found)
    for expected, index in enumerate(indexes, start=1):
        fields = found[index]
        if index != expected:
            raise ConfigError(
                f"NUKE_COMFYUI_IP_{index}: numbered servers must be consecutive from 1; "
                f"NUKE_COMFYUI_IP_{expected} is missing"
            )
        if not fields.get("IP", "").strip():
            other = sorted(fields)[0]
            raise ConfigError(f"NUKE_COMFYUI_{other}_{index}: set without NUKE_COMFYUI_IP_{index}")
        data: Dict[str, Any] = {"host": fields["IP"].strip()}
        converters = (("PORT", "port", int), ("PRIORITY", "priority", int), ("WEIGHT", "weight", float))
        for var, field, conv in converters:
            if var in fields:
                try:
                    data[field] = conv(fields[var].strip())
                except ValueError:
                    raise ConfigError(
                        f"NUKE_COMFYUI_{var}_{index}: {field}: must be a number, got {fields[var]!r}"
                    ) from None
        if "NAME" in fields and fields["NAME"].strip():
            data["name"] = fields["NAME"].strip()
        servers.append(make_server(data, f"NUKE_COMFYUI_IP_{index}"))
    check_unique(servers, "NUKE_COMFYUI_IP")
    return servers


def _legacy_entry(text: str, var: str) -> Dict[str, Any]:
    text = text.strip()
    if "://" in text:
        return {"url": text}
    host, sep, port = text.rpartition(":")
    if sep and host and ":" not in host.strip("[]") and port.isdigit():
        return {"host": host, "port": int(port)}
    if sep and not port.isdigit() and ":" not in host:
        raise ConfigError(f"{var}: port: must be a number, got {port!r}")
    return {"host": text}


def _from_legacy(env: Mapping[str, str]) -> List[ServerConfig]:
    var = "NUKE_COMFYUI_URL" if _env(env, "NUKE_COMFYUI_URL") else "NUKE_COMFYUI_HOST"
    raw = _env(env, var)
    entries: List[Dict[str, Any]] = []
    if raw:
        if raw.startswith("["):
            try:
                items = json.loads(raw)
            except ValueError as exc:
                raise ConfigError(f"{var}: not valid JSON: {getattr(exc, 'msg', exc)}") from None
            if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
                raise ConfigError(f"{var}: must be host[:port], a URL, or a JSON list of them")
            entries = [_legacy_entry(i, f"{var}[{n}]") for n, i in enumerate(items)]
        else:
            entries = [_legacy_entry(raw, var)]
    elif _env(env, "NUKE_COMFYUI_IP"):
        var = "NUKE_COMFYUI_IP"
        data: Dict[str, Any] = {"host": _env(env, "NUKE_COMFYUI_IP")}
        port = _env(env, "NUKE_COMFYUI_PORT")
        if port:
            if not port.isdigit():
                raise ConfigError(f"NUKE_COMFYUI_PORT: port: must be a number, got {port!r}")
            data["port"] = int(port)
        entries = [data]
    elif _env(env, "NUKE_COMFYUI_PORT"):
        raise ConfigError("NUKE_COMFYUI_PORT: set without NUKE_COMFYUI_IP")
    if not entries:
        return []
    local_dir = _env(env, "NUKE_COMFYUI_DIR")
    servers = []
    for n, data in enumerate(entries):
        if local_dir:
            data["dir_local"] = local_dir
        where = var if len(entries) == 1 else f"{var}[{n}]"
        servers.append(make_server(data, where))
    check_unique(servers, var)
    return servers


def servers_from_env(environ: Optional[Mapping[str, str]] = None) -> Tuple[List[ServerConfig], str]:
    """The servers configured in ``environ`` and the name of the source that gave them.

    Raises :class:`ConfigError` for bad configuration.
    """
    env = os.environ if environ is None else environ
    value = _env(env, ENV_SERVERS)
    if value:
        return _from_servers_var(value), ENV_SERVERS
    servers = _from_numbered(env)
    if servers:
        return servers, "NUKE_COMFYUI_IP_<n>"
    servers = _from_legacy(env)
    if servers:
        return servers, "legacy NUKE_COMFYUI_URL/HOST/IP"
    return [ServerConfig.model_validate({"host": "127.0.0.1", "port": DEFAULT_PORT})], "default"


def strategy_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """``NUKE_COMFYUI_STRATEGY`` stripped, or None when unset."""
    env = os.environ if environ is None else environ
    value = _env(env, ENV_STRATEGY)
    return value or None


def status_ttl_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """``NUKE_COMFYUI_STATUS_TTL`` in seconds, or None when unset."""
    env = os.environ if environ is None else environ
    value = _env(env, ENV_TTL)
    if not value:
        return None
    try:
        ttl = float(value)
    except ValueError:
        raise ConfigError(f"{ENV_TTL}: must be a number of seconds, got {value!r}") from None
    if not (ttl >= 0) or math.isinf(ttl):
        raise ConfigError(f"{ENV_TTL}: must be >= 0 seconds, got {value!r}")
    return ttl
