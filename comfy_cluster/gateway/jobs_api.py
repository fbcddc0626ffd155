"""ComfyUI's newer job API at the gateway: ``GET /api/jobs`` (status filter, sorting,
paging), ``GET /api/jobs/{id}``, ``POST /api/jobs/{id}/cancel`` and ``POST /api/jobs/cancel``,
in the shapes ComfyUI answers (its ``comfy_execution/jobs.py`` and ``server.py``).

Running and pending jobs come from the gateway's queue (replicas: the shared one), finished ones
from the state store.
A cancel covers a job wherever it is: a pending one leaves the queue, a running one is
stopped on its server; finished or unknown ids are no-ops (``{"cancelled": false}``).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from .auth import User, request_user
from .book import JobBook
from .listing import Listing, Unfinished

__all__ = ["JobRoutes", "STATUSES"]

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = "pending", "in_progress", "completed", "failed", "cancelled"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
#: The store's ending of a prompt -> the job API's status.
_FROM_STORE = {"succeeded": COMPLETED, "failed": FAILED, "cancelled": CANCELLED}
_TO_STORE = {v: k for k, v in _FROM_STORE.items()}
_PREVIEWABLE = ("images", "video", "audio", "3d", "text")
_ENDS = ("execution_success", "execution_error", "execution_interrupted")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


def _pruned(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _workflow_id(extra_data: Any) -> Optional[str]:
    info = extra_data.get("extra_pnginfo") if isinstance(extra_data, dict) else None
    workflow = info.get("workflow") if isinstance(info, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def _ms(seconds: Optional[float]) -> Optional[int]:
    return int(seconds * 1000) if seconds is not None else None


def queued_job(u: Unfinished, *, full: bool = False) -> Dict[str, Any]:
    """A pending or running job in the job API's shape."""
    job = _pruned({
        "id": u.prompt_id, "status": IN_PROGRESS if u.running else PENDING,
        "priority": u.number, "create_time": _ms(u.created), "outputs_count": 0,
        "previewable_outputs_count": 0, "workflow_id": _workflow_id(u.extra_data),
    })
    if full:
        job["workflow"] = {"prompt": u.prompt, "extra_data": u.extra_data}
    return job


def _outputs_summary(outputs: Any) -> Tuple[int, int, Optional[Dict[str, Any]]]:
    """(outputs, previewable outputs, the preview: a saved visual file first)."""
    count = previewable = 0
    preview: Optional[Dict[str, Any]] = None
    fallback: Optional[Dict[str, Any]] = None
    for node_id, node_out in (outputs or {}).items() if isinstance(outputs, dict) else ():
        if not isinstance(node_out, dict):
            continue
        for media, items in node_out.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                fmt = str(item.get("format", ""))
                if media in _PREVIEWABLE or fmt.startswith(("video/", "audio/")):
                    previewable += 1
                    shown = dict(item, nodeId=node_id, mediaType=item.get("mediaType", media))
                    if preview is None and item.get("type") == "output" and media != "text":
                        preview = shown
                    elif fallback is None:
                        fallback = shown
    return count, previewable, preview or fallback


def finished_job(row: Dict[str, Any], *, full: bool = False) -> Dict[str, Any]:
    """A finished job (a store history row) in the job API's shape."""
    item = row["item"]
    prompt = item.get("prompt") or [None, row["prompt_id"], {}, {}, []]
    status_info = item.get("status") or {}
    start = end = None
    error = None
    for m in status_info.get("messages") or []:
        if isinstance(m, list) and len(m) == 2 and isinstance(m[1], dict):
            if m[0] == "execution_start":
                start = m[1].get("timestamp")
            elif m[0] in _ENDS:
                end = m[1].get("timestamp")
                if m[0] == "execution_error":
                    error = m[1]
    count, previewable, preview = _outputs_summary(item.get("outputs"))
    job = _pruned({
        "id": row["prompt_id"], "status": _FROM_STORE.get(row["status"], COMPLETED), "priority": prompt[0],
        "create_time": _ms(row["created"]), "execution_start_time": start, "execution_end_time": end,
        "execution_error": error, "outputs_count": count, "previewable_outputs_count": previewable,
        "preview_output": preview, "workflow_id": _workflow_id(prompt[3] if len(prompt) > 3 else None),
    })
    if full:
        job["outputs"] = item.get("outputs") or {}
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt[2] if len(prompt) > 2 else {}, "extra_data": prompt[3] if len(prompt) > 3 else {}}
    return job


def _duration(job: Dict[str, Any]) -> float:
    start, end = job.get("execution_start_time"), job.get("execution_end_time")
    return float(end - start) if start and end else 0.0


