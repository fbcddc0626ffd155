"""``Controls``: what a user does to the gateway's jobs (delete pending ones, clear the queue,
cancel by id, interrupt), mixed into :class:`~comfy_cluster.gateway.book.JobBook`. Each user
sees and manages their own jobs; loop thread only, as the book."""

from __future__ import annotations

from typing import Any, Deque, Dict, List, Optional

from ..state import Store
from .auth import User
from .durable import Keeper
from .gatewayjob import GatewayJob

__all__ = ["Controls"]


class Controls:
    """The user's actions on the book's jobs (the book provides what is declared here)."""

    active: Dict[str, GatewayJob]
    _waiting: Dict[str, Deque[GatewayJob]]
    _keeper: Keeper
    _store: Store

    def queue_changed(self) -> None:
        raise NotImplementedError

    def _end(self, gj: GatewayJob, status: str, item: Optional[Dict[str, Any]], error: Optional[BaseException], *,
             result: Any = None, server: Optional[str] = None) -> None:
        raise NotImplementedError

    def delete_pending(self, ids: List[Any], viewer: User) -> None:
        """Drop the viewer's jobs that have not started (running ones are left alone, as in
        ComfyUI)."""
        changed = False
        for pid in ids:
            gj = self.active.get(pid) if isinstance(pid, str) else None
            if gj is None or gj.state in ("running", "done", "told") or not viewer.sees(gj.user):
                continue
            changed = True
            self._drop(gj)
        if changed:
            self.queue_changed()

    def clear_pending(self, viewer: User) -> None:
        for gj in [g for g in self.active.values() if g.state in ("waiting", "submitted") and viewer.sees(g.user)]:
            self._drop(gj)
        self.queue_changed()

    def _drop(self, gj: GatewayJob) -> None:
        gj.deleted = True
        if gj.state == "waiting":
            self._waiting[gj.owner].remove(gj)
            self._end(gj, "cancelled", None, None)
        else:
            # Out of the queue now; the pool confirms the cancel on its server later.
            self.active.pop(gj.prompt_id, None)
            self.cancel(gj)

    def cancel_by_id(self, prompt_id: str, viewer: User) -> bool:
        """The job API's cancel: a pending job of the viewer leaves the queue, a running one
        is stopped; False (nothing done) for a finished, unknown or another user's id."""
        gj = self.active.get(prompt_id)
        if gj is None or gj.state in ("done", "told") or gj.deleted or gj.cancel_requested or not viewer.sees(gj.user):
            return False
        if gj.state == "running" or gj.started:
            self.cancel(gj)
        else:
            self.delete_pending([prompt_id], viewer)
        return True

    def cancel(self, gj: GatewayJob) -> None:
        if not gj.cancel_requested:
            self._keeper.later(self._store.request_cancel, gj.prompt_id)
        gj.cancel_requested = True
        if gj.job is not None:
            gj.job.cancel()

    def interrupt(self, body: Any, viewer: User) -> None:
        """``POST /interrupt``: the viewer's jobs it names stop if they run (``prompt_id``, or
        a ``delete`` list as ComfyUI-for-Nuke sends); else a ``client_id``'s running jobs;
        with neither, every running job of the viewer (an admin: of the gateway; never a job
        of another client of the servers). ComfyUI itself ignores such bodies and stops
        whatever runs."""
        body = body if isinstance(body, dict) else {}
        named = set()
        if isinstance(body.get("prompt_id"), str):
            named.add(body["prompt_id"])
        if isinstance(body.get("delete"), list):
            named.update(p for p in body["delete"] if isinstance(p, str))
        named_any = "prompt_id" in body or "delete" in body
        cid = body.get("client_id")
        for gj in list(self.active.values()):
            if gj.state != "running" or not viewer.sees(gj.user):
                continue
            if named_any and gj.prompt_id not in named:
                continue
            if not named_any and cid is not None and gj.client_id != cid:
                continue
            self.cancel(gj)
