"""Who is asking: the gateway's users, tokens and the ``comfy-user`` header, in one place.

Every request gets one :class:`User` (:func:`request_user`), decided by :class:`Authenticator`:

* ``Authorization: Bearer TOKEN`` (or ``?token=TOKEN`` for websocket clients that cannot send
  headers): the gateway's admin token (``--token``), or a user's token from the users file;
* a web UI session cookie (:mod:`.sessions`, opened by signing in at ``/login``: :mod:`.login`),
  while its user still has the token they signed in with;
* ``comfy-user: NAME`` (ComfyUI's multi-user header), only with ``trust_user_header`` (a
  trusted network: anyone can send any name); with a users file the name must be in it;
* nothing: when neither a token nor a users file is configured, an anonymous user (ComfyUI
  without users: everyone sees everything); else 401.

The users file is JSON ``{"users": {"NAME": {"token_sha256": HEX, "admin": false}}}``: only
hashes of the tokens are stored, so the file is no secret. :func:`add_user` makes a token
and prints nothing: the command line shows it once. The file is read again when it changes,
so added users need no restart.

Fair share, visibility and event streams all key on :attr:`User.owner` and :attr:`User.name`,
never on the ``client_id`` a client chooses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .sessions import Session, Sessions

__all__ = [
    "User",
    "Authenticator",
    "UsersFile",
    "add_user",
    "check_token",
    "server_query",
    "request_user",
    "token_hash",
    "USER_HEADER",
    "ANONYMOUS",
    "session_cookie_name",
]

log = logging.getLogger(__name__)

USER_HEADER = "comfy-user"
SESSION_COOKIE = "comfy_cluster_session"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")

try:  # aiohttp >= 3.10 wants typed keys for request storage
    from aiohttp.web import RequestKey

    _REQUEST_KEY: Any = RequestKey("comfy_cluster_user", object)
except ImportError:  # pragma: no cover - older aiohttp
    _REQUEST_KEY = "comfy_cluster_user"


@dataclass(frozen=True)
class User:
    """The one identity of a request.

    ``name``: the user (``"default"`` for anonymous requests, as ComfyUI's single user);
    storage and event streams are per name. ``admin``: sees and manages every job.
    ``owner``: whose turn a job counts for in the fair share (a user's name; an anonymous
    request's remote address, so that machines share fairly without users).
    ``identified``: the name was proven (token) or asserted (trusted header).
    """

    name: str
    admin: bool = False
    owner: str = ""
    identified: bool = True

    def sees(self, name: str) -> bool:
        """May this user see and manage a job of user ``name``?"""
        return self.admin or name == self.name


ANONYMOUS = User("default", admin=True, owner="", identified=False)


def token_hash(token: str) -> str:
    """The hex SHA-256 stored for a token (tokens are random: no slow hash is needed)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_token(token: Optional[str], what: str) -> Optional[str]:
    """``token`` if usable; None when not given; ValueError (one line) when empty or only quotes.

    An empty token usually means an unset variable (``--token "$SECRET"``): every request
    would then be refused, silently. cmd.exe keeps quotes in ``set VAR="..."``: one pair is
    removed (``unquote_env``) before this check.
    """
    if token is None:
        return None
    stripped = token.strip()
    if not stripped.strip("'\""):
        raise ValueError(f"{what} is empty{' (only quotes)' if stripped else ''}: is the variable you passed set? Give a token, or none to run without one")
    if stripped != token:
        raise ValueError(f"{what} starts or ends with blanks: give the token alone")
    return token


class UsersFile:
    """The users file (name -> token hash, admin), re-read when its modification time changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: Optional[Tuple[int, int]] = None
        self._by_hash: Dict[str, Tuple[str, bool]] = {}
        self._names: Dict[str, bool] = {}
        self._hashes: Dict[str, str] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file (raises ValueError with the path for a broken one; a missing file is
        an empty list of users)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._by_hash, self._names, self._hashes = None, {}, {}, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        users = _read_users(self.path)
        self._by_hash = {entry["token_sha256"]: (name, bool(entry.get("admin"))) for name, entry in users.items()}
        self._names = {name: bool(entry.get("admin")) for name, entry in users.items()}
        self._hashes = {name: entry["token_sha256"] for name, entry in users.items()}
        self._stamp = stamp

    def by_token(self, token: str) -> Optional[User]:
        found = self._by_hash.get(token_hash(token))
        return User(found[0], admin=found[1], owner=found[0]) if found else None

    def by_name(self, name: str) -> Optional[User]:
        admin = self._names.get(name)
        return User(name, admin=admin, owner=name) if admin is not None else None

    def hash_of(self, name: str) -> Optional[str]:
        """The token hash user ``name`` has now (None: no such user)."""
        return self._hashes.get(name)

    def __len__(self) -> int:
        return len(self._names)


def _read_users(path: str) -> Dict[str, Dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"users file {path}: {exc}") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise ValueError(f'users file {path}: expected {{"users": {{NAME: {{"token_sha256": ..., "admin": false}}}}}}')
    for name, entry in users.items():
        if not _NAME.match(name) or not isinstance(entry, dict) or not isinstance(entry.get("token_sha256"), str):
            raise ValueError(f"users file {path}: bad entry for user {name[:64]!r}")
    return users


def add_user(path: str, name: str, *, admin: bool = False) -> str:
    """Add (or give a new token to) user ``name`` in the users file; returns the new token.

    The file is replaced atomically and readable by its owner only (it holds no secret, but
    whoever can write it can add users).
    """
    if not _NAME.match(name):
        raise ValueError(f"user name {name[:64]!r}: use letters, digits and _.@- (at most 128, starting with a letter or digit)")
    users = _read_users(path) if os.path.exists(path) else {}
    token = secrets.token_urlsafe(32)
    users[name] = {"token_sha256": token_hash(token), "admin": admin}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"users": users}, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return token


_LOOK_UP: Any = object()  # identify(): read the session from the store


def _given_token(headers: Any, query: Any) -> Optional[str]:
    """The token the request carries (``Authorization: Bearer`` or ``?token=``), if any."""
    header = headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return str(header[7:])
    given = query.get("token") if "token" in query else None
    return str(given) if given else None


class Authenticator:
    """Decides the :class:`User` of a request (see the module docstring)."""

    def __init__(
        self,
        token: Optional[str] = None,
        users: Optional[UsersFile] = None,
        *,
        trust_user_header: bool = False,
        sessions: Optional[Sessions] = None,
    ) -> None:
        self._token = check_token(token, "the gateway token")
        self._users = users
        self.trust_user_header = trust_user_header
        self.sessions = sessions if sessions is not None else Sessions()

    @property
    def required(self) -> bool:
        """True when a request with no identity is refused (a token or a users file is set)."""
        return self._token is not None or self._users is not None

    def session_id_of(self, headers: Any, query: Any, cookies: Optional[Mapping[str, str]]) -> Optional[str]:
        """The session id of the request's cookie when the session decides who asks (sign-in
        is needed and no token was given); else None."""
        if _given_token(headers, query) or not cookies or not self.required:
            return None
        return cookies.get(session_cookie_name(headers.get("Host"))) or None

    def identify(self, headers: Any, query: Any, remote: Optional[str], cookies: Optional[Mapping[str, str]] = None,
                 *, session: Any = _LOOK_UP) -> Optional[User]:
        """The user of a request, or None (answer 401). ``headers``/``query``/``cookies``:
        mappings. A token wins over a session cookie, which wins over the ``comfy-user`` header.
        ``session``: the cookie's session, when already read (:meth:`identify_async`)."""
        given = _given_token(headers, query)
        if given:
            user = self._by_token(given)
            if user is not None:
                return user
            return None  # a wrong token is refused even where anonymous requests are allowed
        session_id = self.session_id_of(headers, query, cookies)
        if session_id:
            user = self.user_of(self.sessions.get(session_id) if session is _LOOK_UP else session)
            if user is not None:
                return user  # an ended session counts as none: the header or a 401 follows
        if self.trust_user_header and headers.get(USER_HEADER):
            return self._by_header(headers[USER_HEADER])
        if self.required:
            return None
        # Without users anonymous requests see all jobs (ComfyUI's single user); beside trusted
        # user names they see only the anonymous ones.
        return User(ANONYMOUS.name, admin=not self.trust_user_header, owner=f"host:{remote or '?'}", identified=False)

    async def identify_async(self, headers: Any, query: Any, remote: Optional[str], cookies: Optional[Mapping[str, str]] = None) -> Optional[User]:
        """:meth:`identify` on the event loop: the session is read off the loop when its
        store is a database."""
        session_id = self.session_id_of(headers, query, cookies)
        session = await self.sessions.aget(session_id) if session_id else None
        return self.identify(headers, query, remote, cookies, session=session)

    async def sign_in(self, token: str) -> Optional[Tuple[User, str]]:
        """Open a web UI session for ``token``'s user: ``(user, session id)``; None for a token
        that is neither the admin token nor a user's (or when no sign-in is needed)."""
        user = self._by_token(token) if self.required else None
        if user is None:
            return None
        is_admin_token = self._token is not None and hmac.compare_digest(token.encode(), self._token.encode())
        return user, await self.sessions.aopen(user.name, token_hash(token), is_admin_token)

    async def sign_out(self, session_id: str) -> None:
        """End a web UI session (on every replica: they share the store)."""
        await self.sessions.aend(session_id)

    async def session_user(self, session_id: str) -> Optional[User]:
        """The user of a live session (see :meth:`user_of`)."""
        return self.user_of(await self.sessions.aget(session_id))

    def user_of(self, session: Optional[Session]) -> Optional[User]:
        """The user of a live session, while the credential it was opened with is still theirs:
        a new token for the user (``add-user`` again) or their removal ends their sessions."""
        if session is None:
            return None
        if session.admin:
            if self._token is not None and hmac.compare_digest(session.proof, token_hash(self._token)):
                return User("admin", admin=True, owner="admin")
            return None
        if self._users is None:
            return None
        self._users.reload()
        current = self._users.hash_of(session.user)
        if current is None or not hmac.compare_digest(current, session.proof):
            return None
        return self._users.by_name(session.user)

    def _by_token(self, given: str) -> Optional[User]:
        if self._token is not None and hmac.compare_digest(given.encode(), self._token.encode()):
            return User("admin", admin=True, owner="admin")
        if self._users is not None:
            self._users.reload()
            return self._users.by_token(given)
        return None

    def _by_header(self, name: str) -> Optional[User]:
        name = name.strip()
        if self._users is not None and len(self._users):
            self._users.reload()
            return self._users.by_name(name)
        return User(name, owner=name) if _NAME.match(name) else None


def session_cookie_name(host: Optional[str]) -> str:
    """The session cookie's name for a gateway reached as ``host`` (the ``Host`` header).

    Browsers send a host's cookies to every port of it: two gateways on one machine would
    overwrite each other's session. The port in the name keeps them apart."""
    port = (host or "").rsplit(":", 1)[-1] if host and not host.endswith("]") else ""
    return f"{SESSION_COOKIE}_{port}" if port.isdigit() else SESSION_COOKIE


def server_query(query: Any) -> Dict[str, str]:
    """A client's query as it may go on to a server: without the gateway's ``token``. Every
    request the gateway makes on a client's behalf takes its query from here."""
    return {k: v for k, v in query.items() if k != "token"}


def request_user(request: Any) -> User:
    """The authenticated :class:`User` of an aiohttp request (set by the gateway's middleware;
    anonymous when none was set, e.g. a request the middleware did not see)."""
    user = request.get(_REQUEST_KEY)
    return user if isinstance(user, User) else ANONYMOUS


def set_request_user(request: Any, user: User) -> None:
    """Record ``user`` on the request (the gateway's middleware only)."""
    request[_REQUEST_KEY] = user