class JobRoutes:
    """The job API's handlers over the gateway's ``book`` (lists from ``listing``)."""

    def __init__(self, book: JobBook, listing: Listing, *, remote_cancel: Optional[Callable[[str], Awaitable[bool]]] = None) -> None:
        self._book = book
        self._listing = listing
        self._remote_cancel = remote_cancel  # replicas: a prompt another replica holds

    def routes(self) -> List[Tuple[str, str, Any]]:
        return [
            ("GET", "/api/jobs", self.list_jobs),
            ("POST", "/api/jobs/cancel", self.cancel_many),
            ("GET", "/api/jobs/{job_id}", self.get_job),
            ("POST", "/api/jobs/{job_id}/cancel", self.cancel_one),
        ]

    async def list_jobs(self, request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        wanted: List[str] = list(STATUSES)
        if q.get("status"):
            wanted = [s.strip().lower() for s in q["status"].split(",") if s.strip()]
            bad = [s for s in wanted if s not in STATUSES]
            if bad:
                return _json({"error": f"Invalid status value(s): {', '.join(bad)}. Valid values: {', '.join(STATUSES)}"}, 400)
        sort_by = q.get("sort_by", "created_at").lower()
        sort_order = q.get("sort_order", "desc").lower()
        if sort_by not in ("created_at", "execution_duration"):
            return _json({"error": "sort_by must be 'created_at' or 'execution_duration'"}, 400)
        if sort_order not in ("asc", "desc"):
            return _json({"error": "sort_order must be 'asc' or 'desc'"}, 400)
        limit: Optional[int] = None
        if "limit" in q:
            try:
                limit = int(q["limit"])
            except ValueError:
                return _json({"error": "limit must be an integer"}, 400)
            if limit <= 0:
                return _json({"error": "limit must be a positive integer"}, 400)
        offset = 0
        if "offset" in q:
            try:
                offset = max(0, int(q["offset"]))
            except ValueError:
                return _json({"error": "offset must be an integer"}, 400)
        workflow_id = q.get("workflow_id")
        viewer = request_user(request)
        jobs = [queued_job(u) for u in await self._listing.unfinished(viewer)]
        jobs = [j for j in jobs if j["status"] in wanted]
        finished = [_TO_STORE[s] for s in wanted if s in _TO_STORE]
        total_finished = 0
        if finished:
            # Only the first offset+limit of each side can be on this page (by creation time).
            # Another user's rows are read and left out (an admin sees every row).
            by_created = sort_by == "created_at" and workflow_id is None and viewer.admin
            top = offset + limit if (limit is not None and by_created) else None
            total_finished, rows = await self._book.history_rows(statuses=finished, newest_first=sort_order == "desc", limit=top)
            jobs += [finished_job(r) for r in rows if viewer.sees(r["owner"] or "default")]
            if not by_created:
                total_finished = 0  # every row was read: counted below
            else:
                total_finished -= len(rows)
        if workflow_id:
            jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]
        key = _duration if sort_by == "execution_duration" else (lambda j: j.get("create_time", 0))
        jobs.sort(key=key, reverse=sort_order == "desc")
        total = len(jobs) + total_finished
        page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
        return _json({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total}})

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        viewer = request_user(request)
        unfinished = await self._listing.unfinished_one(job_id, viewer)
        if unfinished is not None:
            return _json(queued_job(unfinished, full=True))
        row = await self._book.history_row(job_id)
        if row is None or not viewer.sees(row["owner"] or "default"):
            return _json({"error": "Job not found"}, 404)
        return _json(finished_job(row, full=True))

    async def cancel_one(self, request: web.Request) -> web.StreamResponse:
        return _json({"cancelled": await self._cancel(request.match_info["job_id"], request_user(request))})

    async def _cancel(self, job_id: str, viewer: User) -> bool:
        if job_id in self._book.active or self._remote_cancel is None:
            return self._book.cancel_by_id(job_id, viewer)
        if await self._listing.unfinished_one(job_id, viewer) is None:
            return False  # finished, unknown, or another user's
        return await self._remote_cancel(job_id)  # held by another replica, or by none yet

    async def cancel_many(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads((await request.read()).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return _json({"error": "Request body must be valid JSON"}, 400)
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            return _json({"error": "job_ids must be a list"}, 400)
        bad = [i if isinstance(i, str) else repr(i) for i in ids if not isinstance(i, str) or not i.strip() or len(i) > 200]
        if bad:
            return _json({"error": "job_ids contains invalid id(s)", "invalid_ids": bad}, 400)
        cancelled = False
        viewer = request_user(request)
        for job_id in ids:
            cancelled = await self._cancel(job_id, viewer) or cancelled
        return _json({"cancelled": cancelled})
