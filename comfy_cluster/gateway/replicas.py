"""``ReplicaLink``: this gateway as one replica of a service sharing a PostgreSQL database.

Two threads of its own (blocking psycopg, as the library's threads are): the *heartbeat*
writes this replica's heartbeat every second, reads the service's queue length (the status
frames' ``queue_remaining``) and takes over the prompts of replicas whose heartbeat stopped;
the *listener* receives ``NOTIFY``: client frames for the sockets held here (and word that
another replica told a client a prompt's end), wake-ups of the claimer, and cancels of
prompts this replica follows. Claims run on the group commit of the state store whenever the
servers have room (a prompt posted here while they have room and nothing waits is held at
once, with no claim). See :class:`~comfy_cluster.state.shared.SharedQueue` for the database side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ..state import PromptRow
from ..state.shared import CHANNEL_CANCEL, CHANNEL_EVENTS, CHANNEL_QUEUE, SharedQueue
from .auth import User
from .book import JobBook
from .durable import Keeper
from .relay import Relay
from .restore import take_up
from .uploads import UploadStore

__all__ = ["ReplicaLink"]

log = logging.getLogger(__name__)

HEARTBEAT = 1.0
ADMIN = User("admin", admin=True, owner="admin")  # who a cancel from another replica acts as
CLAIM_EVERY = 0.5


class ReplicaLink:
    """Runs replica ``shared.replica`` of the service (see the module docstring)."""

    def __init__(self, shared: SharedQueue, keeper: Keeper, book: JobBook, relay: Relay, uploads: UploadStore,
                 loop: asyncio.AbstractEventLoop, servers: Sequence[str], free_slots: Callable[[], int]) -> None:
        self.shared = shared
        self._keeper = keeper
        self._book = book
        self._relay = relay
        self._uploads = uploads
        self._loop = loop
        self._servers = list(servers)
        self._free_slots = free_slots
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._claiming = False
        self._claim_again = False
        self._posting = 0  # posted prompts this replica may hold at once, being committed
        self.taken_over: List[Tuple[str, int]] = []  # (dead replica, prompts): for logs and tests
        relay.publish = self._publish
        relay.record_told = self._record_told
        relay.check_told = self._check_told
        relay.publish_live = self._publish_live
        relay.check_ended = self._check_ended

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.shared.beat()
        for name, target in (("heartbeat", self._heartbeat), ("listen", self._listen)):
            thread = threading.Thread(target=target, name=f"comfy-cluster-gateway-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._loop.call_soon_threadsafe(self.claim_soon)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        try:
            self.shared.leave()
        except Exception as exc:  # noqa: BLE001 - the others find it dead a few seconds later
            log.warning("replica %s: could not sign off: %s", self.shared.replica, exc)

    # -- threads ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        ticks = 0
        while not self._stop.wait(HEARTBEAT):
            try:
                self.shared.beat()
                self._on_loop(self._remaining, self.shared.unfinished_count())
                for dead, rows in self.shared.take_over():
                    log.warning("replica %s: replica %s is dead; taking over its %d prompt(s)", self.shared.replica, dead, len(rows))
                    self._on_loop(self._take_up, dead, rows)
                ticks += 1
                if ticks % 60 == 0:
                    self.shared.drop_old_frames()
            except Exception as exc:  # noqa: BLE001 - the database may be back at the next beat
                log.error("replica %s: heartbeat failed: %s", self.shared.replica, exc)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.shared.store.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
                    for channel in (CHANNEL_EVENTS, CHANNEL_QUEUE, CHANNEL_CANCEL):
                        conn.execute(f"LISTEN {channel}")
                    self._on_loop(self.claim_soon)  # anything posted while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=CLAIM_EVERY):
                            self._on_notify(note.channel, note.payload)
                        self._on_loop(self.claim_soon)
            except Exception as exc:  # noqa: BLE001 - reconnect; frames missed meanwhile are in /history
                log.error("replica %s: listening failed: %s", self.shared.replica, exc)
                self._stop.wait(1.0)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CHANNEL_QUEUE:
            self._on_loop(self.claim_soon)
            return
        data = json.loads(payload)
        if channel == CHANNEL_CANCEL:
            if data.get("replica") == self.shared.replica:
                self._on_loop(self._cancel_here, data["prompt_id"])
        elif channel == CHANNEL_EVENTS and data.get("from") != self.shared.replica:
            key = (str(data.get("user") or ""), str(data["client_id"]))
            pid = data.get("prompt_id")
            pid = pid if isinstance(pid, str) else None
            if data.get("told") and pid is not None:
                self._on_loop(self._relay.told_elsewhere, key, pid)
                return
            live = data.get("live")
            if isinstance(live, list):
                self._on_loop(self._relay.live_elsewhere, key, [p for p in live if isinstance(p, str)])
                return
            frame = data.get("frame")
            if frame is None and data.get("id") is not None:
                frame = self.shared.frame(int(data["id"]))
            if isinstance(frame, str):
                self._on_loop(self._relay.deliver, key, frame, bool(data.get("keep")), pid, str(data.get("role") or ""))

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            log.debug("gateway stopped: replica message dropped")

    # -- on the loop --------------------------------------------------------------------------

    def _publish(self, key: Tuple[str, str], frame: str, keep: bool, prompt_id: Optional[str], role: str) -> None:
        self._keeper.later(self.shared.publish, key[1], frame, user=key[0], keep=keep, prompt_id=prompt_id, role=role)

    def _publish_live(self, key: Tuple[str, str], prompt_ids: List[str]) -> None:
        self._keeper.later(self.shared.publish_live, key[1], prompt_ids, user=key[0])

    async def _record_told(self, key: Tuple[str, str], prompt_id: str) -> None:
        await self._keeper.run(self.shared.publish_told, key[1], prompt_id, user=key[0])

    async def _check_told(self, key: Tuple[str, str], prompt_ids: List[str]) -> List[str]:
        return await self._keeper.read(self.shared.told, key[1], prompt_ids, user=key[0])

    async def _check_ended(self, prompt_ids: List[str]) -> List[str]:
        return await self._keeper.read(self.shared.ended, prompt_ids)

    def _remaining(self, count: int) -> None:
        """The service's queue length, for the status frames of every socket held here."""
        if count != self._book.shared_remaining:
            self._book.shared_remaining = count
            self._book.queue_changed()

    def _cancel_here(self, prompt_id: str) -> None:
        """Another replica was asked to cancel a prompt held here: a pending one leaves the
        queue, a running one is stopped (the job API's cancel)."""
        self._book.cancel_by_id(prompt_id, ADMIN)

    def _take_up(self, dead: str, rows: List[PromptRow]) -> None:
        self.taken_over.append((dead, len(rows)))
        self._loop.create_task(self._adopt(dead, rows))

    async def _adopt(self, dead: str, rows: List[PromptRow]) -> None:
        # The servers send the events of the dead replica's copies to its pool's clientId:
        # this replica follows them under that id (nobody else listens there now).
        client_id = await self._keeper.read(self.shared.store.fact, f"client_id:{dead}")
        await take_up(self._keeper, self._uploads, self._book, rows, self._servers, client_id=client_id, keep=True)

    def claim_soon(self) -> None:
        """Claim waiting prompts if the servers have room (one claim at a time)."""
        if self._stop.is_set():
            return
        if self._claiming:
            self._claim_again = True
            return
        self._claiming = True
        self._loop.create_task(self._claim())

    async def _claim(self) -> None:
        try:
            while True:
                self._claim_again = False
                n = self._free_slots()
                if n > 0:
                    rows = await self._keeper.run(self.shared.claim, n)
                    if rows:
                        await take_up(self._keeper, self._uploads, self._book, rows, self._servers)
                        self._claim_again = True
                if not self._claim_again:
                    return
        except Exception as exc:  # noqa: BLE001 - tried again at the next wake-up
            log.error("replica %s: claiming failed: %s", self.shared.replica, exc)
        finally:
            self._claiming = False

    async def post(self, row: PromptRow) -> bool:
        """Store a posted prompt (committed on return). True: this replica holds it (its
        servers have room and no prompt waited): the caller runs it at once, with no claim
        round trip. False: it is in the one queue, every replica woken to claim it."""
        take = self._free_slots() - self._posting > 0
        self._posting += take
        try:
            return await self._keeper.run(self.shared.post, row, take)
        finally:
            self._posting -= take

    async def cancel(self, prompt_id: str) -> bool:
        """Cancel a prompt this replica does not follow: True if it was waiting or running."""
        return await self._keeper.run(self.shared.cancel, prompt_id) != "unknown"
