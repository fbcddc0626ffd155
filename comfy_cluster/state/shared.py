"""``SharedQueue``: replicas of the gateway on one PostgreSQL database as one service.

* **One queue.** A posted prompt is a row nobody holds; a replica with room *claims* the next
  ones (``FOR UPDATE SKIP LOCKED``: two replicas never claim the same row), the client with
  the fewest prompts held first (fair share across replicas), then by number.
* **Heartbeats.** Each replica writes its heartbeat every second; one older than
  ``dead_after`` seconds is dead, and the first replica to see it takes over its prompts
  (each row is taken by one replica only) and follows their copies on the servers by
  prompt id.
* **Events.** A client's frames are published with ``NOTIFY`` (frames above the payload
  limit go through ``cc_frames``); the replica that holds the client's socket sends them.

Blocking and thread-safe, like :class:`~comfy_cluster.state.Store`; claims, cancels, frames and
wake-ups share the store's group commit.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import sqlalchemy as sa

from . import schema as t
from .group import GroupCommit, batched, defer
from .store import POSTS, PromptRow, Store

__all__ = ["SharedQueue", "CHANNEL_EVENTS", "CHANNEL_QUEUE", "CHANNEL_CANCEL", "pool_client_id"]

CHANNEL_EVENTS = "cc_events"
CHANNEL_QUEUE = "cc_queue"
CHANNEL_CANCEL = "cc_cancel"
#: NOTIFY payloads must stay under 8000 bytes; larger frames go through a table.
MAX_PAYLOAD = 7000


class SharedQueue:
    """The shared queue, heartbeats and events of replica ``replica`` in ``store``."""

    def __init__(self, store: Store, replica: str, url: str, *, dead_after: float = 3.0, clock: Any = time.time) -> None:
        if store.dialect != "postgresql":
            raise ValueError("replicas share a PostgreSQL database (SQLite serves one gateway)")
        self.store = store
        self.replica = replica
        self.url = url
        self.dead_after = dead_after
        self._clock = clock
        self._frames = itertools.count()
        store.on_flush(CHANNEL_EVENTS, _notify_all)
        store.on_flush(CHANNEL_QUEUE, _wake_all)

    @property
    def group(self) -> GroupCommit:
        """The store's main lane (frames are sent with its commits)."""
        return self.store.group

    def lane(self, name: str) -> GroupCommit:
        """The store's lanes: this queue's writes share their transactions."""
        return self.store.lane(name)

    # -- heartbeats and take-over -------------------------------------------------------------

    def beat(self) -> None:
        """Write this replica's heartbeat (registering it on the first call)."""
        now = self._clock()
        with self.store.transaction() as conn:
            done = conn.execute(t.replicas.update().where(t.replicas.c.replica == self.replica).values(heartbeat=now, url=self.url))
            if not done.rowcount:
                conn.execute(t.replicas.insert().values(replica=self.replica, url=self.url, heartbeat=now))

    def leave(self) -> None:
        """This replica stops (its prompts stay its own until it comes back or is taken over)."""
        with self.store.transaction() as conn:
            conn.execute(t.replicas.update().where(t.replicas.c.replica == self.replica).values(heartbeat=0.0))

    def take_over(self) -> List[Tuple[str, List[PromptRow]]]:
        """Prompts of replicas found dead, now held by this one: ``[(dead replica, rows)]``."""
        cutoff = self._clock() - self.dead_after
        out: List[Tuple[str, List[PromptRow]]] = []
        with self.store.transaction() as conn:
            dead = conn.execute(
                sa.select(t.replicas.c.replica).where(sa.and_(t.replicas.c.heartbeat < cutoff, t.replicas.c.replica != self.replica))
                .with_for_update(skip_locked=True)).scalars().all()
            for name in dead:
                conn.execute(t.replicas.delete().where(t.replicas.c.replica == name))
                ids = conn.execute(t.prompts.update().where(t.prompts.c.replica == name)
                                   .values(replica=self.replica, updated=self._clock()).returning(t.prompts.c.prompt_id)).scalars().all()
                if ids:
                    out.append((name, self.store.prompt_rows(conn, t.prompts.c.prompt_id.in_(list(ids)))))
        return out

    # -- the queue ----------------------------------------------------------------------------

    @batched
    def claim(self, conn: Any, n: int) -> List[PromptRow]:
        """Up to ``n`` waiting prompts, now held by this replica (fair share, then number)."""
        if n <= 0:
            return []
        p = t.prompts.alias("p")
        held = (sa.select(sa.func.count()).select_from(t.prompts)
                .where(sa.and_(t.prompts.c.client_id == p.c.client_id, t.prompts.c.replica.is_not(None))).scalar_subquery())
        ids = conn.execute(
            sa.select(p.c.prompt_id).where(sa.and_(p.c.replica.is_(None), p.c.state == "waiting"))
            .order_by(held, p.c.number, p.c.created).limit(n).with_for_update(skip_locked=True, of=p)).scalars().all()
        if not ids:
            return []
        conn.execute(t.prompts.update().where(t.prompts.c.prompt_id.in_(ids)).values(replica=self.replica, state="submitted", updated=self._clock()))
        rows = self.store.prompt_rows(conn, t.prompts.c.prompt_id.in_(ids))
        order = {pid: i for i, pid in enumerate(ids)}
        return sorted(rows, key=lambda r: order[r.prompt_id])

    def waiting(self) -> int:
        """Prompts nobody holds yet."""
        with self.store.reading() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.prompts)
                                    .where(sa.and_(t.prompts.c.replica.is_(None), t.prompts.c.state == "waiting"))).scalar() or 0)

    def unfinished_count(self) -> int:
        """Unfinished prompts of the whole service (waiting, or held by any replica)."""
        with self.store.reading() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(t.prompts)).scalar() or 0)

    def queue_rows(self) -> List[Dict[str, Any]]:
        """Every unfinished prompt (all replicas), for ``/queue`` and the job API."""
        with self.store.reading() as conn:
            rows = conn.execute(sa.select(t.prompts).order_by(t.prompts.c.number)).mappings().all()
        return [dict(r, body=json.loads(r["body"])) for r in rows]

    def queue_row(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        """One unfinished prompt (any replica's), as :meth:`queue_rows` gives them; None when
        it is not in the queue."""
        with self.store.reading() as conn:
            row = conn.execute(sa.select(t.prompts).where(t.prompts.c.prompt_id == prompt_id)).mappings().first()
        return dict(row, body=json.loads(row["body"])) if row is not None else None

    def held_per_replica(self) -> Dict[str, int]:
        """Unfinished prompts each live replica holds."""
        with self.store.reading() as conn:
            live = conn.execute(sa.select(t.replicas.c.replica)).scalars().all()
            counts: Dict[Any, Any] = dict(conn.execute(sa.select(t.prompts.c.replica, sa.func.count()).where(t.prompts.c.replica.is_not(None))
                                       .group_by(t.prompts.c.replica)).all())
        return {name: int(counts.get(name, 0)) for name in live}

    @batched
    def cancel(self, conn: Any, prompt_id: str) -> str:
        """Cancel a prompt wherever it is: ``"deleted"`` (nobody held it: gone, no history),
        ``"told"`` (its replica is told to stop it), ``"unknown"`` (finished or never posted)."""
        row = conn.execute(sa.select(t.prompts.c.replica, t.prompts.c.state).where(t.prompts.c.prompt_id == prompt_id)
                           .with_for_update()).first()
        if row is None:
            return "unknown"
        if row[0] is None:
            self.store.forget_prompt(conn, prompt_id)
            return "deleted"
        conn.execute(t.prompts.update().where(t.prompts.c.prompt_id == prompt_id).values(cancel=True, updated=self._clock()))
        conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL_CANCEL, "p": json.dumps({"replica": row[0], "prompt_id": prompt_id})})
        return "told"

    # -- events -------------------------------------------------------------------------------

    @batched
    def publish(self, conn: Any, client_id: str, frame: str, *, user: str = "", keep: bool = False, prompt_id: Optional[str] = None,
                role: str = "") -> None:
        """A client's frame for the replica holding its socket (``keep``: kept there for the
        client's next socket when it has none; ``prompt_id`` and ``role``: what the frame is
        of, for the dedupe of ends). Sent when its transaction commits."""
        # A number of its own: PostgreSQL delivers equal payloads of one transaction once.
        head = {"from": self.replica, "n": next(self._frames), "client_id": client_id, "user": user, "keep": keep,
                "prompt_id": prompt_id, "role": role}
        payload = json.dumps(dict(head, frame=frame))
        if len(payload.encode()) > MAX_PAYLOAD:
            fid = conn.execute(t.frames.insert().values(client_id=client_id, frame=frame, created=self._clock())
                               .returning(t.frames.c.id)).scalar()
            payload = json.dumps(dict(head, id=fid))
        defer(CHANNEL_EVENTS, payload)  # all of this commit's frames in one statement

    @batched
    def publish_told(self, conn: Any, client_id: str, prompt_id: str, *, user: str = "") -> None:
        """Record that ``prompt_id``'s end is being written to the client's socket here
        (committed before it is written), and tell the other replicas: they drop the copies
        of its frames they kept for the client."""
        payload = json.dumps({"from": self.replica, "n": next(self._frames), "client_id": client_id, "user": user,
                              "prompt_id": prompt_id, "told": True})
        exists = conn.execute(sa.select(t.told.c.prompt_id).where(sa.and_(
            t.told.c.user == user, t.told.c.client_id == client_id, t.told.c.prompt_id == prompt_id))).first()
        if exists is None:
            conn.execute(t.told.insert().values(user=user, client_id=client_id, prompt_id=prompt_id, created=self._clock()))
        defer(CHANNEL_EVENTS, payload)  # with this commit's frames, in order

    @batched
    def publish_live(self, conn: Any, client_id: str, prompt_ids: List[str], *, user: str = "") -> None:
        """Tell the other replicas that frames of ``prompt_ids`` kept for the client reached its
        socket here, which closed: they drop their copies and keep no more of them (nothing is
        stored: a replica that starts later holds no copies). As many notices as NOTIFY's
        payload bound needs."""
        head = {"from": self.replica, "n": 0, "client_id": client_id, "user": user, "live": []}
        room = MAX_PAYLOAD - len(json.dumps(head)) - 20  # the notice's number grows
        batch: List[str] = []
        size = 0
        for pid in prompt_ids:
            more = len(json.dumps(pid)) + 2
            if batch and size + more > room:
                defer(CHANNEL_EVENTS, json.dumps(dict(head, n=next(self._frames), live=batch)))
                batch, size = [], 0
            batch.append(pid)
            size += more
        if batch:
            defer(CHANNEL_EVENTS, json.dumps(dict(head, n=next(self._frames), live=batch)))

    def told(self, client_id: str, prompt_ids: List[str], *, user: str = "") -> List[str]:
        """Which of ``prompt_ids`` had their end written to the client already (any replica)."""
        with self.store.reading() as conn:
            return list(conn.execute(sa.select(t.told.c.prompt_id).where(sa.and_(
                t.told.c.user == user, t.told.c.client_id == client_id, t.told.c.prompt_id.in_(prompt_ids)))).scalars())

    def ended(self, prompt_ids: List[str]) -> List[str]:
        """Which of ``prompt_ids`` are out of the queue: ended (a prompt leaves it in the
        transaction that commits its history item) or deleted while waiting."""
        with self.store.reading() as conn:
            queued = set(conn.execute(sa.select(t.prompts.c.prompt_id).where(t.prompts.c.prompt_id.in_(prompt_ids))).scalars())
        return [pid for pid in prompt_ids if pid not in queued]

    def frame(self, frame_id: int) -> Optional[str]:
        with self.store.reading() as conn:
            return conn.execute(sa.select(t.frames.c.frame).where(t.frames.c.id == frame_id)).scalar()

    @batched(lane=POSTS)
    def post(self, conn: Any, row: PromptRow, take: bool) -> bool:
        """A posted prompt into the one queue; True when this replica holds it at once: it
        may ``take`` it (its servers have room) and no prompt waits for a replica (those go
        first). Otherwise every replica's claimer is woken (one NOTIFY per commit)."""
        held = self.store.insert_prompt(conn, row, self.replica if take else None, take=take) == self.replica
        if not held:
            defer(CHANNEL_QUEUE, None)
        return held

    @batched(lane=POSTS)
    def queue_changed(self, conn: Any) -> None:
        """Wake every replica's claimer (a prompt was posted, or room was made)."""
        conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": CHANNEL_QUEUE})

    def drop_old_frames(self, older_than: float = 600.0) -> None:
        """Forget large frames and told ends older than ``older_than`` seconds (a client that
        reconnects later reads ``/history``; replicas keep a client's frames in bounded memory)."""
        with self.store.transaction() as conn:
            conn.execute(t.frames.delete().where(t.frames.c.created < self._clock() - older_than))
            conn.execute(t.told.delete().where(t.told.c.created < self._clock() - older_than))


