"""The part of a mock ComfyUI server that is not HTTP: queue, history, cache and execution.

It mirrors ComfyUI 0.3.64's ``PromptQueue``, ``PromptExecutor`` and ``prompt_worker``:

* the queue is a heap of ``(number, prompt_id, prompt, extra_data, outputs_to_execute)``;
  one job runs at a time, lowest ``number`` first (``front`` jobs get negative numbers);
* every queue change (put, get, done, delete, wipe) broadcasts a ``status`` frame;
* a job's events go to its ``client_id`` only (``progress``/``progress_state`` and
  ``execution_interrupted`` are broadcast when the job has no client id, as in ComfyUI);
* the output cache is keyed by each node's inputs, recursively, and keeps only the nodes of
  the last prompt (ComfyUI's "classic" cache), so an identical resubmission is fully cached.

The queue, history, cache and events live on the server's event loop thread: only the loop
changes them, and public inspection goes through ``lock`` so that test threads can read
consistent snapshots. A job's blocking work (its nodes' file reads and writes and image
encoding, the IS_CHANGED hashes of its cache keys) runs on one worker thread per server, as
ComfyUI runs prompts on its ``prompt_worker`` thread beside its aiohttp loop, so that HTTP and
the websocket keep answering while a node works. The job itself (its order, its simulated
sampling time, its events) is still driven by the loop, which awaits that work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import json
import logging
import re
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar

from .nodes import InterruptProcessing, NodeContext, NodeDef, NodeEnv
from .validation import full_type_name, is_link, validate_prompt

__all__ = ["Engine", "EventSink", "Execution", "MAXIMUM_HISTORY_SIZE", "SENSITIVE_EXTRA_DATA_KEYS", "UUID_RE", "json_error_body"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _now_ms() -> int:
    return int(time.time() * 1000)


def json_error_body(kind: str, message: str, details: str = "") -> Dict[str, Any]:
    """The 400 body of ``POST /prompt``: ``{"error": {...}, "node_errors": {}}``."""
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}


class EventSink:
    """Where the engine sends websocket events; implemented by the server."""

    def send(self, event: str, data: Dict[str, Any], sid: Optional[str]) -> None:
        """Send to the socket registered for ``sid``, or to every socket when sid is None."""
        raise NotImplementedError

    def send_binary(self, frame: bytes, sid: str) -> None:
        """Send a binary frame to the socket registered for ``sid`` (dropped without one)."""
        raise NotImplementedError


@dataclass
class Execution:
    """One time the worker took a prompt and ran it (a test's record, kept across restarts).

    ``inputs`` maps a LoadImage node id to ``(image name, sha256 hex of the bytes it read)``;
    ``outcome`` is None while it runs, then ``success``, ``error``, ``interrupted`` or
    ``abandoned`` (the server died under it)."""

    prompt_id: str
    client_id: Optional[str]
    prompt: Dict[str, Any]
    started: float
    inputs: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    outcome: Optional[str] = None


@dataclass
class _Plan:
    """What a job needs from its prompt before it runs, worked out on the worker thread
    (IS_CHANGED hashes input files, and input lists read the input folder)."""

    #: The cache key of each node.
    sigs: Dict[str, str]
    #: The IS_CHANGED answer of each node that has one and answered (part of its cache key).
    changed: Dict[str, Any]
    #: The names of each node's required and optional inputs, for nodes of a known type.
    inputs: Dict[str, List[str]]


@dataclass(order=True)
class _QueueEntry:
    number: float
    prompt_id: str
    seq: int
    item: List[Any] = field(compare=False)  # [number, prompt_id, prompt, extra_data, outputs]
    sensitive: Dict[str, Any] = field(compare=False, default_factory=dict)


def _format_value(value: Any) -> Any:
    """How ComfyUI shows a failing node's inputs (``current_inputs``)."""
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class _JobContext(NodeContext):
    """The NodeContext of one running job."""

    def __init__(self, engine: "Engine", job: "_Job") -> None:
        self._engine = engine
        self._job = job
        self.prompt_id = job.prompt_id
        self.prompt = job.prompt
        self.extra_data = job.extra_data
        self.env = engine.env
        self.node_id = ""

    async def sleep(self, seconds: float) -> None:
        await self._engine._interruptible_sleep(self._job, seconds)

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._engine.run_blocking(fn, *args)

    def progress(self, value: int, maximum: int) -> None:
        self.check_interrupted()
        self._job.progress_update(self.node_id, value, maximum)
        self._job.send(
            "progress",
            {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": self.node_id},
            broadcast_without_client=True,
        )

    def check_interrupted(self) -> None:
        if self._job.interrupted:
            raise InterruptProcessing("Processing interrupted")

    def record_input(self, name: str, digest: str) -> None:
        record = self._job.record
        if record is not None:
            with self._engine.lock:
                record.inputs[self.node_id] = (name, digest)

    def send_binary(self, frame: bytes) -> None:
        # ComfyUI sends previews to the running prompt's client only.
        if self._job.client_id is not None:
            self._engine.sink.send_binary(frame, self._job.client_id)


class _Job:
    """One execution of a queue entry."""

    def __init__(self, engine: "Engine", entry: _QueueEntry) -> None:
        self.engine = engine
        self.entry = entry
        self.prompt_id: str = entry.prompt_id
        self.prompt: Dict[str, Any] = entry.item[2]
        self.extra_data: Dict[str, Any] = dict(entry.item[3])
        self.extra_data.update(entry.sensitive)
        self.outputs: List[str] = list(entry.item[4])
        self.client_id: Optional[str] = self.extra_data.get("client_id")
        self.messages: List[List[Any]] = []
        self.interrupted = False
        self.waiters: Set["asyncio.Future[str]"] = set()
        self.progress_nodes: Dict[str, Dict[str, Any]] = {}
        self.record: Optional[Execution] = None

    def send(self, event: str, data: Dict[str, Any], broadcast_without_client: bool = False) -> None:
        if self.client_id is not None or broadcast_without_client:
            self.engine.sink.send(event, data, self.client_id)

    def add_message(self, event: str, data: Dict[str, Any], broadcast: bool) -> None:
        """ComfyUI's ``PromptExecutor.add_message``: timestamped, kept for the history."""
        data = dict(data, timestamp=_now_ms())
        self.messages.append([event, data])
        self.send(event, data, broadcast_without_client=broadcast)

    def _progress_entry(self, node_id: str, value: Any, maximum: Any, state: str) -> Dict[str, Any]:
        return {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    def _send_progress_state(self) -> None:
        self.send("progress_state", {"prompt_id": self.prompt_id, "nodes": self.progress_nodes}, broadcast_without_client=True)

    def progress_start(self, node_id: str) -> None:
        self.progress_nodes[node_id] = self._progress_entry(node_id, 0.0, 1.0, "running")
        self._send_progress_state()

    def progress_update(self, node_id: str, value: Any, maximum: Any) -> None:
        self.progress_nodes[node_id] = self._progress_entry(node_id, value, maximum, "running")
        self._send_progress_state()

    def progress_finish(self, node_id: str) -> None:
        entry = self.progress_nodes.get(node_id)
        if entry is None:
            entry = self._progress_entry(node_id, 1, 1, "finished")
        else:
            entry = dict(entry, value=entry["max"], state="finished")
        self.progress_nodes[node_id] = entry
        self._send_progress_state()

    def interrupt(self) -> None:
        self.interrupted = True
        for waiter in list(self.waiters):
            if not waiter.done():
                waiter.set_result("interrupt")


class Engine:
    """Queue, history, cache and the job worker of one mock server (see module docstring)."""

    def __init__(
        self,
        *,
        env: NodeEnv,
        registry: Dict[str, NodeDef],
        sink: EventSink,
        speed: Callable[[], float],
        lock: threading.RLock,
        worker_name: str = "mock-comfy-worker",
    ) -> None:
        self.env = env
        self.registry = registry
        self.sink = sink
        self._speed = speed
        self.lock = lock
        self._seq = itertools.count()
        # Test-facing records; they survive restarts on purpose.
        self.executed_prompt_ids: List[str] = []
        self.received_prompts: List[Tuple[str, Dict[str, Any], Dict[str, Any]]] = []
        self.interrupt_requests: List[Any] = []
        self.queue_delete_requests: List[Any] = []
        self.fail_next_message: Optional[str] = None
        #: Every execution the worker started, in order (see :class:`Execution`).
        self.executions: List[Execution] = []
        #: Like ComfyUI before ``/interrupt`` took a prompt_id: interrupt whatever runs.
        self.ignore_interrupt_id = False
        #: False: no ``execution_success`` frame (ComfyUI before that event existed).
        self.sends_execution_success = True
        #: While True, sleeping nodes make no progress (a stalled GPU); jobs still start.
        self.paused = False
        self._wakeup: Optional[asyncio.Event] = None
        self._worker_task: Optional["asyncio.Task[None]"] = None
        # ComfyUI's prompt_worker: one thread, so a job's blocking steps run one at a time and
        # in order. It lives as long as the server (restarts included) and ends in close().
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=worker_name)
        # Started now rather than at the first job: tests compare the threads alive before and
        # after a job, and a server's threads must all exist once it has started.
        self._worker_thread: threading.Thread = self._executor.submit(threading.current_thread).result()
        self._reset_state()

    # --- lifecycle (loop thread) ---------------------------------------------------------

    def _reset_state(self) -> None:
        with self.lock:
            self.number = 0
            self.queue: List[_QueueEntry] = []
            self.running: Optional[_QueueEntry] = None
            self.job: Optional[_Job] = None
            self.history: Dict[str, Dict[str, Any]] = {}
            self.outputs_cache: Dict[str, Tuple[Any, ...]] = {}
            self.ui_cache: Dict[str, Dict[str, Any]] = {}
            self.last_node_id: Optional[str] = None

    def start(self) -> None:
        """Start the worker task (call on the loop)."""
        self._wakeup = asyncio.Event()
        if self.queue:
            self._wakeup.set()
        self._worker_task = asyncio.get_running_loop().create_task(self._worker(), name="mock-comfy-worker")

    async def stop(self) -> None:
        """Cancel the worker, abandoning the running job without any event."""
        task, self._worker_task = self._worker_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - a crashed worker must not stop shutdown
                logger.exception("mock worker failed")
        job = self.job
        if job is not None:
            for waiter in list(job.waiters):
                waiter.cancel()

    def close(self, timeout: float) -> None:
        """End the worker thread (after :meth:`stop`, once the loop is gone; not from the worker).

        Work it has begun cannot be cancelled: a node stalled in a file write holds it up to
        ``timeout`` seconds, then the thread is left to end by itself (and logged)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._worker_thread.join(timeout)
        if self._worker_thread.is_alive():
            logger.warning("mock worker thread %s still busy %.0fs after stop: left to finish", self._worker_thread.name, timeout)

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the worker thread, awaited on the loop (which goes on answering).

        Cancelling the caller (a restart, a stop) abandons the wait, not the work: ``fn`` runs
        to its end on the worker and its result is dropped."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def restart(self) -> None:
        """Forget everything a real restart forgets (queue, running job, history, cache)."""
        await self.stop()
        self._reset_state()
        self.env.memory.loaded = None  # a new process has no model loaded
        self.start()

    # --- queue info ----------------------------------------------------------------------

    def queue_remaining(self) -> int:
        with self.lock:
            return len(self.queue) + (1 if self.running is not None else 0)

    def status_data(self) -> Dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}

    def queue_updated(self) -> None:
        self.sink.send("status", self.status_data(), None)

    def queue_json(self) -> Dict[str, Any]:
        with self.lock:
            running = [list(self.running.item)] if self.running is not None else []
            pending = [list(e.item) for e in self.queue]  # the heap array: not sorted
        return {"queue_running": running, "queue_pending": pending}

    def queue_snapshot(self) -> Tuple[List[str], List[str]]:
        with self.lock:
            running = [self.running.prompt_id] if self.running is not None else []
            pending = [e.prompt_id for e in sorted(self.queue)]
        return running, pending

    def running_client(self) -> Optional[str]:
        with self.lock:
            return self.job.client_id if self.job is not None else None

    # --- POST /prompt --------------------------------------------------------------------

    def submit(self, body: Any) -> Tuple[int, Dict[str, Any]]:
        """Handle a parsed ``POST /prompt`` body: (HTTP status, JSON answer).

        Raises where ComfyUI's handler raises (a 500 for the client)."""
        if not isinstance(body, dict):
            if isinstance(body, (list, str)):
                return 400, json_error_body("no_prompt", "No prompt provided", "No prompt provided")
            raise TypeError(f"argument of type '{type(body).__name__}' is not iterable")
        if "number" in body:
            number: Any = float(body["number"])
        else:
            with self.lock:
                number = self.number
                if body.get("front"):
                    number = -number
                self.number += 1
        if "prompt" not in body:
            return 400, json_error_body("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        given_id = body.get("prompt_id")
        if given_id is not None:
            if not isinstance(given_id, str) or not UUID_RE.match(given_id):
                return 400, json_error_body(
                    "invalid_prompt_id", "Invalid prompt_id", f"prompt_id must be a lowercase hyphenated UUID, got {given_id!r}"
                )
            prompt_id = given_id
        else:
            prompt_id = str(uuid.uuid4())
        ok, error, outputs, node_errors = validate_prompt(prompt, self.registry, self.env, body.get("partial_execution_targets"))
        extra_data = body.get("extra_data", {})
        if not isinstance(extra_data, dict):
            raise TypeError("'extra_data' must be an object")
        extra_data = dict(extra_data)
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not ok:
            logger.debug("invalid prompt: %s", error)
            return 400, {"error": error, "node_errors": node_errors}
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        entry = _QueueEntry(number, prompt_id, next(self._seq), [number, prompt_id, prompt, extra_data, outputs], sensitive)
        with self.lock:
            heapq.heappush(self.queue, entry)
            self.received_prompts.append((prompt_id, prompt, dict(extra_data)))
        self.queue_updated()
        if self._wakeup is not None:
            self._wakeup.set()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    # --- POST /queue, /interrupt, /history -----------------------------------------------

    def post_queue(self, body: Any) -> None:
        with self.lock:
            self.queue_delete_requests.append(body)
        if "clear" in body and body["clear"]:
            self._wipe_queue()
        if "delete" in body:
            for prompt_id in body["delete"]:
                self._delete_pending(prompt_id)

    def _wipe_queue(self) -> None:
        with self.lock:
            self.queue = []
        self.queue_updated()

    def _delete_pending(self, prompt_id: Any) -> None:
        with self.lock:
            index = next((i for i, e in enumerate(self.queue) if e.prompt_id == prompt_id), None)
            if index is None:
                return
            last = len(self.queue) == 1
            if not last:
                self.queue.pop(index)
                heapq.heapify(self.queue)
        if last:
            self._wipe_queue()  # ComfyUI wipes (one status) and then reports again (a second)
        self.queue_updated()

    def interrupt(self, body: Any) -> None:
        """``POST /interrupt``: with a prompt_id only that job if it runs, else whatever runs."""
        with self.lock:
            self.interrupt_requests.append(body)
            job = self.job
        target = body.get("prompt_id") if isinstance(body, dict) else None
        if self.ignore_interrupt_id:
            target = None
        if job is None:
            return  # ComfyUI sets a flag that the next job clears at its start
        if target and target != job.prompt_id:
            logger.debug("prompt %s is not running, interrupt ignored", target)
            return
        job.interrupt()

    def post_history(self, body: Any) -> None:
        with self.lock:
            if "clear" in body and body["clear"]:
                self.history = {}
            if "delete" in body:
                for prompt_id in body["delete"]:
                    self.history.pop(prompt_id, None)

    def history_json(self, prompt_id: Optional[str] = None, max_items: Optional[int] = None, offset: int = -1) -> Dict[str, Any]:
        """ComfyUI's ``get_history``: one item, or the newest ``max_items`` from ``offset``."""
        with self.lock:
            if prompt_id is not None:
                item = self.history.get(prompt_id)
                return {prompt_id: json.loads(json.dumps(item))} if item is not None else {}
            out: Dict[str, Any] = {}
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            for index, key in enumerate(self.history):
                if index >= offset:
                    out[key] = self.history[key]
                    if max_items is not None and len(out) >= max_items:
                        break
            copied: Dict[str, Any] = json.loads(json.dumps(out))  # a deep copy, like ComfyUI
            return copied

    def history_ids(self) -> List[str]:
        with self.lock:
            return list(self.history)

    # --- object info ---------------------------------------------------------------------

    def object_info(self, class_type: Optional[str] = None) -> Dict[str, Any]:
        if class_type is not None:
            node = self.registry.get(class_type)
            return {class_type: node.object_info(self.env)} if node is not None else {}
        return {name: node.object_info(self.env) for name, node in self.registry.items()}

    # --- execution -----------------------------------------------------------------------

    async def _worker(self) -> None:
        assert self._wakeup is not None
        while True:
            while not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            with self.lock:
                entry = heapq.heappop(self.queue)
                self.running = entry
                job = _Job(self, entry)
                self.job = job
                record = Execution(job.prompt_id, job.client_id, json.loads(json.dumps(job.prompt)), time.monotonic())
                job.record = record
                self.executions.append(record)
            self.queue_updated()
            try:
                success, result = await self._execute(job)
            except asyncio.CancelledError:
                with self.lock:
                    record.outcome = "abandoned"
                raise  # a restart: the job vanishes without a word, like a killed process
            except Exception as ex:  # noqa: BLE001 - a mock bug must not kill the worker
                logger.exception("mock execution of %s crashed", job.prompt_id)
                job.add_message("execution_error", self._error_data(job, "", "", [], ex, {}), broadcast=False)
                success, result = False, {"outputs": {}, "meta": {}}
            with self.lock:
                if len(self.history) > MAXIMUM_HISTORY_SIZE:
                    self.history.pop(next(iter(self.history)))
                self.history[job.prompt_id] = {
                    "prompt": list(entry.item),
                    "outputs": {},
                    "status": {"status_str": "success" if success else "error", "completed": success, "messages": job.messages},
                }
                self.history[job.prompt_id].update(result)
                self.running = None
                self.job = None
                record.outcome = "success" if success else ("interrupted" if job.interrupted else "error")
                if success:
                    self.executed_prompt_ids.append(job.prompt_id)
            self.queue_updated()
            if job.client_id is not None:
                self.sink.send("executing", {"node": None, "prompt_id": job.prompt_id}, job.client_id)

    def clock_changed(self) -> None:
        """The speed or the pause state changed: wake sleeping nodes to re-plan (loop thread)."""
        job = self.job
        if job is None:
            return
        for waiter in list(job.waiters):
            if not waiter.done():
                waiter.set_result("changed")

    async def _interruptible_sleep(self, job: _Job, seconds: float) -> None:
        """Spend ``seconds`` of nominal time: real time divided by the speed, frozen while
        paused, re-planned at once when either changes, cut short by an interrupt."""
        loop = asyncio.get_running_loop()
        remaining = max(0.0, float(seconds))
        while True:
            if job.interrupted:
                raise InterruptProcessing("Processing interrupted")
            speed = 0.0 if self.paused else max(self._speed(), 1e-9)
            waiter: "asyncio.Future[str]" = loop.create_future()

            def elapsed(waiter: "asyncio.Future[str]" = waiter) -> None:
                if not waiter.done():
                    waiter.set_result("elapsed")

            handle = loop.call_later(remaining / speed, elapsed) if speed > 0 else None
            started = loop.time()
            job.waiters.add(waiter)
            try:
                outcome = await waiter
            finally:
                if handle is not None:
                    handle.cancel()
                job.waiters.discard(waiter)
            if outcome == "interrupt":
                raise InterruptProcessing("Processing interrupted")
            if outcome == "elapsed":
                return
            remaining = max(0.0, remaining - (loop.time() - started) * speed)

    def _def_of(self, node: Any) -> Optional[NodeDef]:
        """The definition of a prompt node's type (None: not a node of a known type)."""
        class_type = node.get("class_type") if isinstance(node, dict) else None
        return self.registry.get(class_type) if isinstance(class_type, str) else None

    def _hashes_files(self, prompt: Dict[str, Any]) -> bool:
        """Whether planning ``prompt`` reads files: a node type of it has an IS_CHANGED."""
        return any(d is not None and d.is_changed is not None for d in map(self._def_of, prompt.values()))

    def _plan(self, prompt: Dict[str, Any]) -> _Plan:
        """Cache keys, IS_CHANGED values and input names of a prompt's nodes (on the worker
        thread when it reads files, see :meth:`_hashes_files`: it reads of the engine only the
        registry and the env's folders, which stay as they are while the server runs)."""
        changes: Dict[str, Any] = {}
        sigs = self._signatures(prompt, changes)
        inputs: Dict[str, List[str]] = {}
        for node_id, node in prompt.items():
            node_def = self._def_of(node)
            if node_def is not None:
                spec = node_def.input_types(self.env)
                inputs[node_id] = [name for section in ("required", "optional") for name in spec.get(section, {})]
        return _Plan(sigs, changes, inputs)

    def _signatures(self, prompt: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, str]:
        """Cache key per node: class, IS_CHANGED and inputs, with links replaced by the
        source's key (ComfyUI's ``CacheKeySetInputSignature``); IS_CHANGED values go to ``changes``."""
        memo: Dict[str, str] = {}

        def sig(node_id: str, visiting: Tuple[str, ...]) -> str:
            if node_id in memo:
                return memo[node_id]
            node = prompt[node_id]
            class_type = node.get("class_type")
            inputs = node.get("inputs", {})
            node_def = self._def_of(node)
            changed = None
            if node_def is not None and node_def.is_changed is not None:
                try:
                    changed = node_def.is_changed(self.env, inputs)
                    changes[node_id] = changed
                except Exception:  # noqa: BLE001 - an unreadable file just is not cached
                    changed = uuid.uuid4().hex
            parts: List[Any] = [class_type, changed]
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value) and len(value) == 2 and value[0] in prompt and value[0] not in visiting:
                    parts.append([name, ["ANCESTOR", sig(value[0], visiting + (node_id,)), value[1]]])
                else:
                    parts.append([name, value])
            memo[node_id] = json.dumps(parts, sort_keys=True, default=str)
            return memo[node_id]

        return {node_id: sig(node_id, ()) for node_id in prompt}

    def _stage_order(self, job: _Job, plan: _Plan) -> List[str]:
        """Nodes to visit: outputs and their uncached dependencies, dependencies first."""
        order: List[str] = []
        seen: Set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            inputs = job.prompt[node_id].get("inputs", {})
            for name in plan.inputs[node_id]:
                value = inputs.get(name)
                if is_link(value) and len(value) == 2 and value[0] in job.prompt:
                    if plan.sigs[value[0]] not in self.outputs_cache:
                        visit(value[0])
            order.append(node_id)

        for output_id in job.outputs:
            visit(output_id)
        return order

    def _resolve_inputs(self, job: _Job, node_id: str, results: Dict[str, Tuple[Any, ...]], plan: _Plan) -> Dict[str, Any]:
        inputs = job.prompt[node_id].get("inputs", {})
        resolved: Dict[str, Any] = {}
        for name in plan.inputs[node_id]:
            if name not in inputs:
                continue
            value = inputs[name]
            if is_link(value):
                source, index = value[0], value[1]
                outputs = results[source] if source in results else self.outputs_cache[plan.sigs[source]]
                resolved[name] = outputs[index]
            else:
                resolved[name] = value
        return resolved

    def _error_data(
        self, job: _Job, node_id: str, node_type: str, executed: List[str], ex: BaseException, inputs: Dict[str, Any]
    ) -> Dict[str, Any]:
        return {
            "prompt_id": job.prompt_id,
            "node_id": node_id,
            "node_type": node_type,
            "executed": list(executed),
            "exception_message": f"{ex}\n",
            "exception_type": full_type_name(type(ex)),
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {name: [_format_value(value)] for name, value in inputs.items()},
            "current_outputs": list(job.prompt),
        }

    async def _execute(self, job: _Job) -> Tuple[bool, Dict[str, Any]]:
        """Run one job, sending ComfyUI's events; returns (success, history outputs/meta)."""
        # The plan (IS_CHANGED hashes, input lists) is worked out before execution_start, not
        # between it and execution_cached as ComfyUI does: there it takes microseconds on the
        # prompt worker, so a client never sees another message (a status of a prompt posted
        # meanwhile) between the two. Only a prompt with an IS_CHANGED (a file's hash) hands
        # it to the worker thread; any other is planned at once on the loop, as the job was
        # before the worker thread, so that it starts as soon as ComfyUI's would (the recorded
        # transcripts order its first events before the statuses of prompts posted right
        # after it: tests/test_mock_transcripts.py).
        if self._hashes_files(job.prompt):
            plan = await self.run_blocking(self._plan, job.prompt)
        else:
            plan = self._plan(job.prompt)
        job.add_message("execution_start", {"prompt_id": job.prompt_id}, broadcast=False)
        sigs = plan.sigs
        wanted = set(sigs.values())
        # The classic cache keeps only what the current prompt can use.
        for key in [k for k in self.outputs_cache if k not in wanted]:
            del self.outputs_cache[key]
        for key in [k for k in self.ui_cache if k not in wanted]:
            del self.ui_cache[key]
        cached = [node_id for node_id in job.prompt if sigs[node_id] in self.outputs_cache]
        job.add_message("execution_cached", {"nodes": cached, "prompt_id": job.prompt_id}, broadcast=False)
        for node_id in cached:
            self._record_cached_input(job, node_id, plan)

        with self.lock:
            fail_message, self.fail_next_message = self.fail_next_message, None
        results: Dict[str, Tuple[Any, ...]] = {}
        executed: List[str] = []
        success = True
        for node_id in self._stage_order(job, plan):
            node = job.prompt[node_id]
            class_type = node["class_type"]
            node_def = self.registry[class_type]
            key = sigs[node_id]
            if key in self.outputs_cache and fail_message is None:
                ui = self.ui_cache.get(key)
                if ui is not None:
                    job.send("executed", {"node": node_id, "display_node": node_id, "output": ui["output"], "prompt_id": job.prompt_id})
                job.progress_finish(node_id)
                continue
            job.progress_start(node_id)
            if job.client_id is not None:
                self.last_node_id = node_id
            job.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": job.prompt_id})
            inputs: Dict[str, Any] = {}
            context = _JobContext(self, job)
            context.node_id = node_id
            try:
                inputs = self._resolve_inputs(job, node_id, results, plan)
                if fail_message is not None:
                    message, fail_message = fail_message, None
                    raise RuntimeError(message)
                context.check_interrupted()
                outputs, ui = await node_def.run(context, **inputs)
            except InterruptProcessing:
                job.add_message(
                    "execution_interrupted",
                    {"prompt_id": job.prompt_id, "node_id": node_id, "node_type": class_type, "executed": list(executed)},
                    broadcast=True,
                )
                success = False
                break
            except asyncio.CancelledError:
                raise
            except Exception as ex:  # noqa: BLE001 - any node failure is an execution_error
                logger.debug("node %s (%s) of %s failed: %s", node_id, class_type, job.prompt_id, ex)
                job.add_message("execution_error", self._error_data(job, node_id, class_type, executed, ex, inputs), broadcast=False)
                success = False
                break
            results[node_id] = tuple(outputs)
            self.outputs_cache[key] = tuple(outputs)
            if ui is not None:
                meta = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
                self.ui_cache[key] = {"output": ui, "meta": meta}
                job.send("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": job.prompt_id})
            job.progress_finish(node_id)
            executed.append(node_id)
        if success and self.sends_execution_success:
            job.add_message("execution_success", {"prompt_id": job.prompt_id}, broadcast=False)

        ui_outputs: Dict[str, Any] = {}
        meta_outputs: Dict[str, Any] = {}
        for node_id in job.prompt:
            ui_entry = self.ui_cache.get(sigs[node_id])
            if ui_entry is not None:
                ui_outputs[node_id] = ui_entry["output"]
                meta_outputs[node_id] = dict(ui_entry["meta"], node_id=node_id, display_node=node_id, real_node_id=node_id)
        return success, {"outputs": ui_outputs, "meta": meta_outputs}

    def _record_cached_input(self, job: _Job, node_id: str, plan: _Plan) -> None:
        """A cached LoadImage does not read its file again: record the bytes its cache key
        holds (its IS_CHANGED, the file's hash, worked out by the plan)."""
        node = job.prompt[node_id]
        node_def = self.registry.get(node.get("class_type", ""))
        inputs = node.get("inputs", {})
        if job.record is None or node_def is None or node_def.name != "LoadImage" or node_def.is_changed is None:
            return
        digest = plan.changed.get(node_id)
        if isinstance(digest, str):
            with self.lock:
                job.record.inputs[node_id] = (str(inputs.get("image")), digest)

    # --- small helpers for the server ----------------------------------------------------

    def python_version(self) -> str:
        return sys.version
