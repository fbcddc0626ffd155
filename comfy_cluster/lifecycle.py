"""The pool's runner side: one runner thread per attempt, and what the pool does with the
attempt's :class:`~comfy_cluster.runner.Outcome` (release or keep it in the ledger, finish the
job or queue it again).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional

from .attempt import Attempt
from .client import ComfyClient
from .errors import ComfyClusterError, JobCancelled, JobFailed, ServerError, WorkflowError
from .jobs import Job, JobResult
from .runner import Outcome, RunnerContext, follow_attempt, run_attempt
from .workflow import set_inputs

if TYPE_CHECKING:  # pragma: no cover
    from .pool import ServerPool

__all__ = ["run", "run_adopted", "attempt_done", "finish_cancelled"]

log = logging.getLogger("comfy_cluster.pool")


def run(pool: "ServerPool", attempt: Attempt, follow_only: bool = False) -> None:
    name = attempt.server
    job = attempt.job
    try:
        ctx = RunnerContext(
            client=pool._clients[name], socket=pool._sockets[name], client_id=pool.client_id,
            # The job itself is already counted in the load: the ones ahead of it.
            position=lambda: max(0, pool._monitor.snapshot(name).load - 1),
            uploads=lambda client: uploaded_workflow(pool, job, client),
            post_gate=pool._post_gate,
            cancelled_here=lambda: [a.prompt_id for a in pool._ledger.live(name) if a.posted and a.job.cancel_requested],
            reconcile_interval=pool._reconcile_interval, server_lost_after=pool._server_lost_after, clock=pool._clock,
        )
        outcome = follow_attempt(attempt, ctx) if follow_only else run_attempt(attempt, ctx)
    except Exception as exc:  # never lose a job to a bug: fail it with the reason
        log.exception("job attempt on %s crashed", name)
        outcome = Outcome("failed", error=ServerError(f"{name}: internal error: {exc!r}", server=name), confirmed=False)
    try:
        attempt_done(pool, attempt, outcome)
    finally:
        with pool._lock:
            pool._runners.discard(threading.current_thread())

def run_adopted(pool: "ServerPool", attempt: Attempt) -> None:
    """The runner thread of an adopted attempt: follow it, never post it."""
    run(pool, attempt, follow_only=True)

def uploaded_workflow(pool: "ServerPool", job: Job, client: ComfyClient) -> Dict[str, Any]:
    """The workflow with each input uploaded into a subfolder named by the file's content
    hash: two different files never share a name on a server (two artists' plates of the
    same name, or two jobs of one batch), and the same bytes are reused."""
    if not job.inputs:
        return job.workflow
    values = {node: {"image": client.upload_image(path, subfolder=f"cc-{content_hash(pool, path)}")} for node, path in job.inputs.items()}
    return set_inputs(job.workflow, values)

def content_hash(pool: "ServerPool", path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    digest = pool._hashes.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()[:32]
        pool._hashes[key] = digest
    return digest

def attempt_done(pool: "ServerPool", attempt: Attempt, outcome: Outcome) -> None:
    """Record how ``attempt`` ended and move the job on: final, or back to the queue."""
    job, name = attempt.job, attempt.server
    ok = True if outcome.kind == "succeeded" else False if outcome.kind == "failed" else None
    if outcome.confirmed:
        pool._ledger.release(attempt, seconds=outcome.exec_seconds, ok=ok)
    else:
        pool._ledger.lose(attempt, pool._clock())
    moving = outcome.kind == "move"
    job._attempt_ended(attempt, (name, outcome.reason) if moving else None)
    pool._dispatcher.attempt_ended(job)
    if moving and outcome.decision.mark_down:
        pool._monitor.mark_failed(name, outcome.reason)
    if not outcome.confirmed:
        pool._schedule_cleanup(name)
    if outcome.kind == "succeeded":
        result = JobResult(prompt_id=attempt.prompt_id, server=name, outputs=outcome.outputs or {},
                           attempts=job.attempts, seconds=time.monotonic() - job.created)
        job._emit("succeeded", name, raw=outcome.raw)
        job._finish("succeeded", result=result)
    elif outcome.kind == "failed":
        err = outcome.error or JobFailed(f"{name}: job failed", server=name)
        if isinstance(err, (JobFailed, ServerError)) and job.failures:
            err.attempts = job.failures + [(name, str(err))]
        job._emit("failed", name, reason=str(err), raw=outcome.raw)
        job._finish("failed", error=err)
    elif outcome.kind == "cancelled":
        finish_cancelled(job, name, outcome.reason or "cancelled", raw=outcome.raw)
    else:
        move(pool, job, name, outcome)

def move(pool: "ServerPool", job: Job, name: str, outcome: Outcome) -> None:
    log.warning("job %s left %s: %s", job.prompt_id, name, outcome.reason)
    if outcome.decision.exclude:
        job.incapable.add(name)
        job.last_error = outcome.error if isinstance(outcome.error, ComfyClusterError) else None
    if job.cancel_requested:
        finish_cancelled(job, name, "cancelled")
    elif job.attempts > job.retries:
        if outcome.decision.exclude and isinstance(outcome.error, WorkflowError):
            err: ComfyClusterError = outcome.error
        else:
            failures = job.failures
            tried = "; ".join(f"{s}: {r}" for s, r in failures)
            err = ServerError(f"job failed after {job.attempts} attempt(s): {tried}", server=name, attempts=failures)
        job._emit("failed", name, reason=str(err))
        job._finish("failed", error=err)
    else:
        try:
            pool._dispatcher.add([job], front=True)
        except ComfyClusterError:
            finish_cancelled(job, name, "pool closed")

def finish_cancelled(job: Job, server: Optional[str], reason: str, raw: Optional[Dict[str, Any]] = None) -> None:
    job._emit("cancelled", server, reason=reason, raw=raw)
    job._finish("cancelled", error=JobCancelled(f"job {job.prompt_id or '(not submitted)'} {reason}", prompt_id=job.prompt_id or "", server=server))
