"""The gateway's client websockets: one per (user, clientId), events written in order, in
bounded memory.

A clientId's stream belongs to the user who opened it: sockets and the frames kept for them
are keyed by ``(user name, clientId)``, so another user sending the same clientId gets a
stream of their own and never sees these events.

Events for a client with no open socket are kept only for the prompts the book asks to keep
(those posted while no socket of that client was open: clients such as ComfyUI-for-Nuke post
before their socket connects); the next socket gets them once. Once a socket of the client got
one of a prompt's frames, that prompt is live only: its later frames are not kept when the
socket closes (ComfyUI-for-Nuke closes its socket after a cancel and opens a new one for its
next run, which must not get the cancelled run's end). Replicas: when that socket closes, its
replica tells the others which prompts it got live (``publish_live``); they drop the copies they
kept and keep no more of them (:meth:`live_elsewhere`). A replica that dies tells nothing, so
the others go on keeping for its clients, which reconnect elsewhere. Before a socket opens on a
replica, the store says which of the prompts that went live on the client's earlier sockets
ended: nothing more of those goes to it (their end may reach this replica late: :meth:`settle`).
Binary preview frames are never kept: they are only worth something live.

Each client gets each prompt's end once (dedupe by prompt id): the first ``execution_success``/
``_error``/``_interrupted`` of a prompt for a client, then its ``executing`` null; any later
copy of them (a frame kept on several replicas, a job adopted after a failover) and any later
frame of that prompt is dropped, until an ``execution_start`` of that prompt_id (a client may
post the same prompt_id again once it ended). Replicas: an end that other replicas may have
kept a copy of is recorded in the store (``record_told``) before it is written to the socket,
and the others drop their copies; a replica checks the record before it replays kept ends to
a socket that opens (``check_told``), so the client may reconnect anywhere.

Memory: each socket's queue (an :class:`~.outbox.Outbox`) is bounded in bytes
(``queue_bytes``): a client that lags loses previews first, then its socket (code 1013, try
again later; it reconnects and reads ``/history``). Kept frames are bounded per client and in
all, in frames and bytes. Everything here runs on the gateway's loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple

from aiohttp import web

from . import outbox
from .outbox import CLOSE_TOO_SLOW, Gate, Key, Outbox
from .previews import with_metadata

__all__ = ["Relay", "Key", "ANY_SOCKET", "DEFAULT_QUEUE_BYTES", "CLOSE_TOO_SLOW"]

log = logging.getLogger(__name__)

#: A prompt's end (one per client) and the frame that closes it.
END_KINDS = ("execution_success", "execution_error", "execution_interrupted")
END, CLOSE, START = "end", "close", "start"
#: Prompts whose end a client got, remembered at most (the oldest are forgotten first): ends
#: come twice only around a reconnect, so the newest prompts are the ones that matter.
MAX_ENDS = 20_000
#: Prompts an open socket got live that other replicas may hold copies of, remembered at most
#: per client until it closes (the newest): told to the other replicas then.
MAX_SEEN = 1000
#: Bytes queued for one socket at most (settable: ``Gateway(ws_queue_bytes=)``).
DEFAULT_QUEUE_BYTES = 32 * 1024 * 1024
#: Frames kept for one client without a socket, clients kept at most, frames and bytes in all
#: (the oldest clients' frames go first): a script that posts without ever opening a socket
#: costs bounded memory.
MAX_KEPT_FRAMES = 5000
MAX_KEPT_CLIENTS = 1000
MAX_KEPT_TOTAL = 100_000
MAX_KEPT_BYTES = 64 * 1024 * 1024
#: ``Relay.send(to=)``'s default: whichever socket of the client is open when the frame is sent.
ANY_SOCKET: Any = object()


def role_of(kind: str, data: Dict[str, Any]) -> str:
    """``END`` for a prompt's end, ``CLOSE`` for the ``executing`` null after it, ``START`` for
    its ``execution_start``, else ``""``."""
    if kind in END_KINDS:
        return END
    if kind == "executing" and data.get("node") is None:
        return CLOSE
    if kind == "execution_start":
        return START
    return ""


def _remember(entries: "collections.OrderedDict[Any, Any]", key: Any, value: Any, bound: int) -> List[Any]:
    """``entries[key] = value`` as the newest entry; the oldest go past ``bound`` entries (their
    keys are returned)."""
    entries[key] = value
    entries.move_to_end(key)
    gone: List[Any] = []
    while len(entries) > bound:
        gone.append(entries.popitem(last=False)[0])
    return gone


async def _asked(what: str, answer: Awaitable[List[str]]) -> List[str]:
    """The store's answer to a question asked before a socket opens, or none (logged) when it
    fails or does not come within ``GATE_WAIT``: the socket opens anyway (it may then get an end
    twice, or a late end of a prompt that went live before, as without the question)."""
    failed = f"could not ask the store {what} before a socket opened (%s); opening it without the answer"
    return await outbox.within_gate_wait(answer, failed, [])


class _Marks:
    """``(key, prompt_id)`` pairs, the newest ``bound`` of them, also listed by key."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._order: "collections.OrderedDict[Tuple[Key, str], None]" = collections.OrderedDict()
        self._of: Dict[Key, Dict[str, None]] = {}

    def add(self, key: Key, prompt_id: str) -> None:
        self._of.setdefault(key, {})[prompt_id] = None
        for old, pid in _remember(self._order, (key, prompt_id), None, self.bound):
            of = self._of[old]
            del of[pid]
            if not of:
                del self._of[old]

    def __contains__(self, pair: object) -> bool:
        return pair in self._order

    def of(self, key: Key) -> List[str]:
        """``key``'s prompts."""
        return list(self._of.get(key, ()))


