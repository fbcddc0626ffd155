"""Per-user storage of the gateway's web UI: users, and each user's files (``userdata``).

ComfyUI keeps a user's settings (``comfy.settings.json``), saved workflows, templates and
keybindings as files under ``user/<user id>/``, and in multi-user mode the users in
``user/users.json``. :class:`UserStore` is that storage as a small interface: paths are
relative, ``/``-separated and already checked by :func:`clean_path`; the routes in
:mod:`.userdata` answer as ComfyUI does on top of it. :class:`FileUserStore` keeps the same
layout as ComfyUI under a data folder; another store (a database) implements the same methods.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional

__all__ = ["UserStore", "FileUserStore", "StoredFile", "clean_path", "check_user_id", "default_user_dir"]


def default_user_dir() -> str:
    """Where the gateway keeps user data unless told: ``~/.comfy-cluster/gateway-user``."""
    return os.path.join(os.path.expanduser("~"), ".comfy-cluster", "gateway-user")


@dataclass(frozen=True)
class StoredFile:
    """A user's file or folder: ``path`` relative to the user's root, ``/``-separated."""

    path: str
    is_dir: bool = False
    size: int = 0
    modified: float = 0.0
    created: float = 0.0


def clean_path(path: str) -> Optional[str]:
    """``path`` (relative to a user's root) normalised, or None when it leaves that root.

    As ComfyUI: ``a/./b`` and ``a/../b`` are resolved; an absolute path, a drive, a NUL byte
    or ``..`` above the root is refused. ``""`` and ``"."`` are the root itself (``""``).
    """
    if "\x00" in path:
        return None
    path = path.replace("\\", "/") if os.sep == "\\" else path
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return None
    norm = posixpath.normpath(path) if path else "."
    if norm == ".":
        return ""
    if norm == ".." or norm.startswith("../"):
        return None
    return norm


def check_user_id(user: str) -> str:
    """``user`` if it can name a folder of its own; ValueError naming it otherwise."""
    if not user or user in (".", "..") or "/" in user or "\\" in user or "\x00" in user or ":" in user:
        raise ValueError(f"invalid user id {user!r}")
    return user


class UserStore:
    """The interface: users and per-user files. Every method may be called from any thread.

    ``path`` arguments come from :func:`clean_path` (``""`` is the user's root).
    """

    def users(self) -> Dict[str, str]:
        """Multi-user mode's users: ``{user id: name}``."""
        raise NotImplementedError

    def add_user(self, user_id: str, name: str) -> None:
        """Record a new user (multi-user mode)."""
        raise NotImplementedError

    def stat(self, user: str, path: str) -> Optional[StoredFile]:
        """The file or folder at ``path``, or None when there is none."""
        raise NotImplementedError

    def read(self, user: str, path: str) -> Optional[bytes]:
        """A file's bytes, or None when there is no such file."""
        raise NotImplementedError

    def write(self, user: str, path: str, data: bytes) -> StoredFile:
        """Create or replace a file (its folders are created). OSError when it cannot be."""
        raise NotImplementedError

    def delete(self, user: str, path: str) -> bool:
        """Delete a file; False when there was none."""
        raise NotImplementedError

    def move(self, user: str, source: str, dest: str) -> StoredFile:
        """Move a file (replacing ``dest``). OSError when it cannot be."""
        raise NotImplementedError

    def walk(self, user: str, folder: str, recurse: bool) -> List[StoredFile]:
        """The files and folders in ``folder`` (all levels when ``recurse``); paths relative
        to the user's root. ``[]`` when the folder does not exist."""
        raise NotImplementedError


class FileUserStore(UserStore):
    """Files under ``root/<user id>/`` and ``root/users.json``: ComfyUI's own layout, so a
    ComfyUI ``user`` folder can be used as it is."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._lock = threading.Lock()  # users.json: read-modify-write

    def __repr__(self) -> str:
        return f"FileUserStore({self.root!r})"

    def _path(self, user: str, path: str) -> str:
        user_root = os.path.join(self.root, check_user_id(user))
        full = os.path.abspath(os.path.join(user_root, *path.split("/"))) if path else user_root
        if os.path.commonpath((user_root, full)) != user_root:
            raise ValueError(f"path {path!r} leaves the user's folder")  # clean_path lets none through
        return full

    def _info(self, user: str, full: str) -> StoredFile:
        st = os.stat(full)
        rel = os.path.relpath(full, os.path.join(self.root, user)).replace(os.sep, "/")
        is_dir = os.path.isdir(full)
        return StoredFile("" if rel == "." else rel, is_dir, 0 if is_dir else st.st_size, st.st_mtime, st.st_ctime)

    def users(self) -> Dict[str, str]:
        try:
            with open(os.path.join(self.root, "users.json"), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def add_user(self, user_id: str, name: str) -> None:
        check_user_id(user_id)
        with self._lock:
            users = self.users()
            users[user_id] = name
            os.makedirs(self.root, exist_ok=True)
            self._replace(os.path.join(self.root, "users.json"), json.dumps(users).encode())

    def stat(self, user: str, path: str) -> Optional[StoredFile]:
        full = self._path(user, path)
        return self._info(user, full) if os.path.exists(full) else None

    def read(self, user: str, path: str) -> Optional[bytes]:
        full = self._path(user, path)
        if not os.path.isfile(full):
            return None
        with open(full, "rb") as f:
            return f.read()

    def write(self, user: str, path: str, data: bytes) -> StoredFile:
        full = self._path(user, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        self._replace(full, data)
        return self._info(user, full)

    @staticmethod
    def _replace(full: str, data: bytes) -> None:
        # Written beside and renamed: a reader never sees half a settings file.
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, full)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def delete(self, user: str, path: str) -> bool:
        full = self._path(user, path)
        if not os.path.isfile(full):
            return False
        os.remove(full)
        return True

    def move(self, user: str, source: str, dest: str) -> StoredFile:
        src, dst = self._path(user, source), self._path(user, dest)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        return self._info(user, dst)

    def walk(self, user: str, folder: str, recurse: bool) -> List[StoredFile]:
        top = self._path(user, folder)
        if not os.path.isdir(top):
            return []
        out: List[StoredFile] = []
        for here, dirs, files in os.walk(top):
            for name in sorted(dirs) + sorted(files):
                if name.startswith(".tmp-"):
                    continue
                try:
                    out.append(self._info(user, os.path.join(here, name)))
                except OSError:  # deleted meanwhile
                    continue
            if not recurse:
                break
        return out
