"""Signing in to the web UI: the login page, the session cookie, signing out.

A browser sends no ``Authorization`` header with the page's requests, so with a token or a
users file the page signs in once:

* a page request (a GET that wants HTML) with no credentials is sent to ``/login?next=PATH``,
  a small form asking for the user's token; posting it opens a session (:mod:`.sessions`) and
  sets the session cookie, then goes back to ``PATH``. A wrong token: 401 with one line;
* or the first URL carries the token, ``http://gateway:8188/?token=TOKEN`` (typed or
  bookmarked; not a link on another site): the same session is opened and the browser is sent
  to the URL without the token (out of the address bar);
* ``/logout`` ends the session and clears the cookie.

The frontend build's own files (scripts, styles, fonts, the manifest) load without signing in:
they are the public ``comfyui-frontend-package``, the same for everyone. The page itself
(``/``), every API route, the servers' extensions and the websocket need the session.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page or
link sends it; with the Origin check, other sites cannot act as the user) and ``Secure`` over
https. It holds a random id only; the token is neither kept nor logged. A link from another
site (a wiki, a chat) arrives without the Strict cookie: the login page then asks
``/login/status`` from the gateway's own origin, which carries it, and goes on when signed in.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any, Awaitable, Callable, List, Optional, Tuple
from urllib.parse import urlencode

from aiohttp import web

from .auth import Authenticator, User, session_cookie_name

__all__ = ["login_routes", "is_open", "wants_page", "to_login", "token_to_cookie", "PUBLIC"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPEN = ("/login", "/login/status", "/logout")
#: The name of a route whose files anyone may load: the frontend package's own build (the same
#: for every ComfyUI). Browsers fetch the page's web app manifest without cookies, by the spec.
PUBLIC = "comfy-cluster-public-files"
WRONG_TOKEN = "wrong token: it is neither a gateway user's token nor the admin token"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Sign in - comfy-cluster</title>
<style>
body{{font-family:system-ui,sans-serif;background:#202020;color:#ddd;display:flex;justify-content:center;margin-top:15vh}}
form{{background:#2b2b2b;padding:2em;border-radius:8px;min-width:22em}}
input{{width:100%;box-sizing:border-box;padding:.5em;margin:.5em 0 1em;background:#1a1a1a;color:#eee;border:1px solid #555}}
button{{padding:.5em 1.5em}} .error{{color:#f77}}
</style></head><body>
<form method="post" action="/login" id="login">
<h2>comfy-cluster</h2>
<p>Sign in with the token you were given.</p>
{error}<label for="token">Token</label>
<input type="password" id="token" name="token" autocomplete="current-password" autofocus required>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form>
<script>
// A link from another site carries no SameSite=Strict cookie; this same-origin request does.
fetch('/login/status', {{credentials: 'same-origin'}}).then(r => r.json())
  .then(s => {{ if (s.user) location.replace({next_js}); }}).catch(() => {{}});
</script>
</body></html>
"""


def _base(path: str) -> str:
    return path[4:] if path.startswith("/api/") else path


def is_open(request: web.Request) -> bool:
    """True for the sign-in routes and the frontend build's own files (resources named
    :data:`PUBLIC`), which answer without credentials."""
    if _base(request.path) in _OPEN:
        return True
    resource = getattr(request.match_info.route, "resource", None)  # routed before middlewares run
    return resource is not None and resource.name == PUBLIC


def wants_page(request: web.Request) -> bool:
    """A browser loading a page (not the page's API calls, files or websocket)."""
    return (
        request.method in ("GET", "HEAD")
        and "text/html" in request.headers.get("Accept", "")
        and request.headers.get("Upgrade", "").lower() != "websocket"
    )


