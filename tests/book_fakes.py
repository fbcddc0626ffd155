"""Fakes of what the gateway's job book is handed (tests/test_book*.py): a pool that records
what it is given and ends jobs when the test says, a relay that records each frame per socket, a
state store whose writes are recorded (and committed when the test says), an executor that runs
at once, and a harness that wires them to a JobBook on its own loop."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from comfy_cluster.errors import JobCancelled
from comfy_cluster.gateway.auth import User
from comfy_cluster.gateway.book import JobBook
from comfy_cluster.gateway.gatewayjob import GatewayJob
from comfy_cluster.gateway.relay import ANY_SOCKET
from comfy_cluster.reports import JobEvent

ALICE, BOB, ADMIN = User("alice", owner="alice"), User("bob", owner="bob"), User("root", admin=True, owner="root")
PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {}}}


class FakeJob:
    """What the book reads of a pool's Job."""

    def __init__(self) -> None:
        self.status = "pending"
        self.server: Any = None
        self.cancels = 0
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._done: List[Callable[[Any], None]] = []

    def cancel(self) -> bool:
        self.cancels += 1
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._done.append(fn)

    def result(self, timeout: Optional[float] = None) -> Any:
        if self.status != "succeeded":  # as Job.result: the job's error
            raise self._error or JobCancelled(f"job {self.status}")
        return self._result

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        return self._error

    def end(self, status: str, server: Optional[str] = None, *, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.status, self._result, self._error = status, result, error
        self.server = SimpleNamespace(name=server) if server else None
        for fn in self._done:
            fn(self)


class FakePool:
    """Records each submit/adopt with its arguments; ``refuse`` makes the next submit raise."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.refuse: Optional[BaseException] = None

    def _take(self, kind: str, **kwargs: Any) -> FakeJob:
        if self.refuse is not None:
            error, self.refuse = self.refuse, None
            raise error
        job = FakeJob()
        self.calls.append(dict(kwargs, kind=kind, job=job))
        return job

    def submit(self, workflow: Any, *, inputs: Any = None, on_event: Any = None, retries: int = 2, owner: Optional[str] = None,
               on_attempt: Any = None) -> FakeJob:
        return self._take("submit", workflow=workflow, inputs=inputs, on_event=on_event, owner=owner, on_attempt=on_attempt)

    def adopt(self, workflow: Any, server: str, prompt_id: str, *, inputs: Any = None, on_event: Any = None, owner: Optional[str] = None,
              on_attempt: Any = None, client_id: Optional[str] = None) -> FakeJob:
        return self._take("adopt", workflow=workflow, server=server, attempt=prompt_id, inputs=inputs, on_event=on_event, owner=owner,
                          on_attempt=on_attempt, client_id=client_id)


class OldPool(FakePool):
    """A pool without fair share of its own (no ``owner``)."""

    def submit(self, workflow: Any, *, inputs: Any = None, on_event: Any = None, retries: int = 2, on_attempt: Any = None) -> FakeJob:  # type: ignore[override]
        return self._take("submit", workflow=workflow, inputs=inputs, on_event=on_event, on_attempt=on_attempt, owner="(not given)")

    def adopt(self, workflow: Any, server: str, prompt_id: str, *, inputs: Any = None, on_event: Any = None,  # type: ignore[override]
              on_attempt: Any = None, client_id: Optional[str] = None) -> FakeJob:
        return self._take("adopt", workflow=workflow, server=server, attempt=prompt_id, inputs=inputs, on_event=on_event,
                          on_attempt=on_attempt, client_id=client_id, owner="(not given)")


class FakeRelay:
    """Records each frame; ``sockets[key]`` is the socket open for a client (None: none), and a
    frame sent ``to`` another socket than the one open is dropped, as the Relay does."""

    def __init__(self) -> None:
        self.frames: List[Tuple[Any, str, Dict[str, Any], bool]] = []
        self.broadcasts: List[Tuple[str, Dict[str, Any]]] = []
        self.previews: List[Tuple[Any, bytes, str, Optional[str]]] = []
        self.sockets: Dict[Any, Any] = {}

    def socket_of(self, key: Any) -> Any:
        return self.sockets.get(key)

    def is_connected(self, key: Any) -> bool:
        return self.sockets.get(key) is not None

    def send(self, key: Any, kind: str, data: Dict[str, Any], *, keep: bool = False, to: Any = ANY_SOCKET) -> None:
        if to is not ANY_SOCKET and to is not self.sockets.get(key):
            return
        self.frames.append((key, kind, data, keep))

    def broadcast(self, kind: str, data: Dict[str, Any]) -> None:
        self.broadcasts.append((kind, data))

    def send_preview(self, key: Any, frame: bytes, prompt_id: str, node: Optional[str]) -> None:
        self.previews.append((key, frame, prompt_id, node))


class FakeStore:
    """Each write recorded as (name, args, kwargs); reads answer from ``rows``."""

    def __init__(self) -> None:
        self.writes: List[Tuple[str, tuple, dict]] = []
        self.rows: Dict[str, Dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def write(*args: Any, **kwargs: Any) -> None:
            self.writes.append((name, args, kwargs))

        write.__name__ = name
        return write

    def history_row(self, prompt_id: str) -> Optional[Dict[str, Any]]:
        return self.rows.get(prompt_id)

    def history_rows(self, **kwargs: Any) -> Tuple[int, List[Dict[str, Any]]]:
        return len(self.rows), [dict(r, kwargs=kwargs) for r in self.rows.values()]

    def named(self, name: str) -> List[Tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.writes if n == name]


class FakeKeeper:
    """Writes in order; ``then`` runs once committed: at once, or at ``commit()`` while
    ``hold``; ``fail()`` makes the held writes fail instead (their ``failed`` runs)."""

    def __init__(self) -> None:
        self.store = FakeStore()
        self.replica = "replica-1"
        self.hold = False
        self._held: List[Tuple[Optional[Callable[[], None]], Optional[Callable[[], None]]]] = []

    def later(self, fn: Callable[..., Any], *args: Any, then: Optional[Callable[[], None]] = None,
              failed: Optional[Callable[[], None]] = None, **kwargs: Any) -> None:
        fn(*args, **kwargs)
        if then is not None or failed is not None:
            self._held.append((then, failed))
            if not self.hold:
                self.commit()

    def commit(self) -> None:
        held, self._held = self._held, []
        for then, _ in held:
            if then is not None:
                then()

    def fail(self) -> None:
        held, self._held = self._held, []
        for _, failed in held:
            if failed is not None:
                failed()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def read(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


class FakeMetrics:
    def __init__(self) -> None:
        self.seen: List[Tuple[str, Any]] = []

    def attempt(self, server: str) -> None:
        self.seen.append(("attempt", server))

    def moved(self, server: Optional[str]) -> None:
        self.seen.append(("moved", server))

    def job_ended(self, status: str, seconds: float) -> None:
        assert 0 <= seconds < 3600, seconds
        self.seen.append(("ended", status))


class Inline:
    """An executor that runs each task at once (on the loop's thread, like a fast pool)."""

    def __init__(self) -> None:
        self.deferred: Optional[List[Tuple[Callable[..., Any], tuple]]] = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.deferred is not None:
            self.deferred.append((fn, args))
        else:
            fn(*args)

    def run_deferred(self) -> None:
        tasks, self.deferred = self.deferred or [], None
        for fn, args in tasks:
            fn(*args)


class Harness:
    def __init__(self, pool: Optional[FakePool] = None, capacity: int = 1, **bounds: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool = pool or FakePool()
        self.relay = FakeRelay()
        self.keeper = FakeKeeper()
        self.store = self.keeper.store
        self.metrics = FakeMetrics()
        self.executor = Inline()
        self.capacity = capacity
        self.released: List[Any] = []
        self.book = JobBook(self.pool, self.relay, self.loop, self.executor, capacity=lambda: self.capacity,  # type: ignore[arg-type]
                            release=self.released.append, keeper=self.keeper, metrics=self.metrics, **bounds)  # type: ignore[arg-type]
        self.jobs: Dict[str, GatewayJob] = {}

    def close(self) -> None:
        self.loop.close()

    def settle(self) -> None:
        """Run what the pool's threads handed to the loop."""
        for _ in range(5):
            self.loop.run_until_complete(asyncio.sleep(0))

    def post(self, pid: str, user: User = ALICE, *, front: bool = False, client: str = "c1", keep: bool = False,
             workflow: Optional[Dict[str, Any]] = None, inputs: Optional[Dict[str, str]] = None, held: Any = ()) -> GatewayJob:
        gj = GatewayJob(pid, self.book.next_number(front), client, PROMPT, {"client_id": client}, ["1"], user=user.name,
                        owner=user.owner, keep=keep, workflow=workflow, inputs=dict(inputs or {}), held=list(held))
        self.jobs[pid] = gj
        self.book.add(gj)
        self.settle()
        return gj

    def call(self, pid: str) -> Dict[str, Any]:
        (call,) = [c for c in self.pool.calls if c["job"] is self.jobs[pid].job or c.get("pid") == pid]
        return call

    def handed(self) -> List[str]:
        """The prompt ids handed to the pool, in order."""
        by_job = {id(gj.job): pid for pid, gj in self.jobs.items()}
        return [by_job.get(id(c["job"]), "?") for c in self.pool.calls]

    def event(self, pid: str, kind: str, server: Optional[str] = "s1", **fields: Any) -> None:
        on_event = self.call(pid)["on_event"]
        on_event(JobEvent(kind, server, **fields))  # as the pool's thread does
        self.settle()

    def end(self, pid: str, status: str, server: Optional[str] = "s1", **kwargs: Any) -> None:
        job = self.jobs[pid].job
        assert job is not None
        job.end(status, server, **kwargs)
        self.settle()

    def frames(self, pid: str) -> List[Tuple[str, Dict[str, Any]]]:
        """What the prompt's socket got (kind, data), ``progress_state`` left out."""
        gj = self.jobs[pid]
        return [(kind, data) for key, kind, data, _ in self.relay.frames
                if key == gj.key and data.get("prompt_id") == pid and kind != "progress_state"]

    def kinds(self, pid: str) -> List[str]:
        return [k for k, _ in self.frames(pid)]



def adopt_copy(h: Harness, pid: str, user: User) -> None:
    h.jobs[pid] = GatewayJob(pid, h.book.next_number(False), "c1", PROMPT, {}, ["1"], user=user.name, owner=user.owner)
    h.book.adopt(h.jobs[pid], "att-" + pid, "s1")
    h.settle()


@pytest.fixture
def h() -> Any:
    harness = Harness()
    yield harness
    harness.close()


def remaining(h: Harness) -> int:
    kind, data = h.relay.broadcasts[-1]
    assert kind == "status"
    return data["status"]["exec_info"]["queue_remaining"]
