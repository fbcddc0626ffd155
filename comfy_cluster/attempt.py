"""Attempts and the Ledger: every copy of a job the pool ever put on a server, until its end
there is confirmed.

An :class:`Attempt` is one try of one job on one server, with a client-chosen ``prompt_id``
made *before* ``POST /prompt``. It is reserved in the :class:`Ledger` before the POST (so a
POST that times out after the server took the job still leaves a record), and released only
once its end on that server is confirmed: it finished, or it was seen gone from the server's
queue after a delete or an interrupt. An attempt whose server went out of reach is
UNCONFIRMED: still counted there, and removed by :func:`remove_copies` once the server answers
again. Every "move elsewhere" and every cancel goes through this record.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Set

from .errors import ComfyClusterError
from .policy import follow_timeout

if TYPE_CHECKING:  # pragma: no cover
    from .client import ComfyClient
    from .jobs import Job, JobControl
    from .status import StatusMonitor

__all__ = ["Attempt", "AttemptPhase", "Ledger", "PostGate", "CopyRemover", "remove_copies", "cancel_on_server"]

log = logging.getLogger(__name__)

#: An attempt lost while its POST was in flight is released only after this many seconds: the
#: request may still be on its way into the server's queue.
POST_GRACE = 2.0


class AttemptPhase(str, enum.Enum):
    RESERVED = "reserved"  # counted on its server; nothing sent yet
    POSTED = "posted"  # POST /prompt sent (the server may hold it from now on)
    RUNNING = "running"  # seen executing
    ENDED = "ended"  # its end on the server is confirmed
    UNCONFIRMED = "unconfirmed"  # out of reach; clean-up removes the copy when it answers


class Attempt:
    """One try of a job (held by its ``control``) on ``server``. ``phase`` is written by its
    runner (and by the ledger on release); ``prompt_id`` is chosen here, before the POST."""

    __slots__ = ("control", "server", "number", "prompt_id", "phase", "lost_at", "posted", "cold", "client_id")

    def __init__(self, control: "JobControl", server: str, number: int, prompt_id: Optional[str] = None, client_id: Optional[str] = None) -> None:
        self.control = control
        self.server = server
        self.number = number
        self.prompt_id = prompt_id or str(uuid.uuid4())
        self.phase = AttemptPhase.RESERVED
        self.lost_at: Optional[float] = None
        self.posted = False
        self.cold = False  # set on reserve: it must load a model its server will not have
        # The websocket clientId it was posted under when not the pool's own (adopted from a
        # process that died): the server sends its events there.
        self.client_id = client_id

    @property
    def job(self) -> "Job":
        return self.control.job

    def __repr__(self) -> str:
        return f"<Attempt {self.prompt_id[:8]} #{self.number} on {self.server} {self.phase.value}>"


class Ledger:
    """The attempts per server that are not confirmed ended. Thread-safe (one lock, no I/O
    under it). ``reserve`` counts an attempt on its server before its POST; ``release``
    uncounts it once its end is confirmed; ``on_release`` is called after each release."""

    def __init__(self, servers: Sequence[str], monitor: "StatusMonitor", on_release: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._by_server: Dict[str, Dict[int, Attempt]] = {s: {} for s in servers}
        self._monitor = monitor
        self._on_release = on_release

    def reserve(self, attempt: Attempt) -> None:
        with self._lock:
            self._by_server[attempt.server][id(attempt)] = attempt
        attempt.cold = self._monitor.job_reserved(attempt.server, attempt.control.warmth)

    def release(self, attempt: Attempt, *, seconds: Optional[float] = None, ok: Optional[bool] = None) -> bool:
        """Its end on the server is confirmed; False if it was released already."""
        with self._lock:
            gone = self._by_server[attempt.server].pop(id(attempt), None)
            attempt.phase = AttemptPhase.ENDED
        if gone is None:
            return False
        attempt.control.note_attempt(attempt, "ended")
        self._monitor.job_released(attempt.server, seconds=seconds, ok=ok, cold=attempt.cold)
        self._on_release()
        return True

    def lose(self, attempt: Attempt, now: float) -> None:
        """Its server is out of reach: keep it (counted) until clean-up confirms its end."""
        with self._lock:
            if id(attempt) in self._by_server[attempt.server]:
                attempt.phase = AttemptPhase.UNCONFIRMED
                attempt.lost_at = now

    def unconfirmed(self, server: str) -> List[Attempt]:
        with self._lock:
            return [a for a in self._by_server[server].values() if a.phase is AttemptPhase.UNCONFIRMED]

    def live(self, server: Optional[str] = None) -> List[Attempt]:
        """Attempts not confirmed ended (on ``server``, or everywhere)."""
        with self._lock:
            names = [server] if server is not None else list(self._by_server)
            return [a for n in names for a in self._by_server[n].values()]

    def count(self, server: str) -> int:
        with self._lock:
            return len(self._by_server[server])


class PostGate:
    """Lets a batch cancel wait (briefly) for POSTs in flight: once every job is flagged and
    no POST is on its way, a runner deleting its cancelled siblings before an interrupt finds
    them all queued, so none starts in between. POSTs share the gate; a cancel waits at most
    ``patience`` seconds for them (cancel stays non-blocking in practice)."""

    def __init__(self, patience: float = 0.5) -> None:
        self._cond = threading.Condition()
        self._posting = 0
        self._patience = patience

    def __enter__(self) -> "PostGate":
        with self._cond:
            self._posting += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._posting -= 1
            if not self._posting:
                self._cond.notify_all()

    def quiet(self) -> None:
        """Wait until no POST is in flight (at most ``patience`` seconds)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._posting, timeout=self._patience)


