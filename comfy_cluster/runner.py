"""The runner: one attempt's I/O, from the websocket and uploads through ``POST /prompt`` to
the job's end (followed there by :class:`comfy_cluster.follow.Follower`), on the runner
thread the pool starts for it.

:func:`run_attempt` never raises: every ending is an :class:`Outcome`, and every failure is
judged by :func:`comfy_cluster.policy.decide`. The attempt's ``prompt_id`` is the one made
before the POST, so a copy the server took while the POST failed is still ours to find.
"""

from __future__ import annotations

import logging
import queue
from typing import Any, Dict

from .attempt import Attempt, AttemptPhase
from .client import ComfyClient
from .errors import ComfyClusterError, LocalFileError, ServerError, WorkflowError
from .follow import Follower, Outcome, RunnerContext, moved
from .policy import Action, Phase, decide, follow_timeout

__all__ = ["Outcome", "RunnerContext", "run_attempt", "follow_attempt", "is_server_specific"]

log = logging.getLogger(__name__)


def is_server_specific(err: WorkflowError) -> bool:
    """A 400 that another server may not give: a missing node type or a missing model."""
    if err.error_type in ("missing_node_type",):
        return True
    if err.error_type == "invalid_prompt" and "does not exist" in str(err):
        return True
    # A model (or input file) the server lacks: value_not_in_list, or LoadImage's own check.
    return bool(err.node_errors) and all(
        e.type == "value_not_in_list" or (e.type == "custom_validation_failed" and "Invalid image file" in e.message)
        for e in err.node_errors
    )


def run_attempt(attempt: Attempt, ctx: RunnerContext) -> Outcome:
    """Run ``attempt`` to its end; never raises."""
    job = attempt.control
    name = attempt.server
    inbox: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    sock = ctx.socket
    sock.register(attempt.prompt_id, inbox.put)
    job.attach_inbox(inbox)
    try:
        if job.cancel_requested:
            return Outcome("cancelled", reason="cancelled before submission")
        try:
            sock.ensure_connected()
            workflow = ctx.uploads(ctx.client)
        except (ComfyClusterError, OSError) as exc:
            if not isinstance(exc, ComfyClusterError):  # our input file vanished or became unreadable
                exc = LocalFileError(f"input file unreadable: {exc.__class__.__name__}: {exc.filename}", path=str(exc.filename or ""))
            d = decide(Phase.UPLOAD, exc)  # the table's "local" row: it would fail the same everywhere
            if d.action is Action.FAIL:
                return Outcome("failed", error=exc)
            return moved(exc, d, name, confirmed=True)
        position = ctx.position()
        body = {"prompt": workflow, "client_id": ctx.client_id, "prompt_id": attempt.prompt_id}
        try:
            # Recorded before the POST (a gateway's store): a process that dies after the
            # server took the job finds it there by this id, and never posts it twice.
            job.note_attempt(attempt, "reserved")
        except Exception as exc:  # noqa: BLE001 - nothing was sent: the job fails, told why
            log.warning("job attempt on %s not recorded: %s", name, exc)
            return Outcome("failed", error=ComfyClusterError(f"attempt not recorded: {exc}"))
        try:
            with ctx.post_gate:
                if job.cancel_requested:
                    return Outcome("cancelled", reason="cancelled before submission")
                attempt.posted = True
                attempt.phase = AttemptPhase.POSTED
                answer = ctx.client.post_prompt(body)
        except WorkflowError as exc:
            d = decide(Phase.POST, exc, server_specific=is_server_specific(exc))
            if d.action is Action.FAIL:
                return Outcome("failed", error=exc)
            return moved(exc, d, name, confirmed=True)
        except ServerError as exc:
            d = decide(Phase.POST, exc)
            if d.action is Action.FAIL:
                return Outcome("failed", error=exc)
            if not d.maybe_there:
                return moved(exc, d, name, confirmed=True)
            # The server may have taken it before failing to answer: our id tells.
            if not _taken(ctx.client, attempt.prompt_id):
                return moved(exc, d, name, confirmed=False)
            log.info("%s: POST /prompt failed (%s) but the server holds the job: following it", name, exc.fault)
        else:
            if answer.get("prompt_id") != attempt.prompt_id:
                # An old server that ignores client-chosen ids: follow the id it gave.
                sock.unregister(attempt.prompt_id)
                job.note_attempt(attempt, "ended")
                attempt.prompt_id = str(answer["prompt_id"])
                sock.register(attempt.prompt_id, inbox.put)
                job.note_attempt(attempt, "reserved")
        job.posted(attempt)
        job.emit("submitted", name)
        job.emit("queued", name, position=position)
        return Follower(attempt, ctx, inbox).run()
    finally:
        sock.unregister(attempt.prompt_id)
        job.attach_inbox(None)


def follow_attempt(attempt: Attempt, ctx: RunnerContext) -> Outcome:
    """Follow ``attempt``, posted to its server by an earlier process (a gateway restarted,
    or a replica that died), to its end; never posts. An attempt the server does not hold
    (queued, running or in its history) never arrived there: it ``move``s, confirmed, and
    runs elsewhere. Never raises."""
    job = attempt.control
    inbox: "queue.Queue[Dict[str, Any]]" = queue.Queue()
    sock = ctx.socket
    sock.register(attempt.prompt_id, inbox.put)
    job.attach_inbox(inbox)
    try:
        try:
            sock.ensure_connected()
        except ComfyClusterError as exc:
            log.debug("%s: websocket not connected for an adopted job (%s): following by polling", attempt.server, exc)
        attempt.posted = True
        attempt.phase = AttemptPhase.POSTED
        job.posted(attempt)
        follower = Follower(attempt, ctx, inbox)
        first = follower.reconcile()  # it may have ended while nobody listened
        if first is not None:
            if first.kind == "move" and first.confirmed:
                first.reason = "not on its server when adopted (never arrived there)"
            return first
        job.emit("submitted", attempt.server)
        if follower.started is not None:
            job.emit("started", attempt.server)
        return follower.run()
    finally:
        sock.unregister(attempt.prompt_id)
        job.attach_inbox(None)


def _taken(client: ComfyClient, prompt_id: str) -> bool:
    """Whether the server holds ``prompt_id`` (queued, running or finished); False when it
    cannot tell."""
    try:
        running, pending = client.queue(timeout=follow_timeout(client.timeout[1]))
        if prompt_id in running or prompt_id in pending:
            return True
        return client.history(prompt_id, timeout=follow_timeout(client.timeout[1])) is not None
    except ComfyClusterError:
        return False


