"""Job outputs on the local machine: paths on shared storage, and downloads with safe names.

A server names its output files itself; every such name is checked (no escape from the target
folder) and made unique before anything is written, so two jobs or two servers never
overwrite each other's files.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, List, Optional, Sequence

from .config import ServerConfig
from .paths import check_part, safe_join

if TYPE_CHECKING:  # pragma: no cover
    from .client import ComfyClient
    from .jobs import OutputFile

__all__ = ["download_outputs", "map_shared_path", "unique_targets"]

log = logging.getLogger(__name__)


def download_outputs(
    client: "ComfyClient", server: ServerConfig, files: Sequence["OutputFile"], dest_dir: str, tag: str = ""
) -> List[str]:
    """Local paths of ``files`` made by ``server``: mapped on shared storage (``dir_local``)
    when every file is there, else fetched with ``/view`` into ``dest_dir``."""
    if server.dir_local:
        mapped = [map_shared_path(server, f) for f in files]
        if all(p is not None for p in mapped):
            return [p for p in mapped if p is not None]
        log.warning("outputs of %s not found under dir_local %s; downloading", server.name, server.dir_local)
    os.makedirs(dest_dir, exist_ok=True)
    targets = unique_targets(dest_dir, files, tag)  # every name checked before anything is written
    for f, target in zip(files, targets):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        client.download(f.filename, f.subfolder, f.type, target)
    return targets


def map_shared_path(server: ServerConfig, f: "OutputFile") -> Optional[str]:
    """The local path of an output on shared storage, or None if not mapped or not there."""
    if not server.dir_local:
        return None
    root = os.path.join(server.dir_local, check_part(f.type, "type")[0] if f.type else "output")
    path = safe_join(root, f.subfolder, f.filename)  # UnsafePathError for a name that escapes
    return path if os.path.isfile(path) else None


def unique_targets(dest_dir: str, files: Sequence["OutputFile"], tag: str = "") -> List[str]:
    """Checked local targets for ``files`` under ``dest_dir`` (all checked before any write).

    Two servers number their outputs independently (``x_00001_.png`` on each), so a name
    already present in ``dest_dir`` gets ``_<tag>`` (the job's prompt id) added rather than
    overwriting another job's file.
    """
    out = []
    for f in files:
        target = safe_join(dest_dir, f.subfolder, f.filename)
        if os.path.exists(target) and tag:
            stem, ext = os.path.splitext(f.filename)
            target = safe_join(dest_dir, f.subfolder, f"{stem}_{tag}{ext}")
        out.append(target)
    return out
