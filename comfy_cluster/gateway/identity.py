"""Who a request acts for: the one place the gateway's web UI routes learn the user.

ComfyUI's rule: in multi-user mode the ``comfy-user`` header names the user (the web page
sends the user picked on its user screen); otherwise, or without the header, the user is
``"default"``. The gateway's middleware decides it (:mod:`.auth`: a token's user first, then
the user signed in to the web UI (session cookie, :mod:`.login`), then the header where it is
trusted, as in multi-user mode); this module only reads it.
"""

from __future__ import annotations

from aiohttp import web

from . import auth

__all__ = ["request_user", "MULTI_USER", "DEFAULT_USER"]

DEFAULT_USER = "default"
#: Set on the gateway's application: True in multi-user mode (``--multi-user``).
MULTI_USER = web.AppKey("comfy_cluster_multi_user", bool)


def request_user(request: web.Request) -> str:
    """The user id ``request`` acts for: the name :func:`.auth.request_user` decided (the one
    place that knows tokens, users and the ``comfy-user`` header; ``"default"`` without users)."""
    return auth.request_user(request).name
