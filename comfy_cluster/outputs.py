"""Job outputs on the local machine: paths on shared storage, and downloads with safe names.

A server names its output files itself; every such name is checked (no escape from the target
folder) and made unique before anything is written, so two jobs or two servers never
overwrite each other's files.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Set

from . import localfiles
from .config import ServerConfig
from .errors import LocalFileError
from .paths import check_part, fit_name, safe_join

if TYPE_CHECKING:  # pragma: no cover
    from .client import ComfyClient
    from .jobs import OutputFile

__all__ = ["download_outputs", "map_shared_path", "unique_targets"]

log = logging.getLogger(__name__)


def download_outputs(
    client: "ComfyClient", server: ServerConfig, files: Sequence["OutputFile"], dest_dir: str, tag: str = ""
) -> List[str]:
    """Local paths of ``files`` made by ``server``: mapped on shared storage (``dir_local``)
    when every file is there, else fetched with ``/view`` into ``dest_dir``.

    Every name is checked before anything is written; each target is claimed (created empty,
    atomically) before its download, so two downloads at once never get the same path. A
    failed download leaves no empty claimed file behind.
    """
    local = server.local_dir()
    if local:
        mapped = [map_shared_path(server, f) for f in files]
        if all(p is not None for p in mapped):
            return [p for p in mapped if p is not None]
        log.warning("outputs of %s not found under dir_local %s; downloading", server.name, local)
    targets = unique_targets(dest_dir, files, tag)
    done = 0
    try:
        for f, target in zip(files, targets):
            client.download(f.filename, f.subfolder, f.type, target)
            done += 1
    finally:
        for target in targets[done:]:
            localfiles.remove_quietly(target)  # claimed, never filled
    return targets


def map_shared_path(server: ServerConfig, f: "OutputFile") -> Optional[str]:
    """The local path of an output on shared storage, or None if not mapped or not there."""
    local = server.local_dir()
    if not local:
        return None
    root = os.path.join(local, check_part(f.type, "type")[0] if f.type else "output")
    path = safe_join(root, f.subfolder, f.filename)  # UnsafePathError for a name that escapes
    return path if os.path.isfile(path) else None


# One process-wide lock: a name is looked up case-insensitively and then claimed, and two
# threads must not both find "A.png" free and "a.png" free on a case-sensitive disk.
_claim_lock = threading.Lock()


def unique_targets(dest_dir: str, files: Sequence["OutputFile"], tag: str = "") -> List[str]:
    """Claimed local targets for ``files`` under ``dest_dir``: each one created empty and
    atomically (O_EXCL), unique even when compared without case (as NTFS and APFS compare).

    Every name is checked first (UnsafePathError before anything is created). Two servers
    number their outputs independently (``x_00001_.png`` on each), so a name already taken
    gets ``_<tag>`` (the job's prompt id) added, then ``_<tag>_2`` ... rather than overwriting
    another job's file. The caller fills each target (replacing it) or removes it.
    """
    planned = [safe_join(dest_dir, f.subfolder, f.filename) for f in files]
    out: List[str] = []
    listings: Dict[str, Set[str]] = {}
    try:
        with _claim_lock:
            for path in planned:
                folder = os.path.dirname(path)
                if folder not in listings:
                    _makedirs(folder)
                    listings[folder] = {n.casefold() for n in os.listdir(folder)}
                taken = listings[folder]
                for candidate in _candidates(path, tag):
                    name = os.path.basename(candidate).casefold()
                    if name not in taken and localfiles.claim(candidate):
                        taken.add(name)
                        out.append(candidate)
                        break
                    taken.add(name)
    except BaseException:
        for path in out:
            localfiles.remove_quietly(path)
        raise
    return out


def _candidates(path: str, tag: str) -> Iterator[str]:
    yield path
    folder = os.path.dirname(path)
    stem, ext = os.path.splitext(os.path.basename(path))
    suffix = f"_{tag}" if tag else ""
    if suffix:
        yield os.path.join(folder, fit_name(f"{stem}{suffix}{ext}"))  # a long name: still one entry
    for n in itertools.count(2):
        yield os.path.join(folder, fit_name(f"{stem}{suffix}_{n}{ext}"))


def _makedirs(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise LocalFileError(f"cannot create folder {folder}: {exc.strerror or exc}", path=folder) from None
