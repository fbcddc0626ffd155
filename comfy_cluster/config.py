"""Server configuration, as users and the Nuke plugin import it: the :class:`ServerConfig`
model (:mod:`.server_config`) and the environment readers (:mod:`.environment`).

The two halves live apart so that the readers build on the model without either importing the
other in a circle; this module only gathers them.
"""

from __future__ import annotations

from .environment import servers_from_env, status_ttl_from_env, strategy_from_env, unquote_env
from .server_config import DEFAULT_PORT, ServerConfig, parse_servers_json, platform_key

__all__ = [
    "ServerConfig",
    "servers_from_env",
    "parse_servers_json",
    "strategy_from_env",
    "status_ttl_from_env",
    "DEFAULT_PORT",
    "unquote_env",
    "platform_key",
]
