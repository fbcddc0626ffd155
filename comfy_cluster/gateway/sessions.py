"""Web UI sign-in sessions: a random session id in a cookie, its user kept on the gateway.

A browser cannot send ``Authorization`` with the page's own requests, so a user signs in once
with their token (:mod:`.login`) and gets a session cookie. The cookie holds only a random id
(32 bytes from :mod:`secrets`), never the token; the gateway keeps what the id stands for: the
user's name, a fingerprint of the credential used (so a new token for that user, or the user's
removal from the users file, ends their sessions) and when it expires.

Storage is a small interface, :class:`SessionStore`, keyed by the SHA-256 of the id (a copy of
the store does not hand out live sessions). :class:`MemorySessionStore` keeps them in memory (a
restart signs everyone out); a gateway keeps them in its state store
(:class:`~comfy_cluster.gateway.dbsessions.DbSessionStore`): they outlive a restart, and every
replica of a service honours a sign-in made on any of them, and its sign-out.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Optional, TypeVar, cast

__all__ = ["Session", "SessionStore", "MemorySessionStore", "Sessions", "DEFAULT_SESSION_SECONDS"]

#: A session lasts a working week unless set otherwise (``--session-hours``).
DEFAULT_SESSION_SECONDS = 7 * 24 * 3600.0
Clock = Callable[[], float]
T = TypeVar("T")


@dataclass(frozen=True)
class Session:
    """What a session id stands for: ``user`` signed in with a credential whose fingerprint is
    ``proof`` (the token's hash), ``admin`` when it was the admin token; ends at ``expires``
    (seconds of the :class:`Sessions` clock, wall time by default)."""

    user: str
    proof: str
    admin: bool
    expires: float


class SessionStore:
    """Where sessions are kept, by key (the SHA-256 hex of the session id). Implementations
    must be thread-safe. The gateway calls them on its event loop unless ``blocking`` is true
    (a database): then on a thread."""

    blocking = False

    def put(self, key: str, session: Session) -> None:
        """Keep ``session`` under ``key``."""
        raise NotImplementedError

    def get(self, key: str) -> Optional[Session]:
        """The session under ``key``, or None."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error when unknown)."""
        raise NotImplementedError

    def purge(self, now: float) -> None:
        """Forget every session that expired at ``now``."""
        raise NotImplementedError


class MemorySessionStore(SessionStore):
    """Sessions in memory, at most ``limit`` of them: beyond, the expired ones go first, then
    the oldest (that user signs in again)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._by_key: Dict[str, Session] = {}  # insertion order: oldest first

    def __repr__(self) -> str:
        return f"MemorySessionStore(sessions={len(self)}, limit={self._limit})"

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    def put(self, key: str, session: Session) -> None:
        with self._lock:
            self._by_key[key] = session
            while len(self._by_key) > self._limit:
                del self._by_key[next(iter(self._by_key))]

    def get(self, key: str) -> Optional[Session]:
        with self._lock:
            return self._by_key.get(key)

    def delete(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def purge(self, now: float) -> None:
        with self._lock:
            for key in [k for k, s in self._by_key.items() if s.expires <= now]:
                del self._by_key[key]


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class Sessions:
    """Opens, reads and ends sessions over a :class:`SessionStore`; ``ttl`` seconds each,
    measured on ``clock`` (injected by tests)."""

    def __init__(self, store: Optional[SessionStore] = None, ttl: float = DEFAULT_SESSION_SECONDS, clock: Clock = time.time) -> None:
        if ttl <= 0:
            raise ValueError(f"session lifetime must be positive, got {ttl!r} seconds")
        self.store: SessionStore = store if store is not None else MemorySessionStore()
        #: False: the gateway may keep the sessions in its state store instead.
        self.store_given = store is not None
        #: Runs a blocking store call off the loop (the gateway sets its state readers);
        #: None: the loop's default executor.
        self.offload: Optional[Callable[..., Awaitable[Any]]] = None
        self.ttl = ttl
        self._clock = clock
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"Sessions({self.store!r}, ttl={self.ttl:.0f}s)"

    def open(self, user: str, proof: str, admin: bool) -> str:
        """A new session for ``user``; returns its id (the cookie's value, shown to nobody else)."""
        now = self._clock()
        if now >= self._next_purge:  # expired sessions leave at most once a minute
            self.store.purge(now)
            self._next_purge = now + 60.0
        session_id = secrets.token_urlsafe(32)
        self.store.put(_key(session_id), Session(user, proof, admin, now + self.ttl))
        return session_id

    def get(self, session_id: str) -> Optional[Session]:
        """The live session of ``session_id``; None when unknown or expired (then forgotten)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        session = self.store.get(key)
        if session is not None and session.expires <= self._clock():
            self.store.delete(key)
            return None
        return session

    def end(self, session_id: str) -> None:
        """Sign out: the id is no longer valid."""
        if session_id:
            self.store.delete(_key(session_id))

    # -- from the event loop ------------------------------------------------------------------

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.store.blocking:
            return fn(*args)
        if self.offload is not None:
            return cast(T, await self.offload(fn, *args))
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def aopen(self, user: str, proof: str, admin: bool) -> str:
        """:meth:`open`, off the loop when the store blocks."""
        return await self._off_loop(self.open, user, proof, admin)

    async def aget(self, session_id: str) -> Optional[Session]:
        """:meth:`get`, off the loop when the store blocks."""
        return await self._off_loop(self.get, session_id)

    async def aend(self, session_id: str) -> None:
        """:meth:`end`, off the loop when the store blocks."""
        await self._off_loop(self.end, session_id)
