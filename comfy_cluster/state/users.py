"""Users' ComfyUI settings and userdata files (workflows, templates), kept in the store so
every replica serves the same and nothing is lost on a restart.

``UserData`` is blocking and thread-safe, like :class:`~comfy_cluster.state.Store` (whose
database it shares): call it off the event loop.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa

from . import schema as t
from .store import Store

__all__ = ["UserData"]


class UserData:
    """Per-user settings (one JSON object) and files by relative path, in ``store``."""

    def __init__(self, store: Store, *, clock: Any = time.time) -> None:
        self._store = store
        self._clock = clock

    # -- settings -----------------------------------------------------------------------------

    def settings(self, user: str) -> Dict[str, Any]:
        with self._store.reading() as conn:
            text = conn.execute(sa.select(t.settings.c.value).where(t.settings.c.user == user)).scalar()
        value = json.loads(text) if text is not None else {}
        return value if isinstance(value, dict) else {}

    def set_settings(self, user: str, values: Dict[str, Any]) -> None:
        """Replace ``user``'s settings with ``values``."""
        with self._store.transaction() as conn:
            conn.execute(t.settings.delete().where(t.settings.c.user == user))
            conn.execute(t.settings.insert().values(user=user, value=json.dumps(values)))

    def set_setting(self, user: str, key: str, value: Any) -> None:
        with self._store.transaction() as conn:
            text = conn.execute(sa.select(t.settings.c.value).where(t.settings.c.user == user)).scalar()
            current = json.loads(text) if text is not None else {}
            current[key] = value
            conn.execute(t.settings.delete().where(t.settings.c.user == user))
            conn.execute(t.settings.insert().values(user=user, value=json.dumps(current)))

    # -- files --------------------------------------------------------------------------------

    def read(self, user: str, path: str) -> Optional[bytes]:
        with self._store.reading() as conn:
            data = conn.execute(sa.select(t.userdata.c.data).where(sa.and_(t.userdata.c.user == user, t.userdata.c.path == path))).scalar()
        return bytes(data) if data is not None else None

    def write(self, user: str, path: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Store a file; False (nothing written) when it exists and ``overwrite`` is False."""
        where = sa.and_(t.userdata.c.user == user, t.userdata.c.path == path)
        with self._store.transaction() as conn:
            exists = conn.execute(sa.select(t.userdata.c.path).where(where)).first() is not None
            if exists and not overwrite:
                return False
            conn.execute(t.userdata.delete().where(where))
            conn.execute(t.userdata.insert().values(user=user, path=path, data=data, modified=self._clock()))
        return True

    def delete(self, user: str, path: str) -> bool:
        with self._store.transaction() as conn:
            gone = conn.execute(t.userdata.delete().where(sa.and_(t.userdata.c.user == user, t.userdata.c.path == path)))
        return bool(gone.rowcount)

    def move(self, user: str, source: str, dest: str, *, overwrite: bool = False) -> bool:
        """Rename a file; False when ``source`` is missing or ``dest`` exists (without overwrite)."""
        with self._store.transaction() as conn:
            src = sa.and_(t.userdata.c.user == user, t.userdata.c.path == source)
            dst = sa.and_(t.userdata.c.user == user, t.userdata.c.path == dest)
            if conn.execute(sa.select(t.userdata.c.path).where(src)).first() is None:
                return False
            if conn.execute(sa.select(t.userdata.c.path).where(dst)).first() is not None:
                if not overwrite:
                    return False
                conn.execute(t.userdata.delete().where(dst))
            conn.execute(t.userdata.update().where(src).values(path=dest, modified=self._clock()))
        return True

    def list(self, user: str, folder: str = "") -> List[Tuple[str, int, float]]:
        """``(path relative to folder, size, modified)`` of the user's files under ``folder``."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        with self._store.reading() as conn:
            q = sa.select(t.userdata.c.path, sa.func.length(t.userdata.c.data), t.userdata.c.modified).where(t.userdata.c.user == user)
            rows = conn.execute(q.order_by(t.userdata.c.path)).all()
        return [(r[0][len(prefix):], int(r[1] or 0), float(r[2])) for r in rows if r[0].startswith(prefix)]
