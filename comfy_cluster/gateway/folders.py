"""Folder references to uploads: a loader reading a whole upload subfolder.

ComfyUI-for-Nuke's remote mode uploads a frame range into one subfolder (``subfolder=<code>``,
one ``/upload/image`` per frame) and points a folder loader (``VHS_LoadImagesPath``'s
``directory``, ``LoadEXR``'s ``filepath``) at ``<server ComfyUI folder>/input/<code>``, the
folder taken from ``argv`` in ``/system_stats``. Through the gateway that folder is not on any
server yet, and the pool uploads single files only. So when a posted prompt names a folder the
gateway holds uploads in (an input whose value is a path ending with ``input/<code>``), the
gateway copies that folder, as it is at that moment, to every online server under a name made
from its content (``cc-<hash>``), and rewrites the value to end with that name instead.

This needs the same path to mean the same folder on every server (identical installs, or a
``--argv`` naming the path they share); a server that comes online later lacks the copy.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import aiohttp

from ..config import ServerConfig
from .info import ssl_for
from .uploads import UploadStore, Version

__all__ = ["FolderRef", "find_folder_refs", "copy_folders", "with_folders_copied"]

log = logging.getLogger(__name__)

#: (node id, input name, the value's part before the subfolder, subfolder)
FolderRef = Tuple[str, str, str, str]


def find_folder_refs(prompt: Mapping[str, Any], store: UploadStore) -> List[FolderRef]:
    """Inputs naming a subfolder the gateway holds input uploads in."""
    subfolders = store.subfolders()
    if not subfolders:
        return []
    refs: List[FolderRef] = []
    for node_id, node in prompt.items():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        for name, value in inputs.items():
            if not isinstance(value, str) or not value:
                continue
            norm = value.replace("\\", "/").rstrip("/")
            parts = norm.split("/")
            # The longest tail after an "input" folder that is an upload subfolder. Only a path
            # into an input folder counts: a plain word (a text prompt) is never rewritten.
            best = next(
                ("/".join(parts[i:]) for i in range(1, len(parts)) if parts[i - 1] == "input" and "/".join(parts[i:]) in subfolders),
                None,
            )
            if best is not None:
                refs.append((str(node_id), str(name), norm[: len(norm) - len(best)], best))
    return refs


def folder_name(files: Sequence[Tuple[str, Version]]) -> str:
    """A name from the folder's content: the same files give the same name everywhere."""
    digest = hashlib.sha256()
    for name, version in sorted(files, key=lambda f: f[0]):
        digest.update(f"{name}\0{version.digest}\0".encode())
    return "cc-" + digest.hexdigest()[:16]


async def copy_folders(
    session: aiohttp.ClientSession,
    servers: Sequence[ServerConfig],
    folders: Dict[str, List[Tuple[str, Version]]],
    timeout: float = 300.0,
) -> List[str]:
    """Upload each ``{target name: files}`` folder to every server; the names of the servers
    every file reached (a server that failed is left out and logged)."""

    async def one(server: ServerConfig) -> bool:
        try:
            for target, files in folders.items():
                for name, version in files:
                    form = aiohttp.FormData()
                    with open(version.path, "rb") as fh:
                        form.add_field("image", fh.read(), filename=name, content_type="application/octet-stream")
                    form.add_field("subfolder", target)
                    form.add_field("type", "input")
                    form.add_field("overwrite", "true")
                    async with session.post(
                        server.url + "/upload/image", data=form, headers=server.headers, ssl=ssl_for(server),
                        timeout=aiohttp.ClientTimeout(total=timeout),
                    ) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}")
            return True
        except Exception as exc:  # noqa: BLE001 - that server cannot run the job; logged
            log.warning("copying an upload folder to %s failed: %s", server.name, exc)
            return False

    results = await asyncio.gather(*(one(s) for s in servers))
    return [s.name for s, ok in zip(servers, results) if ok]


async def with_folders_copied(
    prompt: Mapping[str, Any], store: UploadStore, session: aiohttp.ClientSession, servers: Sequence[ServerConfig]
) -> Optional[Dict[str, Any]]:
    """The prompt for the servers when it names upload folders, once they are copied to
    ``servers``; None when it names none (the prompt runs as posted)."""
    refs = find_folder_refs(prompt, store)
    if not refs:
        return None
    workflow: Dict[str, Any] = copy.deepcopy(dict(prompt))
    folders: Dict[str, List[Tuple[str, Version]]] = {}
    for node_id, name, head, sub in refs:
        files = store.files_in(sub)
        target = folder_name(files)
        folders[target] = files
        workflow[node_id]["inputs"][name] = head + target
    held = [v for files in folders.values() for _, v in files]
    store.hold(held)  # a frame uploaded again meanwhile must not vanish under the copy
    try:
        await copy_folders(session, servers, folders)
    finally:
        store.release(held)
    return workflow
