"""The gateway's jobs: its queue, its history, fair share, and the bridge to the pool.

A posted prompt becomes a :class:`GatewayJob` at once (with the client's ``prompt_id``). It
waits in the gateway until the pool has room, then is handed to ``pool.submit``; the pool
does late binding, the capability filter and failover. When several clients have jobs
waiting, the next slot goes to the client served least (fair share), not to the oldest job.

All state here lives on the gateway's event loop; the pool's callbacks (on library threads)
are marshalled onto it with ``call_soon_threadsafe``, so no lock is needed and events keep
their order. Every change that must outlive the process is written to the state store
through the :class:`~comfy_cluster.gateway.durable.Keeper`: a job's end is told to its client
only once its history item is committed, and each attempt is recorded before its POST.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..jobs import Job, JobEvent
from ..state import Store
from .auth import User
from .controls import Controls
from .durable import Keeper
from .gatewayjob import GatewayJob
from .mailbox import LoopMail
from .metrics import GatewayMetrics
from .history import DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_ITEMS, FileKey, History
from .messages import error_data, event_message, relabel, synthesized_history, terminal_message
from .relay import ANY_SOCKET, Key, Relay
from .uploads import Version

__all__ = ["GatewayJob", "JobBook"]  # GatewayJob lives in .gatewayjob

log = logging.getLogger(__name__)



class JobBook(Controls):
    """Queue, history and fair share of the gateway (loop thread only)."""

    def __init__(
        self,
        pool: Any,
        relay: Relay,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.Executor,
        *,
        capacity: Callable[[], int],
        release: Callable[[List[Version]], None],
        keeper: Keeper,
        metrics: Optional[GatewayMetrics] = None,
        history_items: int = DEFAULT_HISTORY_ITEMS,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self._pool = pool
        self._keeper = keeper
        self._store: Store = keeper.store
        self._metrics = metrics
        self._history_items = history_items
        self._relay = relay
        self._loop = loop
        self._mail = LoopMail(loop)  # the pool's callbacks, one wake-up of the loop per burst
        self._executor = executor
        self._capacity = capacity
        self._release = release
        self.active: Dict[str, GatewayJob] = {}
        #: Replicas: the whole service's unfinished prompts (read by the ReplicaLink).
        self.shared_remaining: Optional[int] = None
        self.changes = 0  # counts queue changes seen here (what was listed before is stale)
        self.history = History(history_items, history_bytes)
        self._waiting: Dict[str, Deque[GatewayJob]] = {}
        self._served: Dict[str, int] = {}
        self._owned: Dict[str, int] = {}  # unfinished jobs per owner (fair share forgets idle ones)
        self._in_pool = 0
        self._number = 0
        # A pool with fair share of its own (pool.submit(..., owner=...)) gets every job at
        # once and orders them itself; an older pool gets at most ``capacity()`` at a time
        # and the gateway does the fair share.
        self.pool_takes_owner = "owner" in inspect.signature(pool.submit).parameters

    # -- posting ------------------------------------------------------------------------------

    def next_number(self, front: bool) -> int:
        number = self._number
        self._number += 1
        return -number if front else number

    def add(self, gj: GatewayJob) -> None:
        """Accept a posted prompt (its ``user``, ``owner`` and ``keep`` already set; already
        in the store)."""
        if gj.keep and self._relay.is_connected(gj.key):
            # ``keep`` was decided when the POST came, before the awaits for the store: a
            # socket of the client that opened meanwhile sees this prompt live, as it would
            # had it opened after this call (``socket_opened``); a later socket must not get
            # its events (ComfyUI-for-Nuke closes its socket after a cancel).
            gj.keep = False
        self._number = max(self._number, int(abs(gj.number)) + 1)
        self.active[gj.prompt_id] = gj
        owner = gj.owner
        self._owned[owner] = self._owned.get(owner, 0) + 1
        self._served.setdefault(owner, 0)
        queue = self._waiting.setdefault(owner, collections.deque())
        if gj.number < 0:
            queue.appendleft(gj)
        else:
            queue.append(gj)
        self.queue_changed()
        self.pump()

    def socket_opened(self, key: Key) -> None:
        """A socket for ``key`` opened and got the kept events: from now on its prompts'
        events are live only (a later socket must not get them)."""
        for gj in self.active.values():
            if gj.keep and gj.key == key:
                gj.keep = False

    @property
    def remaining(self) -> int:
        return len(self.active) if self.shared_remaining is None else self.shared_remaining

    @property
    def files(self) -> Dict[FileKey, str]:
        """Which server holds each file a prompt made (for ``/view``)."""
        return self.history.files

    def status_data(self) -> Dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.remaining}}}

    def queue_changed(self) -> None:
        self.changes += 1
        self._relay.broadcast("status", self.status_data())

    def _send(self, gj: GatewayJob, kind: str, data: Dict[str, Any], to: Any = ANY_SOCKET) -> None:
        self._relay.send(gj.key, kind, data, keep=gj.keep, to=to)

    # -- fair share and the pool --------------------------------------------------------------

    def pump(self) -> None:
        """Hand waiting jobs to the pool while it has room; least-served owner first."""
        while self._in_pool < self._capacity():
            owners = [o for o, q in self._waiting.items() if q]
            if not owners:
                return
            owner = min(owners, key=lambda o: (self._served[o], self._waiting[o][0].number))
            gj = self._waiting[owner].popleft()
            self._served[owner] += 1
            self._in_pool += 1
            gj.state = "submitted"
            self._executor.submit(self._submit, gj)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (from a library thread), in order; ignored once it
        has closed."""
        self._mail.post(fn, *args)

    def _submit(self, gj: GatewayJob) -> None:
        """On an executor thread: ``pool.submit`` may probe servers."""
        call = self._call
        kwargs: Dict[str, Any] = {}
        if self.pool_takes_owner:
            kwargs["owner"] = gj.owner
        try:
            job = self._pool.submit(
                gj.workflow or gj.prompt, inputs=gj.inputs or None, on_event=lambda ev: call(self._on_event, gj, ev),
                on_attempt=self._attempt_recorder(gj), **kwargs)
        except Exception as exc:  # noqa: BLE001 - told to the client as the job's error
            call(self._submit_failed, gj, exc)
            return
        call(self._submitted, gj, job)
        job.add_done_callback(lambda j: call(self._on_done, gj, j))

    def _attempt_recorder(self, gj: GatewayJob) -> Callable[[str, str, str], None]:
        """The pool's ``on_attempt``: on the library thread, inline (before the POST)."""
        store, replica, metrics = self._store, self._keeper.replica, self._metrics

        def record(attempt_id: str, server: str, phase: str) -> None:
            if phase == "reserved":
                store.reserve_attempt(attempt_id, gj.prompt_id, server, replica)
                if metrics is not None:
                    metrics.attempt(server)
            else:
                store.end_attempt(attempt_id)

        return record

    def adopt(self, gj: GatewayJob, attempt_id: str, server: str, client_id: Optional[str] = None) -> None:
        """After a restart or a take-over: follow ``gj``'s copy ``attempt_id`` on ``server``
        (never post it again; ``client_id``: the dead replica's pool's, whose socket gets its
        events). The pool runs it afresh if that server does not hold it."""
        self._number = max(self._number, int(abs(gj.number)) + 1)
        self.active[gj.prompt_id] = gj
        owner = gj.owner
        self._owned[owner] = self._owned.get(owner, 0) + 1
        self._served[owner] = self._served.get(owner, 0) + 1
        self._waiting.setdefault(owner, collections.deque())
        self._in_pool += 1
        gj.state = "submitted"
        gj.server = server
        self._executor.submit(self._adopt, gj, attempt_id, server, client_id)

    def _adopt(self, gj: GatewayJob, attempt_id: str, server: str, client_id: Optional[str]) -> None:
        call = self._call
        kwargs: Dict[str, Any] = {"owner": gj.owner} if self.pool_takes_owner else {}
        if client_id is not None:
            kwargs["client_id"] = client_id
        try:
            job = self._pool.adopt(
                gj.workflow or gj.prompt, server, attempt_id, inputs=gj.inputs or None,
                on_event=lambda ev: call(self._on_event, gj, ev), on_attempt=self._attempt_recorder(gj), **kwargs)
        except Exception as exc:  # noqa: BLE001 - told to the client as the job's error
            call(self._submit_failed, gj, exc)
            return
        call(self._submitted, gj, job)
        job.add_done_callback(lambda j: call(self._on_done, gj, j))

    def _submitted(self, gj: GatewayJob, job: Job) -> None:
        gj.job = job
        if gj.cancel_requested:
            job.cancel()

    def _submit_failed(self, gj: GatewayJob, exc: BaseException) -> None:
        log.warning("prompt %s not accepted by the pool: %s", gj.prompt_id, exc)
        self._in_pool -= 1
        self._end(gj, "failed", None, exc)
        self.pump()

    def _on_event(self, gj: GatewayJob, event: JobEvent) -> None:
        if gj.state in ("done", "told") or gj.deleted:
            return
        if gj.backlog is not None:
            gj.backlog.append(event)
            return
        if event.kind == "retrying":
            if self._metrics is not None:
                self._metrics.moved(event.from_server)
            gj.server = event.to_server
            gj.record.reset()
            gj.nodes.reset()
            self._unblock(gj)
            return
        if event.kind == "started" and event.server:
            # A server runs one job at a time: if another of our jobs still shows running
            # there, its end is only not confirmed yet (an interrupt is reconciled from the
            # server). Hold this job's events until that end is told, so that clients see
            # jobs end and start in the order the server ran them.
            # An end waiting for its commit counts too: it is told after that commit.
            before = next(
                (o for o in self.active.values()
                 if o is not gj and o.server == event.server and (o.state == "running" or o.telling)),
                None,
            )
            if before is not None:
                gj.backlog = [event]
                before.blocked.append(gj)
                return
            gj.server = event.server
        gj.record.note(event, gj.prompt_id)
        if event.kind in ("executing", "progress"):
            gj.node = event.node
        if event.kind == "preview":
            data = getattr(event, "data", None)
            if isinstance(data, (bytes, bytearray)):
                self._relay.send_preview(gj.key, bytes(data), gj.prompt_id, gj.node)
            return
        if event.kind == "started":
            if gj.started:
                return  # a later attempt after a move: the client sees one job
            gj.started = True
            gj.state = "running"
            gj.started_at = time.time()
            self._keeper.later(self._store.set_state, gj.prompt_id, "running", started=gj.started_at)
            self.queue_changed()
        elif event.kind == "cached":
            if gj.cached_sent:
                return
            gj.cached_sent = True
        elif event.kind == "output" and event.server:
            keys = [(f.type, f.subfolder, f.filename) for f in event.files]
            self.history.note_files(gj.prompt_id, event.server, keys)
            self._keeper.later(self._store.note_files, gj.prompt_id, [(k, event.server) for k in keys])
        message = event_message(event, gj.prompt_id)
        if message is not None:
            for state in gj.nodes.before(event):
                self._send(gj, "progress_state", state)
            self._send(gj, *message)

    def _on_done(self, gj: GatewayJob, job: Job) -> None:
        self._in_pool -= 1
        self.pump()
        status = job.status
        result = job.result(timeout=0) if status == "succeeded" else None
        item = gj.record.item(gj.queue_item(), status)
        server = job.server.name if job.server is not None else None
        self._end(gj, status, item, job.exception(timeout=0), result=result, server=server)

    def _unblock(self, gj: GatewayJob) -> None:
        """Replay the held events of the jobs that waited for ``gj``'s end."""
        waiting, gj.blocked = gj.blocked, []
        for other in waiting:
            events, other.backlog = other.backlog or [], None
            for event in events:
                self._on_event(other, event)
            if other.deferred_end is not None and other.backlog is None:
                args, other.deferred_end = other.deferred_end, None
                self._end(*args[:4], result=args[4], server=args[5])

    def _end(self, gj: GatewayJob, status: str, item: Optional[Dict[str, Any]], error: Optional[BaseException], *, result: Any = None, server: Optional[str] = None) -> None:
        if gj.backlog is not None and not gj.deleted:
            gj.deferred_end = (gj, status, item, error, result, server)
            return
        told = gj.state == "told"  # the gateway stopped: the client already had its end
        gj.state = "done"
        self._release(gj.held)
        gj.held = []
        owner = gj.owner
        self._owned[owner] -= 1
        if self._owned[owner] <= 0 and not self._waiting.get(owner):
            self._owned.pop(owner, None)
            self._served.pop(owner, None)
            self._waiting.pop(owner, None)
        if gj.deleted:
            # Deleted while pending: no history, no events (as ComfyUI); the delete itself
            # told every socket the new queue length.
            self.active.pop(gj.prompt_id, None)
            self.history.forget_unrecorded(gj.prompt_id)
            self._keeper.later(self._store.delete_prompt, gj.prompt_id)
            self._unblock(gj)
            return
        if item is None:
            item = synthesized_history(gj.prompt_id, gj.queue_item(), status, result, error)
        if server:
            keys = [
                (str(f.get("type", "output")), str(f.get("subfolder", "")), str(f["filename"]))
                for out in item["outputs"].values() if isinstance(out, dict)
                for files in out.values() if isinstance(files, list)
                for f in files if isinstance(f, dict) and isinstance(f.get("filename"), str)
            ]
            self.history.note_files(gj.prompt_id, server, keys)
        files = [(key, self.history.files[key]) for key in self.history.files_of(gj.prompt_id) if key in self.history.files]
        # Told to the client only once committed: a client that saw the end finds it in
        # /history, and a crash before the commit finds the job unfinished (never twice).
        final = item
        # Whom the end goes to is decided now, as it would be without the wait for the commit
        # (a prompt whose events are kept goes on to whichever socket opens).
        to = ANY_SOCKET if gj.keep else self._relay.socket_of(gj.key)
        gj.telling = True
        self._keeper.later(
            self._store.finish, gj.prompt_id, status, item, files, owner=gj.user, client_id=gj.client_id,
            created=gj.created, started=gj.started_at, keep=self._history_items, replica=self._keeper.replica,
            then=lambda: self._told(gj, final, error, status, told, to), failed=lambda: self._not_told(gj),
        )

    def _not_told(self, gj: GatewayJob) -> None:
        """``gj``'s end could not be committed (logged): it stays unfinished in the store, to be
        taken up after a restart; the jobs held behind it go on."""
        gj.telling = False
        self._unblock(gj)

    def _told(self, gj: GatewayJob, item: Dict[str, Any], error: Optional[BaseException], status: str, told: bool,
              to: Any = ANY_SOCKET) -> None:
        """``gj``'s history item is committed: out of the queue, in /history, its end told
        (to the socket ``to`` that was the client's when the job ended)."""
        gj.telling = False
        self.active.pop(gj.prompt_id, None)
        self.history.add(gj.prompt_id, gj.user, item)
        if self._metrics is not None:
            self._metrics.job_ended(status, time.time() - gj.created)
        if not told:
            end = terminal_message(item)
            if end is None:
                end = ("execution_error", error_data(gj.prompt_id, error or RuntimeError(f"job {status}")))
            if end[0] == "execution_success":
                for state in gj.nodes.succeeded():
                    self._send(gj, "progress_state", state, to)
            self._send(gj, end[0], relabel(end[1], gj.prompt_id), to)
            self.queue_changed()
            self._send(gj, "executing", {"node": None, "prompt_id": gj.prompt_id}, to)
        self._unblock(gj)

    # -- stopping and history (the user's actions on jobs are in .controls; the lists in
    # .listing) ------------------------------------------------------------------------------

    def stop_all(self, reason: str) -> None:
        """The gateway is stopping: tell each client the end of each of its prompts (an
        ``execution_error`` naming ``reason``, then ``executing`` null), then cancel them all."""
        for queue in self._waiting.values():
            queue.clear()
        for gj in list(self.active.values()):
            if gj.deleted:
                continue
            error = RuntimeError(reason)
            data = error_data(gj.prompt_id, error)
            data["exception_type"] = "GatewayStopped"
            self._send(gj, "execution_error", data)
            self._send(gj, "executing", {"node": None, "prompt_id": gj.prompt_id})
            waiting = gj.state == "waiting"
            gj.state = "told"
            if waiting:
                self._end(gj, "cancelled", None, error)
            else:
                self.cancel(gj)
        self.queue_changed()

    async def history_json(self, viewer: User, prompt_id: Optional[str] = None, max_items: Optional[int] = None, offset: int = -1) -> Dict[str, Any]:
        """From memory (this gateway's, restored at start); one item another replica ended is
        read from the store."""
        if prompt_id is not None:
            found = self.history.get(prompt_id, viewer)
            if not found:
                row = await self.history_row(prompt_id)
                if row is not None and viewer.sees(row["owner"] or "default"):
                    found = {prompt_id: row["item"]}
            return found
        return self.history.page(viewer, max_items=max_items, offset=offset)

    async def post_history(self, body: Dict[str, Any], viewer: User) -> None:
        before = set(self.history.ids())
        if body.get("clear"):
            self.history.clear(viewer)
        if isinstance(body.get("delete"), list):
            self.history.delete(body["delete"], viewer)
        gone = sorted(before - set(self.history.ids()))
        if gone:
            await self._keeper.run(self._store.delete_history, gone)

    async def history_rows(self, **kwargs: Any) -> Tuple[int, List[Dict[str, Any]]]:
        """Finished prompts for the job API (see :meth:`Store.history_rows`)."""
        return await self._keeper.read(self._store.history_rows, **kwargs)

    async def history_row(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        return await self._keeper.read(self._store.history_row, prompt_id)
