"""Taking up unfinished prompts from the store: after a restart (the ones this gateway held),
when a replica claims waiting prompts, or takes over those of a dead replica. Their uploads
come back as local files; a prompt with a copy on a server is followed there again by that
copy's prompt id (never posted twice); the others are queued.

The newest copy of a prompt is the one followed, ended or not: a copy whose end was confirmed
just before a crash (its prompt's end was not committed yet) still holds its result in the
server's history, and one that had to move is judged again from the server as it stands.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

from ..state import PromptRow
from .book import GatewayJob, JobBook
from .durable import Keeper
from .uploads import UploadStore, Version

__all__ = ["restore_jobs", "take_up"]

log = logging.getLogger(__name__)


async def restore_jobs(keeper: Keeper, uploads: UploadStore, book: JobBook, servers: Sequence[str]) -> int:
    """Bring back the store's uploads and this gateway's unfinished prompts; how many."""
    store = keeper.store
    for key, digest, _size in await keeper.read(store.uploads):
        data = await keeper.read(store.blob, digest)
        if data is not None:
            uploads.restore(key, data)
    # The newest history items back in memory (older ones, and other replicas', are read
    # from the store when asked for).
    _, done = await keeper.read(store.history_rows, newest_first=True, limit=book.history.max_items)
    for item in reversed(done):
        book.history.add(item["prompt_id"], item["owner"] or "default", item["item"])
    rows: List[PromptRow] = await keeper.read(store.unfinished, keeper.replica)
    await take_up(keeper, uploads, book, rows, servers)
    if rows:
        log.warning("gateway state: %d unfinished prompt(s) taken up again", len(rows))
    return len(rows)


async def take_up(keeper: Keeper, uploads: UploadStore, book: JobBook, rows: Sequence[PromptRow], servers: Sequence[str],
                  *, client_id: Optional[str] = None, keep: bool = False) -> None:
    """Make each row a job of this gateway: followed on its server, or queued. Rows taken
    over from a dead replica: ``client_id`` is its pool's (their copies' events go to it),
    and ``keep`` keeps their events for their clients' next sockets (the sockets they had may
    have died with it)."""
    known = set(servers)
    for row in rows:
        if row.prompt_id in book.active:
            continue
        inputs, held = await _bound_files(keeper, uploads, row)
        body = row.body
        gj = GatewayJob(
            prompt_id=row.prompt_id, number=row.number, client_id=row.client_id, prompt=body.get("prompt") or {},
            extra_data=body.get("extra_data") or {}, outputs=body.get("outputs") or [], inputs=inputs, held=held,
            workflow=body.get("workflow"), user=row.owner or "default", owner=str(body.get("owner") or ""),
            keep=keep or bool(body.get("keep")), created=row.created, started_at=row.started,
        )
        gj.cancel_requested = row.cancel
        copies = [(aid, server) for aid, server, _phase in row.attempts if server in known]
        if copies:
            attempt_id, server = copies[-1]
            log.info("prompt %s: following its copy %s on %s", row.prompt_id, attempt_id, server)
            book.adopt(gj, attempt_id, server, client_id)
        else:
            book.add(gj)


async def _bound_files(keeper: Keeper, uploads: UploadStore, row: PromptRow) -> Tuple[Dict[str, str], List[Version]]:
    """The prompt's bound uploads as local files again (from their bytes in the store)."""
    inputs: Dict[str, str] = {}
    held: List[Version] = []
    for node, (digest, name) in row.inputs.items():
        data = await keeper.read(keeper.store.blob, digest)
        if data is None:
            log.warning("prompt %s: upload %s for node %s is gone from the store", row.prompt_id, name, node)
            continue
        version = uploads.keep(name, data)
        uploads.hold([version])
        held.append(version)
        inputs[node] = version.path
    return inputs, held
