"""``Store``: the gateway's state in a database (SQLAlchemy Core; SQLite or PostgreSQL).

Every method is blocking and thread-safe: the gateway never calls them on its event loop.
Writes go through the store's group commit (:mod:`comfy_cluster.state.group`): each is
atomic and returns once committed, and writes asked at the same time share one commit
(``group.submit(store.finish, ...)`` queues one without waiting). Posted prompts have a
lane of their own (:data:`POSTS`), so that answering a POST never waits behind the commits
of running jobs. On SQLite
(one gateway process) transactions are serialized by a lock, so a busy database never
fails a write.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from . import schema as t
from . import statements as q
from .engine import make_engine, migrate
from .group import MAIN, GroupCommit, Refused, batched
from .pipeline import Pipeline, Sent
from .urls import safe_url

__all__ = ["Store", "PromptRow", "FileKey", "Fenced"]

FileKey = Tuple[str, str, str]  # (type, subfolder, filename)

#: The lane of posted prompts (new rows only: they never wait for a running job's writes).
POSTS = "posts"
#: Lanes of posted prompts on PostgreSQL (SQLite has one writer at a time anyway).
POST_LANES = 3


class Fenced(Refused):
    """The prompt is no longer this replica's (another took it over, or it was deleted):
    nothing was written, and this replica must not act on it."""


@dataclass
class PromptRow:
    """One unfinished prompt as stored: ``body`` holds prompt, extra_data, outputs, workflow;
    ``inputs`` maps node ids to ``(digest, name)`` of the uploads it was bound to;
    ``attempts`` lists ``(attempt_id, server, phase)`` of its copies, oldest first."""

    prompt_id: str
    number: float
    owner: Optional[str]
    client_id: str
    body: Dict[str, Any]
    state: str = "waiting"
    cancel: bool = False
    created: float = 0.0
    started: Optional[float] = None
    inputs: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    attempts: List[Tuple[str, str, str]] = field(default_factory=list)


class Store:
    """The gateway's state at ``url`` (migrated to the newest schema when opened)."""

    def __init__(self, url: str, *, clock: Any = time.time, lazy_delay: float = 0.5) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self._clock = clock
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock()
        #: Each attempt's prompt, for its lazy end (skipped when the prompt's end is in the
        #: same commit). Written and read on the thread committing.
        self.attempt_prompt: Dict[str, str] = {}
        migrate(self.engine)
        # The group commit's own connections, not tested with a round trip before each
        # commit: a write that fails on a dropped one is tried again on a fresh one.
        self._write_engine: Engine = self.engine if self._sqlite else make_engine(url, ping=False)
        # Every write below goes through one of them (see the module docstring).
        # Posted prompts are new rows, in no order among themselves: on PostgreSQL several
        # lanes commit them at the same time (each on a connection of its own).
        posts = 1 if self._sqlite else POST_LANES
        self._lanes: Dict[str, List[GroupCommit]] = {
            MAIN: [GroupCommit(self._group_transaction, lazy_delay=lazy_delay)],
            POSTS: [GroupCommit(self._group_transaction, name=f"comfy-cluster-state-posts-{i}") for i in range(posts)]}

    def __repr__(self) -> str:
        return f"Store({safe_url(self.url)!r})"

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def lane(self, name: str) -> GroupCommit:
        """The group commit of lane ``name`` (see :mod:`comfy_cluster.state.group`); of
        several, the least busy."""
        return min(self._lanes[name], key=lambda g: g.load)

    @property
    def group(self) -> GroupCommit:
        """The main lane: every write but posted prompts."""
        return self._lanes[MAIN][0]

    def on_flush(self, key: str, flush: Any) -> None:
        """:meth:`GroupCommit.on_flush` on every lane."""
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.on_flush(key, flush)

    def flush(self) -> None:
        """Return once every write queued so far is done."""
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.flush()

    def close(self) -> None:
        """Commit the writes queued so far, then close the connections."""
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.close()
        self.engine.dispose()
        self._write_engine.dispose()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction (committed on exit, rolled back on an exception)."""
        if self._sqlite:
            with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            with self.engine.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def _group_transaction(self) -> Iterator[Connection]:
        if self._sqlite:
            with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            with self._write_engine.begin() as conn:
                yield conn

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads."""
        with self.engine.connect() as conn:
            yield conn

    # -- facts --------------------------------------------------------------------------------

    @batched
    def fact(self, conn: Connection, key: str, make: Any = None) -> Optional[str]:
        """A stored fact; with ``make`` (a callable), made and stored when missing."""
        value = conn.execute(sa.select(t.meta.c.value).where(t.meta.c.key == key)).scalar()
        if value is None and make is not None:
            value = str(make())
            conn.execute(t.meta.insert().values(key=key, value=value))
        return value

    def client_id(self, replica: str = "default") -> str:
        """The websocket clientId of this gateway's pool: the same after a restart, so the
        servers send the events of jobs it posted before to it again."""
        value = self.fact(f"client_id:{replica}", make=lambda: uuid.uuid4().hex)
        assert value is not None
        return value

    # -- prompts ------------------------------------------------------------------------------

    @batched(lane=POSTS)
    def add_prompt(self, conn: Connection, row: PromptRow) -> None:
        """A posted prompt."""
        self.insert_prompt(conn, row)

    def insert_prompt(self, conn: Connection, row: PromptRow, replica: Optional[str] = None, *, take: bool = False) -> Optional[str]:
        """Insert ``row`` (in ``conn``'s transaction) held by ``replica`` (None: by no
        replica; ``take``: by ``replica`` only if no prompt waits for a replica, those go
        first); returns the replica that holds it."""
        now = self._clock()
        values = dict(prompt_id=row.prompt_id, number=row.number, owner=row.owner, client_id=row.client_id,
                      body=json.dumps(row.body), state=row.state, cancel=row.cancel, created=row.created or now, updated=now)
        with Pipeline(conn) as send:  # BEGIN and the row in one round trip on PostgreSQL
            if take:
                held = send(q.INSERT_PROMPT_TAKE, dict(values, holder=replica), columns=q.PROMPT_COLUMNS)
            else:
                held = send(q.INSERT_PROMPT, dict(values, replica=replica), columns=(*q.PROMPT_COLUMNS, "replica"))
            if row.inputs:
                for node, (d, n) in row.inputs.items():
                    send(q.INSERT_INPUT, {"prompt_id": row.prompt_id, "node": node, "digest": d, "name": n}, columns=q.INPUT_COLUMNS)
        return held.scalar()

    @batched(lazy=True, about=lambda _s, prompt_id, *_a, **_k: prompt_id)  # restated: restarts ask the servers
    def set_state(self, conn: Connection, prompt_id: str, state: str, *, started: Optional[float] = None) -> None:
        values = {"pid": prompt_id, "state": state, "now": self._clock(), "started": started}
        conn.execute(q.SET_STATE if started is None else q.SET_STATE_STARTED, values)

    @batched
    def request_cancel(self, conn: Connection, prompt_id: str) -> None:
        conn.execute(t.prompts.update().where(t.prompts.c.prompt_id == prompt_id).values(cancel=True, updated=self._clock()))

    @batched(about=lambda _s, prompt_id: prompt_id, ends=True)
    def delete_prompt(self, conn: Connection, prompt_id: str) -> None:
        """A prompt deleted before it ran: no history (as ComfyUI)."""
        self.forget_prompt(conn, prompt_id)

    def forget_prompt(self, conn: Connection, prompt_id: str) -> None:
        """Remove an unfinished prompt and what it holds (in ``conn``'s transaction)."""
        conn.execute(t.prompts.delete().where(t.prompts.c.prompt_id == prompt_id))
        with Pipeline(conn) as send:
            inputs = self._send_forget(send, prompt_id)
        self._drop_inputs_bytes(conn, inputs)

    @staticmethod
    def _send_forget(send: Pipeline, prompt_id: str) -> Sent:
        """Send the deletes of a prompt's inputs and attempts; the inputs' digests come back."""
        inputs = send(q.DELETE_INPUTS, {"pid": prompt_id})
        send(q.DELETE_ATTEMPTS, {"pid": prompt_id})
        return inputs

    def _drop_inputs_bytes(self, conn: Connection, inputs: Sent) -> None:
        digests = inputs.scalars()
        if digests:  # only the bytes it was bound to can have become unused
            self._drop_unused_blobs(conn, list(set(digests)))

    def unfinished(self, replica: Any = ...) -> List[PromptRow]:
        """Every prompt not finished (``replica`` given: only the ones it holds), oldest
        first, with its inputs and attempts."""
        where = sa.true() if replica is ... else (t.prompts.c.replica.is_(None) if replica is None else t.prompts.c.replica == replica)
        with self.reading() as conn:
            return self.prompt_rows(conn, where)

    @staticmethod
    def prompt_rows(conn: Connection, where: Any) -> List[PromptRow]:
        """The prompts matching ``where``, with their inputs and attempts (in ``conn``)."""
        rows = conn.execute(sa.select(t.prompts).where(where).order_by(t.prompts.c.created, t.prompts.c.number)).mappings().all()
        out = {r["prompt_id"]: PromptRow(
            prompt_id=r["prompt_id"], number=r["number"], owner=r["owner"], client_id=r["client_id"],
            body=json.loads(r["body"]), state=r["state"], cancel=bool(r["cancel"]), created=r["created"], started=r["started"],
        ) for r in rows}
        ids = list(out)
        for chunk in range(0, len(ids), 500):
            part = ids[chunk:chunk + 500]
            for i in conn.execute(sa.select(t.prompt_inputs).where(t.prompt_inputs.c.prompt_id.in_(part))).mappings():
                out[i["prompt_id"]].inputs[i["node"]] = (i["digest"], i["name"])
            q = sa.select(t.attempts).where(t.attempts.c.prompt_id.in_(part)).order_by(t.attempts.c.created)
            for a in conn.execute(q).mappings():
                out[a["prompt_id"]].attempts.append((a["attempt_id"], a["server"], a["phase"]))
        return list(out.values())

    # -- the attempt ledger -------------------------------------------------------------------

    @batched
    def reserve_attempt(self, conn: Connection, attempt_id: str, prompt_id: str, server: str, replica: Optional[str] = None) -> None:
        """Recorded before the attempt's POST (so a crash after it still knows the copy).
        Raises :class:`Fenced` when ``replica`` no longer holds the prompt."""
        # One statement: the row is inserted only while the prompt is ours, and the prompt's
        # row stays locked until the commit (a take-over waits, then sees this attempt).
        values = {"pid": prompt_id, "attempt_id": attempt_id, "server": server, "replica": replica, "created": self._clock()}
        with Pipeline(conn) as send:  # BEGIN and the row in one round trip on PostgreSQL
            reserved = send(q.RESERVE if self._sqlite else q.RESERVE_LOCKED, values)
        if reserved.first() is None:
            raise Fenced(f"prompt {prompt_id} is not held by replica {replica}")
        if len(self.attempt_prompt) > 100_000:  # ends never noted (a crash of the caller): forget them
            self.attempt_prompt.clear()
        self.attempt_prompt[attempt_id] = prompt_id

    @batched(lazy=True, wait=False, about=lambda s, attempt_id: s.attempt_prompt.pop(attempt_id, None))
    def end_attempt(self, conn: Connection, attempt_id: str) -> None:
        """The copy's end on its server is confirmed. The row stays until its prompt has
        finished: a crash between this and the prompt's end finds the copy's result on its
        server (by this id) rather than running the prompt again. Returns at once: lazy,
        committed with the next write someone waits for (restarts follow a prompt's newest
        copy, ended or not, so nothing may wait for this row)."""
        conn.execute(q.END_ATTEMPT, {"aid": attempt_id})

    # -- history ------------------------------------------------------------------------------

    @batched(about=lambda _s, prompt_id, *_a, **_k: prompt_id, ends=True)
    def finish(self, conn: Connection, prompt_id: str, status: str, item: Dict[str, Any], files: Sequence[Tuple[FileKey, str]],
               *, owner: Optional[str], client_id: str, created: float, started: Optional[float], keep: int,
               replica: Optional[str] = None) -> None:
        """The prompt's end: its history item and output files recorded, the prompt gone from
        the queue, the history trimmed to its newest ``keep`` items. Atomic.
        Raises :class:`Fenced` (nothing written) when ``replica`` no longer holds it."""
        # One round trip on PostgreSQL (see .pipeline): the statements go together, behind
        # a savepoint that undoes them when the prompt turns out not to be ours.
        with Pipeline(conn, fence=True) as send:
            # Out of the queue first: no row deleted means not ours (and nothing written).
            taken = send(q.TAKE_OUT, {"pid": prompt_id, "replica": replica})
            if taken.known and taken.first() is None:
                raise Fenced(f"prompt {prompt_id} is not held by replica {replica}")
            send(q.DELETE_HISTORY_ITEM, {"pid": prompt_id})
            send(q.INSERT_HISTORY, {"prompt_id": prompt_id, "owner": owner, "client_id": client_id, "status": status,
                                    "item": json.dumps(item), "created": created, "started": started, "ended": self._clock()},
                 columns=q.HISTORY_COLUMNS)
            self._send_files(send, prompt_id, files)
            inputs = self._send_forget(send, prompt_id)  # its row went with TAKE_OUT
            # The newest ``keep`` items stay: one walk down the seq index (not a count of all).
            cut = send(q.HISTORY_CUT, {"keep": keep})
        if taken.first() is None:
            send.undo()
            raise Fenced(f"prompt {prompt_id} is not held by replica {replica}")
        self._drop_inputs_bytes(conn, inputs)
        if cut.scalar() is not None:
            self._delete_history(conn, t.history.c.seq <= cut.scalar())

    def _delete_history(self, conn: Connection, where: Any) -> None:
        gone = [r[0] for r in conn.execute(sa.select(t.history.c.prompt_id).where(where))]
        conn.execute(t.history.delete().where(where))
        for chunk in range(0, len(gone), 500):
            conn.execute(t.files.delete().where(t.files.c.prompt_id.in_(gone[chunk:chunk + 500])))

    def history_item(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        with self.reading() as conn:
            text = conn.execute(sa.select(t.history.c.item).where(t.history.c.prompt_id == prompt_id)).scalar()
        return json.loads(text) if text is not None else None

    def history_page(self, max_items: Optional[int] = None, offset: int = -1, *, owner: Optional[str] = None) -> List[Tuple[str, Dict[str, Any]]]:
        """``(prompt_id, item)`` oldest first, as ComfyUI's ``/history?max_items=&offset=``
        (a negative offset with ``max_items``: the newest ``max_items``); ``owner`` given:
        only that user's items (an item without an owner is ``"default"``'s)."""
        where = sa.true() if owner is None else sa.func.coalesce(t.history.c.owner, "default") == owner
        with self.reading() as conn:
            if offset < 0 and max_items is not None:
                total = conn.execute(sa.select(sa.func.count()).select_from(t.history).where(where)).scalar() or 0
                offset = max(0, total - max_items)
            q = sa.select(t.history.c.prompt_id, t.history.c.item).where(where).order_by(t.history.c.seq).offset(max(0, offset))
            if max_items is not None:
                q = q.limit(max_items)
            rows = conn.execute(q).all()
        return [(r[0], json.loads(r[1])) for r in rows]

    def history_rows(self, *, statuses: Optional[Sequence[str]] = None, newest_first: bool = True,
                     offset: int = 0, limit: Optional[int] = None) -> Tuple[int, List[Dict[str, Any]]]:
        """Finished prompts for the job API, by creation time: ``(total, rows)``, each
        row's ``item`` parsed."""
        where = t.history.c.status.in_(list(statuses)) if statuses is not None else sa.true()
        order = (t.history.c.created.desc(), t.history.c.seq.desc()) if newest_first else (t.history.c.created, t.history.c.seq)
        with self.reading() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(t.history).where(where)).scalar() or 0
            q = sa.select(t.history).where(where).order_by(*order).offset(offset)
            if limit is not None:
                q = q.limit(limit)
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["item"] = json.loads(r["item"])
        return total, rows

    def history_row(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        with self.reading() as conn:
            row = conn.execute(sa.select(t.history).where(t.history.c.prompt_id == prompt_id)).mappings().first()
        if row is None:
            return None
        out = dict(row)
        out["item"] = json.loads(out["item"])
        return out

    @batched
    def delete_history(self, conn: Connection, prompt_ids: Sequence[str]) -> None:
        self._delete_history(conn, t.history.c.prompt_id.in_(list(prompt_ids)))

    @batched
    def clear_history(self, conn: Connection) -> None:
        conn.execute(t.history.delete())
        conn.execute(t.files.delete())

    # -- output files -------------------------------------------------------------------------

    @batched(lazy=True, about=lambda _s, prompt_id, *_a, **_k: prompt_id)  # the end records every file again
    def note_files(self, conn: Connection, prompt_id: str, files: Sequence[Tuple[FileKey, str]]) -> None:
        """Output files of a running prompt (``/view`` works before it has ended)."""
        self.record_files(conn, prompt_id, files)

    def record_files(self, conn: Connection, prompt_id: str, files: Sequence[Tuple[FileKey, str]]) -> None:
        """Upsert ``files`` (in ``conn``'s transaction): two servers may make files of one
        name, and two replicas may record them at once; the later one wins, neither fails."""
        with Pipeline(conn) as send:
            self._send_files(send, prompt_id, files)

    def _send_files(self, send: Pipeline, prompt_id: str, files: Sequence[Tuple[FileKey, str]]) -> None:
        for (kind, sub, name), server in files:
            send(q.UPSERT_FILE[self.dialect], {"type": kind, "subfolder": sub, "filename": name, "server": server,
                                               "prompt_id": prompt_id}, columns=q.FILE_COLUMNS)

    def file_server(self, key: FileKey) -> Optional[str]:
        kind, sub, name = key
        with self.reading() as conn:
            return conn.execute(sa.select(t.files.c.server).where(
                sa.and_(t.files.c.type == kind, t.files.c.subfolder == sub, t.files.c.filename == name))).scalar()

    # -- uploads ------------------------------------------------------------------------------

    def put_upload(self, key: Tuple[str, str, str], digest: str, data: bytes) -> None:
        """The current file under ``key`` is ``data`` (its bytes kept once per content)."""
        kind, sub, name = key
        with self.transaction() as conn:
            if conn.execute(sa.select(t.blobs.c.digest).where(t.blobs.c.digest == digest)).first() is None:
                conn.execute(t.blobs.insert().values(digest=digest, size=len(data), data=data))
            conn.execute(t.uploads.delete().where(sa.and_(t.uploads.c.type == kind, t.uploads.c.subfolder == sub, t.uploads.c.name == name)))
            conn.execute(t.uploads.insert().values(type=kind, subfolder=sub, name=name, digest=digest, size=len(data), created=self._clock()))
            self._drop_unused_blobs(conn)

    def put_upload_file(self, key: Tuple[str, str, str], digest: str, path: str, chunk: int = 1 << 20) -> None:
        """As :meth:`put_upload`, the bytes read from ``path`` in chunks (never whole in memory)."""
        kind, sub, name = key
        with self.transaction() as conn:
            if conn.execute(sa.select(t.blobs.c.digest).where(t.blobs.c.digest == digest)).first() is None:
                size = 0
                with open(path, "rb") as fh:
                    for seq, part in enumerate(iter(lambda: fh.read(chunk), b"")):
                        conn.execute(t.blob_chunks.insert().values(digest=digest, seq=seq, data=part))
                        size += len(part)
                conn.execute(t.blobs.insert().values(digest=digest, size=size, data=b""))
            else:
                size = int(conn.execute(sa.select(t.blobs.c.size).where(t.blobs.c.digest == digest)).scalar() or 0)
            conn.execute(t.uploads.delete().where(sa.and_(t.uploads.c.type == kind, t.uploads.c.subfolder == sub, t.uploads.c.name == name)))
            conn.execute(t.uploads.insert().values(type=kind, subfolder=sub, name=name, digest=digest, size=size, created=self._clock()))
            self._drop_unused_blobs(conn)

    def blob_to_file(self, digest: str, path: str) -> bool:
        """Write an upload's bytes to ``path`` chunk by chunk; False when the store has none."""
        with self.reading() as conn:
            row = conn.execute(sa.select(t.blobs.c.data).where(t.blobs.c.digest == digest)).first()
            if row is None:
                return False
            with open(path, "wb") as fh:
                fh.write(bytes(row[0]))
                q = sa.select(t.blob_chunks.c.data).where(t.blob_chunks.c.digest == digest).order_by(t.blob_chunks.c.seq)
                for (part,) in conn.execute(q):
                    fh.write(bytes(part))
        return True

    @batched
    def drop_upload(self, conn: Connection, key: Tuple[str, str, str]) -> None:
        kind, sub, name = key
        conn.execute(t.uploads.delete().where(sa.and_(t.uploads.c.type == kind, t.uploads.c.subfolder == sub, t.uploads.c.name == name)))
        self._drop_unused_blobs(conn)

    def uploads(self) -> List[Tuple[Tuple[str, str, str], str, int]]:
        """The upload index, oldest first: ``(key, digest, size)``."""
        with self.reading() as conn:
            rows = conn.execute(sa.select(t.uploads).order_by(t.uploads.c.created)).mappings().all()
        return [((r["type"], r["subfolder"], r["name"]), r["digest"], r["size"]) for r in rows]

    def blob(self, digest: str) -> Optional[bytes]:
        """An upload's bytes (whole: for small files; see :meth:`blob_to_file`)."""
        with self.reading() as conn:
            data = conn.execute(sa.select(t.blobs.c.data).where(t.blobs.c.digest == digest)).scalar()
            if data is None:
                return None
            parts = conn.execute(sa.select(t.blob_chunks.c.data).where(t.blob_chunks.c.digest == digest).order_by(t.blob_chunks.c.seq)).scalars().all()
        return bytes(data) + b"".join(bytes(p) for p in parts)

    @staticmethod
    def _drop_unused_blobs(conn: Connection, digests: Optional[List[str]] = None) -> None:
        """Delete upload bytes nothing names any more (``digests``: only among these)."""
        used = sa.union(sa.select(t.uploads.c.digest), sa.select(t.prompt_inputs.c.digest)).subquery()
        where: Any = t.blobs.c.digest.not_in(sa.select(used.c.digest))
        if digests is not None:
            where = sa.and_(t.blobs.c.digest.in_(digests), where)
        conn.execute(t.blobs.delete().where(where))
        chunks: Any = t.blob_chunks.c.digest.not_in(sa.select(t.blobs.c.digest))
        if digests is not None:
            chunks = sa.and_(t.blob_chunks.c.digest.in_(digests), chunks)
        conn.execute(t.blob_chunks.delete().where(chunks))