def cancel_on_server(client: "ComfyClient", prompt_id: str, also_delete: Sequence[str] = ()) -> bool:
    """Delete ``prompt_id`` (and ``also_delete``: other cancelled jobs of ours there) from the
    pending queue, then interrupt it only if the queue shows it running at that moment (a
    server that ignores the id in /interrupt would stop whatever runs, another artist's job
    too). True when the queue no longer holds it.

    Raises :class:`ServerError` when the server cannot be reached (the caller retries).
    """
    client.delete_pending(list(dict.fromkeys([prompt_id, *also_delete])), timeout=follow_timeout(client.timeout[1]))
    running, pending = client.queue(timeout=follow_timeout(client.timeout[1]))
    if prompt_id in running:
        client.interrupt(prompt_id, timeout=follow_timeout(client.timeout[1]))
        return False
    return prompt_id not in pending


def remove_copies(
    client: "ComfyClient",
    ledger: Ledger,
    server: str,
    clock: Callable[[], float],
    *,
    closed: Optional[threading.Event] = None,
    patience: float = 10.0,
) -> int:
    """Remove the UNCONFIRMED attempts on ``server`` (delete, or interrupt if running now) and
    release each one seen gone from its queue. Returns how many were released.

    Runs on the probe executor, never on the dispatcher. Keeps trying for ``patience``
    seconds: a failed request (a 500, a reset, no answer) is retried after a moment, and an
    interrupted job takes a moment to leave; a lost POST gets ``POST_GRACE``. Whatever is
    still unconfirmed then stays in the ledger: the next probe that finds the server online
    runs this again.
    """
    released = 0
    deadline = time.monotonic() + patience
    pause = closed or threading.Event()
    while True:
        attempts = ledger.unconfirmed(server)
        if not attempts:
            return released
        try:
            client.delete_pending([a.prompt_id for a in attempts], timeout=follow_timeout(client.timeout[1]))
            running, pending = client.queue(timeout=follow_timeout(client.timeout[1]))
            for a in attempts:
                if a.prompt_id in running:
                    client.interrupt(a.prompt_id, timeout=follow_timeout(client.timeout[1]))
            running, pending = client.queue(timeout=follow_timeout(client.timeout[1]))
        except ComfyClusterError as exc:
            log.debug("clean-up on %s: %s", server, exc)
            if time.monotonic() >= deadline or pause.wait(0.25):
                return released
            continue
        now = clock()
        for a in attempts:
            there = a.prompt_id in running or a.prompt_id in pending
            young = a.posted and a.lost_at is not None and now - a.lost_at < POST_GRACE
            if not there and not young and ledger.release(a):
                released += 1
                log.info("removed the copy %s of a moved or cancelled job from %s", a.prompt_id, server)
        if not ledger.unconfirmed(server) or time.monotonic() >= deadline or pause.wait(0.2):
            return released


class CopyRemover:
    """Runs :func:`remove_copies` for a server on ``submit`` (the probe executor), at most one
    at a time per server; stops scheduling once ``closed`` is set."""

    def __init__(
        self,
        clients: "Mapping[str, ComfyClient]",
        ledger: Ledger,
        submit: Callable[..., object],
        clock: Callable[[], float],
        closed: threading.Event,
    ) -> None:
        self._clients = clients
        self._ledger = ledger
        self._submit = submit
        self._clock = clock
        self._closed = closed
        self._lock = threading.Lock()
        self._cleaning: Set[str] = set()

    def schedule(self, name: str) -> None:
        """Remove the unconfirmed copies on ``name`` soon (a no-op while one clean-up runs)."""
        with self._lock:
            if name in self._cleaning or self._closed.is_set():
                return
            self._cleaning.add(name)

        def clean() -> None:
            try:
                remove_copies(self._clients[name], self._ledger, name, self._clock, closed=self._closed)
            finally:
                with self._lock:
                    self._cleaning.discard(name)

        try:
            self._submit(clean)
        except RuntimeError:  # the executor is shut down: closing
            with self._lock:
                self._cleaning.discard(name)
