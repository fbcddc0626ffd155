"""Files clients upload to the gateway, kept until a prompt naming them has run.

ComfyUI stores an upload in its input folder and a later prompt names it (``LoadImage``'s
``image``: ``"name"`` or ``"subfolder/name"``). The gateway cannot know yet which server will
run that prompt, so it keeps the file itself. Each upload is a *version* in a folder of its
own; when a prompt is posted, the names it uses are bound to the versions current at that
moment. Two clients uploading different files
under one name, each posting right after, therefore each run on their own file, and the
library uploads that exact file to whichever server runs the job (again after a move).

Versions no longer current and held by no unfinished job are deleted; the whole store is
capped in bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Dict, List, Mapping, Optional, Set, Tuple

__all__ = ["UploadStore", "UploadError", "IncomingFile", "Version", "split_reference"]

log = logging.getLogger(__name__)

UPLOAD_TYPES = ("input", "temp", "output")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_ANNOTATION = " [input]"


class UploadError(ValueError):
    """An upload the gateway refuses; ``status`` is the HTTP answer (400, 403 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Version:
    """One stored upload: the local file, its size, and how many unfinished jobs hold it."""

    path: str
    size: int
    digest: str
    holders: int = 0
    current: bool = True


Key = Tuple[str, str, str]  # (type, subfolder, name)


def clean_name(name: str) -> str:
    """The file name ComfyUI would store: the last path part; refused if empty or odd."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not base or base in (".", "..") or _BAD_CHARS.search(base) or len(base) > 255:
        raise UploadError(f"upload: bad file name {name[:80]!r}")
    return base


def clean_subfolder(subfolder: str) -> str:
    """A relative subfolder with forward slashes; 403 (as ComfyUI) when it would escape."""
    if _BAD_CHARS.search(subfolder):
        raise UploadError("upload: bad subfolder")
    parts = [p for p in subfolder.replace("\\", "/").split("/") if p not in ("", ".")]
    if subfolder.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UploadError("upload: subfolder escapes the input folder", status=403)
    return "/".join(parts)


def split_reference(value: str) -> Optional[Key]:
    """``"sub/name.png"`` or ``"name.png [input]"`` as a store key, or None if not a file name."""
    if not value or len(value) > 1024:
        return None
    if value.endswith(_ANNOTATION):
        value = value[: -len(_ANNOTATION)]
    sub, _, name = value.replace("\\", "/").rpartition("/")
    return ("input", sub.strip("/"), name)


class IncomingFile:
    """An upload being received: written to a temporary file in the store as it arrives,
    hashed on the way, refused (413) beyond ``limit`` bytes."""

    def __init__(self, root: str, limit: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix=".incoming-", dir=root)
        self._fh: Optional[BinaryIO] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.limit = limit

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise UploadError(f"upload: file exceeds {self.limit} bytes", status=413)
        assert self._fh is not None
        self._fh.write(chunk)
        self._hash.update(chunk)

    def close(self) -> str:
        """Finish writing; the content's SHA-256."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Delete the temporary file unless it was moved into the store."""
        self.close()
        try:
            os.remove(self.path)
        except OSError:
            pass


class UploadStore:
    """The gateway's uploads (thread-confined: used on the gateway's loop thread only)."""

    def __init__(self, root: Optional[str] = None, *, max_file_bytes: int = 100 * 1024 * 1024, max_total_bytes: int = 4 * 1024**3) -> None:
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="comfy-cluster-gateway-")
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self._current: Dict[Key, Version] = {}
        self._total = 0
        self._seq = 0
        self._subfolders: Dict[str, int] = {}  # input subfolder -> uploads in it

    @property
    def total_bytes(self) -> int:
        return self._total

    def __len__(self) -> int:
        return len(self._current)

    def put(self, name: str, data: bytes, *, subfolder: str = "", type_: str = "input", overwrite: bool = False) -> Dict[str, str]:
        """Store one upload given as bytes (see :meth:`put_file`)."""
        if len(data) > self.max_file_bytes:
            raise UploadError(f"upload: file exceeds {self.max_file_bytes} bytes", status=413)
        sink = self.new_file()
        sink.write(data)
        return self.put_file(name, sink, subfolder=subfolder, type_=type_, overwrite=overwrite)

    def new_file(self) -> "IncomingFile":
        """A file in the store to stream an upload into, then give to :meth:`put_file`."""
        return IncomingFile(self.root, self.max_file_bytes)

    def put_file(self, name: str, incoming: "IncomingFile", *, subfolder: str = "", type_: str = "input", overwrite: bool = False) -> Dict[str, str]:
        """Store one upload streamed to disk; the answer ComfyUI gives (``{"name", "subfolder",
        "type"}``). The incoming file is moved into the store or deleted, whatever happens.

        Without ``overwrite`` a different file under a taken name is stored as
        ``name (1).ext``, as ComfyUI does; the same bytes keep the name.
        """
        try:
            return self._put_file(name, incoming, subfolder=subfolder, type_=type_, overwrite=overwrite)
        finally:
            incoming.discard()

    def _put_file(self, name: str, incoming: "IncomingFile", *, subfolder: str, type_: str, overwrite: bool) -> Dict[str, str]:
        if type_ not in UPLOAD_TYPES:
            raise UploadError(f"upload: unknown type {type_[:20]!r}")
        parts = name.replace("\\", "/").split("/")
        if ".." in parts:
            raise UploadError("upload: file name escapes the input folder")
        if len(parts) > 1:  # ComfyUI stores "a/b.png" in subfolder a
            subfolder, name = "/".join([subfolder] + parts[:-1]), parts[-1]
        name = clean_name(name)
        sub = clean_subfolder(subfolder)
        digest = incoming.close()
        size = incoming.size
        if not overwrite:
            stem, ext = os.path.splitext(name)
            counter = 1
            while (type_, sub, name) in self._current and self._current[(type_, sub, name)].digest != digest:
                name = f"{stem} ({counter}){ext}"
                counter += 1
        key = (type_, sub, name)
        old = self._current.get(key)
        if old is not None and old.digest == digest:
            return {"name": name, "subfolder": sub, "type": type_}
        self._make_room(size)
        # One folder per version: versions of "frame.png" never overwrite each other here
        # (the pool uploads a file under its own name, in a subfolder named by its content).
        self._seq += 1
        folder = os.path.join(self.root, str(self._seq))
        os.makedirs(folder)
        path = os.path.join(folder, name)
        os.replace(incoming.path, path)
        self._total += size
        if key not in self._current and type_ == "input" and sub:
            self._subfolders[sub] = self._subfolders.get(sub, 0) + 1
        self._current[key] = Version(path, size, digest)
        if old is not None:
            old.current = False
            self._drop_if_unused(old)
        return {"name": name, "subfolder": sub, "type": type_}

    def restore(self, key: Key, data: bytes) -> None:
        """Make ``data`` the current upload under ``key`` again (after a restart)."""
        kind, sub, name = key
        self.put(name, data, subfolder=sub, type_=kind, overwrite=True)

    def keep(self, name: str, data: bytes) -> Version:
        """A version that is no current upload (a waiting prompt's bound file, restored after
        a restart); :meth:`hold` it, and :meth:`release` drops it."""
        self._seq += 1
        folder = os.path.join(self.root, str(self._seq))
        os.makedirs(folder)
        path = os.path.join(folder, clean_name(name))
        with open(path, "wb") as fh:
            fh.write(data)
        self._total += len(data)
        return Version(path, len(data), hashlib.sha256(data).hexdigest(), current=False)

    def lookup(self, key: Key) -> Optional[Version]:
        return self._current.get(key)

    def bind(self, prompt: Mapping[str, Any]) -> Tuple[Dict[str, str], List[Version]]:
        """The uploads ``prompt`` names now: ``({node_id: local path}, versions)``.

        A node's ``image`` input naming a stored upload is bound (the pool replaces it with
        the name the file gets on the server that runs the job). Call :meth:`hold` on the
        versions once the prompt is accepted, and :meth:`release` when its job has ended.
        """
        inputs: Dict[str, str] = {}
        held: List[Version] = []
        for node_id, node in prompt.items():
            if not isinstance(node, Mapping):
                continue
            value = (node.get("inputs") or {}).get("image") if isinstance(node.get("inputs"), Mapping) else None
            if not isinstance(value, str):
                continue
            key = split_reference(value)
            version = self._current.get(key) if key else None
            if version is None:
                continue
            held.append(version)
            inputs[str(node_id)] = version.path
        return inputs, held

    def subfolders(self) -> Set[str]:
        """Every non-empty subfolder holding input uploads (kept up to date: asked per prompt)."""
        return set(self._subfolders)

    def _forget_subfolder(self, key: Key) -> None:
        kind, sub, _ = key
        if kind == "input" and sub:
            self._subfolders[sub] -= 1
            if self._subfolders[sub] <= 0:
                del self._subfolders[sub]

    def files_in(self, subfolder: str) -> List[Tuple[str, Version]]:
        """``(name, version)`` of the input uploads in ``subfolder`` now, by name."""
        files = [(name, v) for (kind, sub, name), v in self._current.items() if kind == "input" and sub == subfolder]
        return sorted(files, key=lambda f: f[0])

    def hold(self, versions: List[Version]) -> None:
        """Keep ``versions`` (bound to an accepted prompt) until :meth:`release`."""
        for v in versions:
            v.holders += 1

    def release(self, versions: List[Version]) -> None:
        """A job holding ``versions`` has ended."""
        for v in versions:
            v.holders -= 1
            self._drop_if_unused(v)

    def _drop_if_unused(self, v: Version) -> None:
        if v.current or v.holders > 0:
            return
        try:
            os.remove(v.path)
            os.rmdir(os.path.dirname(v.path))
        except OSError as exc:
            log.debug("upload %s: %s", v.path, exc)
        self._total -= v.size

    def _make_room(self, size: int) -> None:
        if self._total + size <= self.max_total_bytes:
            return
        # Oldest current uploads no job holds go first (dict order is upload order).
        for key, v in list(self._current.items()):
            if self._total + size <= self.max_total_bytes:
                break
            if v.holders == 0:
                del self._current[key]
                self._forget_subfolder(key)
                v.current = False
                self._drop_if_unused(v)
        if self._total + size > self.max_total_bytes:
            raise UploadError(f"upload: the gateway's store is full ({self.max_total_bytes} bytes)", status=413)

    def close(self) -> None:
        """Delete every stored file (the gateway is stopping)."""
        self._current.clear()
        self._subfolders.clear()
        self._total = 0
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)