class _Kept:
    """Frames kept for one client without a socket: ``(frame, prompt_id, role)``."""

    def __init__(self) -> None:
        self.frames: Deque[Tuple[str, Optional[str], str]] = collections.deque()
        self.bytes = 0


class Relay:
    """Client sockets by (user, clientId), frames kept for clients not connected yet.

    ``publish(key, frame, keep, prompt_id, role)``, when set (replicas), is also given each
    JSON frame for a client whose socket is not here: the replica that holds it sends it
    (:meth:`deliver`). ``record_told(key, prompt_id)`` (a coroutine), when set, records that
    a prompt's end goes to a socket here before it is written, when other replicas may have
    kept a copy of it (they drop it: :meth:`told_elsewhere`)."""

    def __init__(self, queue_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        if queue_bytes < 64 * 1024:
            raise ValueError(f"ws_queue_bytes={queue_bytes}: give at least 65536 bytes")
        self.queue_bytes = queue_bytes
        #: Deliver a user's events to an anonymous socket of the same clientId when that user
        #: has none (a trusted network: ComfyUI's web page opens its socket without a header).
        self.anonymous_sees_named = False
        self.anonymous_name = "default"
        self.publish: Optional[Callable[[Key, str, bool, Optional[str], str], None]] = None
        self.record_told: Optional[Callable[[Key, str], Awaitable[Any]]] = None
        #: Replicas: which of these prompts' ends ``key`` got already (from the store).
        self.check_told: Optional[Callable[[Key, List[str]], Awaitable[List[str]]]] = None
        #: Replicas: tell the others that these prompts, kept for ``key``, reached its socket
        #: here (called when that socket closes).
        self.publish_live: Optional[Callable[[Key, List[str]], None]] = None
        #: Replicas: which of these prompts ended (are out of the store's queue).
        self.check_ended: Optional[Callable[[List[str]], Awaitable[List[str]]]] = None
        self._clients: Dict[Key, Outbox] = {}
        # (key, prompt_id) -> END (its end went to the client) or CLOSE (and its executing null)
        self._ends: "collections.OrderedDict[Tuple[Key, str], str]" = collections.OrderedDict()
        # (key, prompt_id) of prompts whose frames were to be kept for ``key`` and reached a socket
        # of it (here or on another replica): no longer kept (bounded as ``_ends``).
        self._live = _Marks(MAX_ENDS)
        # key -> prompts of ``_live`` that its socket here got (told to the others at its close)
        self._seen: Dict[Key, "collections.OrderedDict[str, None]"] = {}
        self._closing = False  # the gateway is stopping: its sockets die as with a crash
        self._kept: "collections.OrderedDict[Key, _Kept]" = collections.OrderedDict()
        self._kept_total = 0
        self._kept_bytes = 0
        self._with_metadata: Set[Key] = set()  # clients that asked for previews with metadata

    @property
    def connected(self) -> int:
        return len(self._clients)

    def is_connected(self, key: Key) -> bool:
        return self._client_for(key) is not None

    def socket_of(self, key: Key) -> Optional[object]:
        """The socket that gets ``key``'s events now (None when none is open here): given
        back as ``send(to=)``, a frame decided now goes to it and to no later socket."""
        return self._client_for(key)

    def attach(self, key: Key, ws: web.WebSocketResponse, first: Dict[str, Any], transport: Any = None) -> Outbox:
        """Register ``ws`` for ``key`` (a newer socket replaces an older one), queue the first
        frame and then whatever was kept for this client."""
        old = self._clients.pop(key, None)
        if old is not None:
            old.finish()
        client = Outbox(key, ws, transport, self.queue_bytes)
        self._clients[key] = client
        client.put(json.dumps(first))
        for frame, pid, role in self._take_kept(key):
            self._went_live(key, pid)
            self._put(client, key, frame, pid, role, copied=True)  # other replicas kept it too
        client.writer = asyncio.get_running_loop().create_task(client.write())
        return client

    def detach(self, client: Outbox) -> None:
        key = client.key
        if self._clients.get(key) is client:
            del self._clients[key]
            self._with_metadata.discard(key)
            seen = self._seen.pop(key, None)
            if seen and self.publish_live is not None and not self._closing:
                self.publish_live(key, list(seen))
        client.finish()

    def _client_for(self, key: Key) -> Optional[Outbox]:
        client = self._clients.get(key)
        if client is None and self.anonymous_sees_named and key[0] != self.anonymous_name:
            client = self._clients.get((self.anonymous_name, key[1]))
        return client

    def send(self, key: Key, kind: str, data: Dict[str, Any], *, keep: bool = False, to: Any = ANY_SOCKET) -> None:
        """A JSON event for one client; kept for its next socket when none is open and
        ``keep`` (a prompt posted while the client had no socket).

        ``to``: what :meth:`socket_of` answered when the gateway learnt of this event (an end
        is sent only once its history is committed): the frame goes to that socket only, so
        the wait for the commit never hands it to a socket opened meanwhile (a client that
        closed its socket after a cancel and opened a new one for its next run must not get
        the old run's end there). ``None``: no socket was open here then."""
        pid = data.get("prompt_id")
        pid = pid if isinstance(pid, str) else None
        role = role_of(kind, data)
        client = self._client_for(key)
        if to is not ANY_SOCKET and client is not to:
            log.debug("client %s: %s of prompt %s dropped: its socket changed since", key[1][:80], kind, pid)
            return
        if not self._admit(key, pid, role):
            return
        frame = json.dumps({"type": kind, "data": data})
        if client is not None:
            if keep:
                self._went_live(key, pid)
            self._put(client, key, frame, pid, role, copied=False)
            return
        keep = keep and not self.is_live(key, pid)
        if self.publish is not None and key[1]:
            self.publish(key, frame, keep, pid, role)
        if keep and key[1]:
            self._keep(key, frame, pid, role)

    def deliver(self, key: Key, frame: str, keep: bool, prompt_id: Optional[str] = None, role: str = "") -> None:
        """A frame another replica published: sent if the client's socket is here, else kept
        when ``keep``."""
        if not self._admit(key, prompt_id, role):
            return
        client = self._client_for(key)
        if client is not None:
            if keep:
                self._went_live(key, prompt_id)
            self._put(client, key, frame, prompt_id, role, copied=keep)  # keep: the others kept it too
        elif keep and key[1] and not self.is_live(key, prompt_id):
            self._keep(key, frame, prompt_id, role)

    def _put(self, client: Outbox, key: Key, frame: str, prompt_id: Optional[str], role: str, *, copied: bool) -> None:
        """Queue ``frame``; an end other replicas may hold a copy of (``copied``) waits until
        it is recorded as told."""
        if role == END and copied and prompt_id is not None and self.record_told is not None:
            client.gate(Gate(asyncio.ensure_future(self.record_told(key, prompt_id))))
        client.put(frame)

    async def settle(self, key: Key) -> None:
        """Before a socket for ``key`` opens (replicas; both read the store):

        - the kept frames of prompts whose end the client got already through another replica
          are dropped (the record is committed before such an end is written, so a client
          that saw it finds it recorded here);
        - nothing more of a prompt that went live on an earlier socket of the client (here or
          on another replica) and ended before this one opens goes to it. Its end may still be
          on its way here (another replica's notice, or the commit's callback of this one's
          book) when the client, having seen the end in ``/history``, opens its next socket:
          ComfyUI-for-Nuke would take it for its new run's end. One gateway decides this
          when the job ends (``send(to=)``); replicas ask the store, where the end is
          committed before anyone can see it."""
        kept = self._kept.get(key)
        ends = [pid for _, pid, role in kept.frames if role == END and pid is not None] if kept is not None else []
        if ends and self.check_told is not None:
            for pid in await _asked("which kept ends were told", self.check_told(key, ends)):
                self.told_elsewhere(key, pid)
        if self.check_ended is not None:
            unended = [pid for pid in self._live.of(key) if (key, pid) not in self._ends]
            if unended:
                for pid in await _asked("which live prompts ended", self.check_ended(unended)):
                    _remember(self._ends, (key, pid), CLOSE, MAX_ENDS)

    def _admit(self, key: Key, prompt_id: Optional[str], role: str) -> bool:
        """False for a frame of a prompt whose end ``key`` got already (its first end, then
        its ``executing`` null, pass; nothing after)."""
        if prompt_id is None:
            return True
        ends = self._ends
        state = ends.get((key, prompt_id))
        if role == START and state is not None:
            # A prompt_id the client sent again after its end (ComfyUI lets clients choose
            # them): a new run, with an end of its own.
            del ends[(key, prompt_id)]
            return True
        if state == CLOSE:
            return False
        if state == END:
            if role != CLOSE:
                return False
            ends[(key, prompt_id)] = CLOSE
            return True
        if role == END:
            _remember(ends, (key, prompt_id), END, MAX_ENDS)  # a new entry
        return True

    def is_live(self, key: Key, prompt_id: Optional[str]) -> bool:
        """Whether frames of ``prompt_id`` that were to be kept for ``key`` reached a socket of
        it (here, or on another replica that said so): its later frames are not kept."""
        return prompt_id is not None and (key, prompt_id) in self._live

    def _went_live(self, key: Key, prompt_id: Optional[str]) -> None:
        """A frame of ``prompt_id`` that was to be kept for ``key`` goes to its socket here."""
        if prompt_id is None or not key[1]:
            return
        self._live.add(key, prompt_id)
        seen = self._seen.setdefault(key, collections.OrderedDict())
        seen[prompt_id] = None
        if len(seen) > MAX_SEEN:
            seen.popitem(last=False)

    def live_elsewhere(self, key: Key, prompt_ids: List[str]) -> None:
        """These prompts' frames reached ``key``'s socket on another replica, which closed: the
        frames kept for them here are dropped and their later frames not kept (their live ones
        still go to a socket of ``key`` here, should the client open one)."""
        for prompt_id in prompt_ids:
            self._live.add(key, prompt_id)
            self._drop_kept(key, prompt_id)

    def told_elsewhere(self, key: Key, prompt_id: str) -> None:
        """``prompt_id``'s end went to ``key``'s socket (on another replica): nothing more of
        that prompt goes to that client from here (the frames kept for it are dropped)."""
        _remember(self._ends, (key, prompt_id), CLOSE, MAX_ENDS)
        self._drop_kept(key, prompt_id)

    def _drop_kept(self, key: Key, prompt_id: str) -> None:
        kept = self._kept.get(key)
        if kept is None:
            return
        left = collections.deque(f for f in kept.frames if f[1] != prompt_id)
        gone = len(kept.frames) - len(left)
        if gone:
            size = sum(len(f[0]) for f in left)
            self._kept_total -= gone
            self._kept_bytes -= kept.bytes - size
            kept.frames, kept.bytes = left, size

    def send_bytes(self, key: Key, frame: bytes) -> None:
        """A binary frame for one client (dropped when its socket is not open)."""
        client = self._client_for(key)
        if client is not None:
            client.put(frame)

    def want_metadata(self, key: Key) -> None:
        """``key``'s socket said ``supports_preview_metadata`` (ComfyUI's page does): its
        previews come as ComfyUI's PREVIEW_IMAGE_WITH_METADATA frames, until it closes."""
        if key in self._clients:
            self._with_metadata.add(key)

    def send_preview(self, key: Key, frame: bytes, prompt_id: str, node: Optional[str]) -> None:
        """A preview frame of ``node`` of ``prompt_id`` for one client, in the form it asked for."""
        client = self._client_for(key)
        if client is not None:
            client.put(with_metadata(frame, prompt_id, node) if client.key in self._with_metadata else frame)

    def _keep(self, key: Key, frame: str, prompt_id: Optional[str], role: str) -> None:
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = _Kept()
        kept.frames.append((frame, prompt_id, role))
        kept.bytes += len(frame)
        self._kept_total += 1
        self._kept_bytes += len(frame)
        # One client's kept frames must fit its socket's queue once it connects.
        while len(kept.frames) > MAX_KEPT_FRAMES or kept.bytes > self.queue_bytes // 2:
            old, _, _ = kept.frames.popleft()
            kept.bytes -= len(old)
            self._kept_total -= 1
            self._kept_bytes -= len(old)
        while len(self._kept) > 1 and (len(self._kept) > MAX_KEPT_CLIENTS or self._kept_total > MAX_KEPT_TOTAL or self._kept_bytes > MAX_KEPT_BYTES):
            _, dropped = self._kept.popitem(last=False)
            self._kept_total -= len(dropped.frames)
            self._kept_bytes -= dropped.bytes

    def _take_kept(self, key: Key) -> Deque[Tuple[str, Optional[str], str]]:
        kept = self._kept.pop(key, None)
        if kept is None:
            return collections.deque()
        self._kept_total -= len(kept.frames)
        self._kept_bytes -= kept.bytes
        return kept.frames

    def broadcast(self, kind: str, data: Dict[str, Any]) -> None:
        """A JSON event for every open socket (status frames)."""
        frame = json.dumps({"type": kind, "data": data})
        for client in list(self._clients.values()):
            client.put(frame)

    @property
    def kept_frames(self) -> int:
        """Frames kept for clients without a socket, in all."""
        return self._kept_total

    def dropped_previews(self, key: Key) -> Optional[int]:
        """Preview frames dropped for ``key``'s open socket so far (None when none is open)."""
        client = self._clients.get(key)
        return client.dropped_previews if client is not None else None

    @property
    def queued_bytes(self) -> int:
        """Bytes queued for open sockets, in all."""
        return sum(c.bytes for c in self._clients.values())

    async def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every socket's queue is written."""
        writers = [c.writer for c in self._clients.values() if c.writer is not None]
        for c in self._clients.values():
            c.finish()
        if writers:
            await asyncio.wait(writers, timeout=timeout)

    async def close(self) -> None:
        self._closing = True
        for client in list(self._clients.values()):
            client.finish()
            if client.writer is not None:
                client.writer.cancel()
            try:
                await asyncio.wait_for(client.ws.close(), outbox.CLOSE_WAIT)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                if client.transport is not None:
                    client.transport.abort()
        self._clients.clear()
        self._kept.clear()
        self._kept_total = 0
        self._kept_bytes = 0