def _local(target: Optional[str]) -> str:
    """``target`` when it is a path on this gateway; else ``/`` (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _see_other(target: str) -> web.Response:
    return web.Response(status=303, headers={"Location": target, "Cache-Control": "no-store"})


def to_login(request: web.Request) -> web.StreamResponse:
    """Send a page request without credentials to the login page, coming back here after."""
    return _see_other("/login?" + urlencode({"next": request.rel_url.path_qs}))


def _cookie_options(request: web.Request) -> dict:
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    return dict(path="/", httponly=True, samesite="Strict", secure=secure)


async def _signed_in(request: web.Request, auth: Authenticator, token: str, target: str) -> Optional[web.StreamResponse]:
    """Open a session for ``token`` and answer with its cookie and a redirect to ``target``."""
    opened = await auth.sign_in(token)
    if opened is None:
        log.warning("gateway: sign-in refused from %s (wrong token)", request.remote)
        return None
    user, session_id = opened
    log.info("gateway: %s signed in to the web UI from %s", user.name, request.remote)
    answer = _see_other(target)
    answer.set_cookie(session_cookie_name(request.headers.get("Host")), session_id, max_age=int(auth.sessions.ttl), **_cookie_options(request))
    return answer


def _from_elsewhere(request: web.Request) -> bool:
    """True for a navigation another site started (a link or a form on it): browsers say so in
    ``Sec-Fetch-Site``. Typed addresses and bookmarks say ``none``."""
    return request.headers.get("Sec-Fetch-Site", "none").lower() not in ("none", "same-origin")


async def token_to_cookie(request: web.Request, auth: Authenticator) -> Optional[web.StreamResponse]:
    """A page opened with ``?token=`` (and no Authorization header): sign in, then the same URL
    without the token. None when the request is not such a page.

    Only when the address was typed, bookmarked or followed on the gateway's own pages: a link
    on another site could carry someone else's token and sign the artist in as that user (who
    would then see the artist's workflows). Such a link goes to the URL without the token."""
    token = request.query.get("token")
    if not token or not auth.required or not wants_page(request) or request.headers.get("Authorization"):
        return None
    query = [(k, v) for k, v in request.query.items() if k != "token"]
    target = _local(request.path + ("?" + urlencode(query) if query else ""))
    if _from_elsewhere(request):
        log.warning("gateway: a link from another site carried a token; not signed in (%s)", request.remote)
        return _see_other(target)
    return await _signed_in(request, auth, token, target)


def _page(next_path: str, error: str = "") -> str:
    return _PAGE.format(
        next=html.escape(next_path),
        next_js=json.dumps(next_path).replace("<", "\\u003c"),  # in a <script>: no "</" may end it
        error=f'<p class="error">{html.escape(error)}</p>\n' if error else "",
    )


def login_routes(auth: Authenticator) -> List[Tuple[str, str, Handler]]:
    """``(method, path, handler)`` of ``/login``, ``/login/status`` and ``/logout``."""

    async def current(request: web.Request) -> Optional[User]:
        session_id = request.cookies.get(session_cookie_name(request.headers.get("Host")))
        return await auth.session_user(session_id) if session_id else None

    async def login_page(request: web.Request) -> web.StreamResponse:
        target = _local(request.query.get("next"))
        if not auth.required or await current(request) is not None:
            return _see_other(target)  # nothing to sign in to, or signed in already
        return web.Response(text=_page(target), content_type="text/html", headers={"Cache-Control": "no-store"})

    async def login(request: web.Request) -> web.StreamResponse:
        if request.content_type == "application/json":
            form: Any = await request.json()
            form = form if isinstance(form, dict) else {}
        else:
            form = await request.post()
        token = str(form.get("token") or "").strip()  # a pasted token often brings a newline
        target = _local(str(form.get("next") or "/"))
        if not auth.required:
            return _see_other(target)
        answer = await _signed_in(request, auth, token, target) if token else None
        if answer is not None:
            return answer
        if "text/html" in request.headers.get("Accept", ""):
            return web.Response(status=401, text=_page(target, WRONG_TOKEN), content_type="text/html")
        return web.Response(status=401, text=f"401: {WRONG_TOKEN}")

    async def status(request: web.Request) -> web.StreamResponse:
        user = await current(request)
        body = {"user": user.name if user is not None else None, "required": auth.required}
        return web.Response(text=json.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"})

    async def logout(request: web.Request) -> web.StreamResponse:
        if _from_elsewhere(request):  # another site's link cannot sign an artist out
            return _see_other("/")
        name = session_cookie_name(request.headers.get("Host"))
        session_id = request.cookies.get(name)
        if session_id:
            await auth.sign_out(session_id)
        answer = _see_other("/login") if wants_page(request) else web.Response(text="signed out")
        answer.del_cookie(name, path="/")
        return answer

    return [
        ("GET", "/login", login_page),
        ("POST", "/login", login),
        ("GET", "/login/status", status),
        ("GET", "/logout", logout),
        ("POST", "/logout", logout),
    ]