def _notify_all(conn: Any, payloads: List[str]) -> None:
    """``NOTIFY`` each frame on :data:`CHANNEL_EVENTS`, in order, in one statement."""
    # One JSON array (encoded in C) rather than a text[] parameter (escaped in Python).
    conn.execute(sa.text("SELECT pg_notify(:c, p) FROM json_array_elements_text(CAST(:ps AS json)) WITH ORDINALITY AS f(p, i) ORDER BY i"),
                 {"c": CHANNEL_EVENTS, "ps": json.dumps(payloads)})


def _wake_all(conn: Any, _items: List[Any]) -> None:
    """Wake every replica's claimer once for a commit's posted prompts."""
    conn.execute(sa.text("SELECT pg_notify(:c, '')"), {"c": CHANNEL_QUEUE})


def pool_client_id(store: Store, replica: str) -> str:
    """The websocket clientId of ``replica``'s pool: the one it had before a restart (the
    servers send the events of the copies it posted there), unless another replica follows
    copies posted under it now (it took them over while this one was down, and listens under
    that clientId): then a new one, kept from now on. A server keeps one socket per clientId:
    a restarted replica opening the old one would take those copies' events from their
    follower."""
    a, p = t.attempts, t.prompts
    with store.reading() as conn:
        followed = conn.execute(sa.select(a.c.attempt_id).select_from(a.join(p, a.c.prompt_id == p.c.prompt_id)).where(sa.and_(
            a.c.replica == replica, a.c.phase != "ended", p.c.replica.is_not(None), p.c.replica != replica)).limit(1)).first()
    if followed is not None:
        key = f"client_id:{replica}"
        with store.transaction() as conn:
            conn.execute(t.meta.delete().where(t.meta.c.key == key))
            conn.execute(t.meta.insert().values(key=key, value=uuid.uuid4().hex))
    return store.client_id(replica)
