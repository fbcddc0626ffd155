"""``Listing``: what the gateway lists (``/queue``, ``/history``, the job API's unfinished jobs),
for the user who asks.

A single gateway answers from its :class:`~comfy_cluster.gateway.book.JobBook` (memory, the
same as its store). Replicas of one service answer from the shared store, so every replica
behind a load balancer lists the same: every replica's unfinished prompts, and the history
whichever replica ended them; a history item deleted on one is gone on all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, cast

from .auth import User
from .book import GatewayJob, JobBook
from .durable import Keeper

__all__ = ["Listing", "Unfinished", "SHARED_TTL"]

T = TypeVar("T")
#: Seconds one read of the shared store answers the lists (see :class:`Listing`).
SHARED_TTL = 0.5
MAX_READS = 256  # distinct lists cached at once (history pages per user and size)


@dataclass
class Unfinished:
    """One unfinished prompt as the lists show it (from the book or the store)."""

    prompt_id: str
    number: float
    user: str
    client_id: str
    running: bool
    created: float
    prompt: Any
    extra_data: Any
    outputs: Any

    @classmethod
    def of_job(cls, gj: GatewayJob) -> "Unfinished":
        return cls(gj.prompt_id, gj.number, gj.user, gj.client_id, gj.state == "running" or gj.started, gj.created, gj.prompt,
                   gj.extra_data, gj.outputs)

    @classmethod
    def of_row(cls, row: Dict[str, Any]) -> "Unfinished":
        body = row["body"]
        return cls(row["prompt_id"], row["number"], row["owner"] or "default", row["client_id"], row["state"] == "running",
                   row["created"], body.get("prompt"), body.get("extra_data"), body.get("outputs"))

    def queue_item(self) -> List[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class Listing:
    """The lists of ``book`` (one gateway) or, with ``shared`` (replicas), of the store.

    ComfyUI's page reads ``/queue`` and ``/history`` again on every status frame, so many pages
    ask at once: on replicas one read of the store serves every request for ``SHARED_TTL``
    seconds (``clock``), unless this replica's queue changed meanwhile (another replica's
    change reaches it within a heartbeat, as a status frame)."""

    def __init__(self, book: JobBook, keeper: Keeper, *, shared: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._book = book
        self._keeper = keeper
        self._shared = shared  # a SharedQueue: replicas
        self.clock = clock
        self._reads: Dict[Any, Tuple[float, int, "asyncio.Future[Any]"]] = {}

    async def _read(self, key: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)`` read from the store, or the same read made less than ``SHARED_TTL``
        seconds ago (or still under way) with no change of this replica's queue since."""
        now, version = self.clock(), self._book.changes
        hit = self._reads.get(key)
        if hit is None or hit[1] != version or now - hit[0] >= SHARED_TTL:
            if len(self._reads) >= MAX_READS:
                self._reads = {k: v for k, v in self._reads.items() if now - v[0] < SHARED_TTL and v[1] == version}
            hit = self._reads[key] = (now, version, asyncio.ensure_future(self._keeper.read(fn, *args, **kwargs)))
        try:
            return cast(T, await asyncio.shield(hit[2]))
        except Exception:
            if self._reads.get(key) is hit:
                del self._reads[key]  # a failed read is not served again
            raise

    async def _every(self, fresh: bool = False) -> List[Unfinished]:
        """Every unfinished prompt, by number (``fresh``: never a shared earlier read)."""
        if self._shared is None:
            jobs = [Unfinished.of_job(gj) for gj in list(self._book.active.values())
                    if gj.state not in ("done", "told") and not gj.deleted]
        else:
            rows = await (self._keeper.read(self._shared.queue_rows) if fresh else self._read("queue", self._shared.queue_rows))
            jobs = [Unfinished.of_row(r) for r in rows]
        jobs.sort(key=lambda u: (u.number, u.created))
        return jobs

    async def unfinished(self, viewer: User, *, fresh: bool = False) -> List[Unfinished]:
        """The viewer's unfinished prompts (an admin: all), by number; ``fresh`` for a request
        that acts on them (an interrupt must see a prompt that started a moment ago)."""
        return [u for u in await self._every(fresh) if viewer.sees(u.user)]

    async def unfinished_one(self, prompt_id: str, viewer: User) -> Optional[Unfinished]:
        """One unfinished prompt the viewer sees, or None."""
        gj = self._book.active.get(prompt_id)
        if gj is not None and gj.state not in ("done", "told") and not gj.deleted:
            found: Optional[Unfinished] = Unfinished.of_job(gj)
        elif self._shared is not None:
            row = await self._keeper.read(self._shared.queue_row, prompt_id)
            found = Unfinished.of_row(row) if row is not None else None
        else:
            found = None
        return found if found is not None and viewer.sees(found.user) else None

    async def queue(self, viewer: User) -> Dict[str, Any]:
        """``GET /queue``: the viewer's prompts; others' only counted (``queue_others``), so
        that positions stay meaningful without showing their prompts."""
        every = await self._every()
        running = [u for u in every if u.running]
        pending = [u for u in every if not u.running]
        out: Dict[str, Any] = {
            "queue_running": [u.queue_item() for u in running if viewer.sees(u.user)],
            "queue_pending": [u.queue_item() for u in pending if viewer.sees(u.user)],
        }
        hidden_running = len(running) - len(out["queue_running"])
        hidden_pending = len(pending) - len(out["queue_pending"])
        if hidden_running or hidden_pending:
            out["queue_others"] = {"running": hidden_running, "pending": hidden_pending}
        return out

    async def history(self, viewer: User, prompt_id: Optional[str] = None, max_items: Optional[int] = None, offset: int = -1) -> Dict[str, Any]:
        """``GET /history`` and ``GET /history/{id}`` in ComfyUI's shapes."""
        if self._shared is None:
            return await self._book.history_json(viewer, prompt_id=prompt_id, max_items=max_items, offset=offset)
        store = self._keeper.store
        if prompt_id is not None:
            row = await self._keeper.read(store.history_row, prompt_id)
            return {prompt_id: row["item"]} if row is not None and viewer.sees(row["owner"] or "default") else {}
        owner = None if viewer.admin else viewer.name
        return dict(await self._read(("history", max_items, offset, owner), store.history_page, max_items, offset, owner=owner))

    async def post_history(self, body: Dict[str, Any], viewer: User) -> None:
        """``POST /history``: ``clear`` and ``delete`` of the viewer's items."""
        if self._shared is None:
            await self._book.post_history(body, viewer)
            return
        store = self._keeper.store
        gone: List[str] = []
        if body.get("clear"):
            owner = None if viewer.admin else viewer.name
            gone += [pid for pid, _ in await self._keeper.read(store.history_page, None, 0, owner=owner)]
        if isinstance(body.get("delete"), list):
            for pid in body["delete"]:
                row = await self._keeper.read(store.history_row, pid) if isinstance(pid, str) else None
                if row is not None and viewer.sees(row["owner"] or "default"):
                    gone.append(pid)
        if gone:
            self._book.history.delete(gone, viewer)
            await self._keeper.run(store.delete_history, sorted(set(gone)))
            self._reads.clear()
