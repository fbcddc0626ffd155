"""``DbSessionStore``: web UI sign-in sessions in the gateway's state store.

Every replica of a service reads the same rows, so a sign-in made on one replica holds on all
of them (no sticky routing), a sign-out ends it on all of them at once, and a restart signs
nobody out. Rows are keyed by the SHA-256 of the session id (see :mod:`.sessions`): the
database never holds an id a browser could present.
"""

from __future__ import annotations

from typing import Optional

import sqlalchemy as sa

from ..state import Store
from ..state import schema as t
from .sessions import Session, SessionStore

__all__ = ["DbSessionStore"]


class DbSessionStore(SessionStore):
    """:class:`~comfy_cluster.gateway.sessions.SessionStore` over ``store`` (thread-safe;
    blocking, so the gateway calls it off its loop)."""

    blocking = True

    def __init__(self, store: Store) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"DbSessionStore({self._store!r})"

    def put(self, key: str, session: Session) -> None:
        with self._store.transaction() as conn:
            conn.execute(t.sessions.delete().where(t.sessions.c.key == key))
            conn.execute(t.sessions.insert().values(key=key, user=session.user, proof=session.proof, admin=session.admin,
                                                     expires=session.expires))

    def get(self, key: str) -> Optional[Session]:
        with self._store.reading() as conn:
            row = conn.execute(sa.select(t.sessions).where(t.sessions.c.key == key)).mappings().first()
        return Session(row["user"], row["proof"], bool(row["admin"]), float(row["expires"])) if row is not None else None

    def delete(self, key: str) -> None:
        with self._store.transaction() as conn:
            conn.execute(t.sessions.delete().where(t.sessions.c.key == key))

    def purge(self, now: float) -> None:
        with self._store.transaction() as conn:
            conn.execute(t.sessions.delete().where(t.sessions.c.expires <= now))
