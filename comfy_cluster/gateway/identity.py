"""Who a request acts for: the one place the gateway's web UI routes learn the user.

ComfyUI's rule: in multi-user mode the ``comfy-user`` header names the user (the web page
sends the user picked on its user screen); otherwise, or without the header, the user is
``"default"``. Authentication (tokens per user) replaces :func:`request_user` alone.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["request_user", "MULTI_USER", "DEFAULT_USER"]

DEFAULT_USER = "default"
#: Set on the gateway's application: True in multi-user mode (``--multi-user``).
MULTI_USER = web.AppKey("comfy_cluster_multi_user", bool)


def request_user(request: web.Request) -> str:
    """The user id ``request`` acts for (not checked against the known users here)."""
    if request.app.get(MULTI_USER, False):
        header = request.headers.get("comfy-user")
        if header is not None:
            return header
    return DEFAULT_USER
