"""``DbUserStore``: the web UI's users and per-user files in the gateway's state store, so
every replica serves the same settings and workflows and a restart loses none.

Files are rows (user, path, bytes); folders are implied by the paths under them (an empty
folder does not exist, as in object stores). The users of multi-user mode are one JSON
object in the store's facts.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional

import sqlalchemy as sa

from ..state import Store, UserData
from ..state import schema as t
from .userstore import StoredFile, UserStore, check_user_id

__all__ = ["DbUserStore"]

_USERS = "webui_users"


class DbUserStore(UserStore):
    """:class:`~comfy_cluster.gateway.userstore.UserStore` over ``store`` (thread-safe)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._files = UserData(store)

    def __repr__(self) -> str:
        return f"DbUserStore({self._store!r})"

    def users(self) -> Dict[str, str]:
        text = self._store.fact(_USERS)
        data = json.loads(text) if text else {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def add_user(self, user_id: str, name: str) -> None:
        check_user_id(user_id)
        with self._store.transaction() as conn:
            text = conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == _USERS)).scalar()
            data = json.loads(text) if text else {}
            data[user_id] = name
            conn.execute(t.meta.delete().where(t.meta.c.key == _USERS))
            conn.execute(t.meta.insert().values(key=_USERS, value=json.dumps(data)))

    def stat(self, user: str, path: str) -> Optional[StoredFile]:
        check_user_id(user)
        for f in self._rows(user, path, exact=True):
            return f
        if path == "" or self._rows(user, path + "/", exact=False, limit=1):
            return StoredFile(path, True)
        return None

    def read(self, user: str, path: str) -> Optional[bytes]:
        return self._files.read(check_user_id(user), path)

    def write(self, user: str, path: str, data: bytes) -> StoredFile:
        check_user_id(user)
        if not path or self.stat(user, path) is not None and self.stat(user, path).is_dir:  # type: ignore[union-attr]
            raise IsADirectoryError(path)
        self._files.write(user, path, data)
        written = self.stat(user, path)
        assert written is not None
        return written

    def delete(self, user: str, path: str) -> bool:
        return self._files.delete(check_user_id(user), path)

    def move(self, user: str, source: str, dest: str) -> StoredFile:
        check_user_id(user)
        if not self._files.move(user, source, dest, overwrite=True):
            raise FileNotFoundError(source)
        moved = self.stat(user, dest)
        assert moved is not None
        return moved

    def walk(self, user: str, folder: str, recurse: bool) -> List[StoredFile]:
        check_user_id(user)
        prefix = folder + "/" if folder else ""
        files = self._rows(user, prefix, exact=False)
        if folder and not files:
            return []
        out: Dict[str, StoredFile] = {}
        for f in files:
            rest = f.path[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # the folders between
                if recurse or depth == 1:
                    sub = prefix + "/".join(rest[:depth])
                    out.setdefault(sub, StoredFile(sub, True, 0, f.modified, f.created))
            if recurse or len(rest) == 1:
                out[f.path] = f
        return [out[k] for k in sorted(out)]

    def _rows(self, user: str, path: str, *, exact: bool, limit: Optional[int] = None) -> List[StoredFile]:
        c = t.userdata.c
        where = c.path == path if exact else c.path.startswith(path, autoescape=True)
        q = sa.select(c.path, sa.func.length(c.data), c.modified).where(sa.and_(c.user == user, where)).order_by(c.path)
        if limit is not None:
            q = q.limit(limit)
        with self._store.reading() as conn:
            rows = conn.execute(q).all()
        return [StoredFile(r[0], False, int(r[1] or 0), float(r[2]), float(r[2])) for r in rows]
