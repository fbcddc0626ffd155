"""What the ``comfy-cluster`` command shows: live progress, the status table, and the JSON
of ``status --json`` and ``submit --json`` (split from cli.py, which runs the commands)."""

from __future__ import annotations

import datetime
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .errors import JobCancelled
from .jobs import Job, JobEvent
from .status import ServerStatus

__all__ = ["Progress", "job_json", "status_json", "status_table"]


class Progress:
    """Live progress on stderr: one rewritten line on a terminal, event lines otherwise."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.lock = threading.Lock()
        self.done = 0
        self.failed = 0
        self.percent: Dict[int, Tuple[str, int]] = {}
        self._last_draw = 0.0

    def on_event(self, event: JobEvent) -> None:
        idx = event.index if event.index is not None else 0
        with self.lock:
            if event.kind == "progress" and event.max:
                self.percent[idx] = (event.server or "?", int(100 * (event.value or 0) / event.max))
            elif event.kind in ("started", "queued"):
                self.percent[idx] = (event.server or "?", 0)
            elif event.kind == "succeeded":
                self.done += 1
                self.percent.pop(idx, None)
            elif event.kind in ("failed", "cancelled"):
                self.failed += 1
                self.percent.pop(idx, None)
            if self.tty:
                now = time.monotonic()
                if now - self._last_draw > 0.1 or event.kind in ("succeeded", "failed"):
                    self._last_draw = now
                    self._draw()
            elif event.kind in ("submitted", "succeeded", "failed", "cancelled", "retrying"):
                extra = ""
                if event.kind == "retrying":
                    extra = f" {event.from_server} -> {event.to_server}: {event.reason}"
                elif event.reason:
                    extra = f": {event.reason}"
                self.stream.write(f"job {idx} {event.kind} on {event.server}{extra}  [{self.done}/{self.total} done, {self.failed} failed]\n")
                self.stream.flush()

    def _draw(self) -> None:
        per: Dict[str, List[int]] = {}
        for server, pct in self.percent.values():
            per.setdefault(server, []).append(pct)
        servers = "  ".join(f"{s}: {' '.join(f'{p}%' for p in sorted(v, reverse=True))}" for s, v in sorted(per.items()))
        line = f"[{self.done}/{self.total} done, {self.failed} failed]  {servers}"
        self.stream.write("\r" + line[:160].ljust(160))
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            with self.lock:
                self._draw()
            self.stream.write("\n")
            self.stream.flush()


def job_json(job: Job, frame: Optional[int] = None) -> Dict[str, Any]:
    if not job.done:  # still ending on its server after a stop (see cmd_submit)
        out_pending: Dict[str, Any] = {"prompt_id": job.prompt_id, "server": job.server.name if job.server else None,
                                       "status": "cancelling", "outputs": [], "attempts": job.attempts, "seconds": None}
        if frame is not None:
            out_pending["frame"] = frame
        return out_pending
    err = job.exception()
    if err is None:
        res = job.result()
        status = "success"
        outputs = [{"filename": f.filename, "subfolder": f.subfolder, "type": f.type, "node": f.node} for f in res.files]
        seconds: Optional[float] = round(res.seconds, 3)
    else:
        status = "cancelled" if isinstance(err, JobCancelled) else "error"
        if isinstance(err, JobCancelled) and "interrupted on the server" in str(err):
            status = "interrupted"
        outputs = []
        seconds = round(time.monotonic() - job.created, 3)
    out: Dict[str, Any] = {
        "prompt_id": job.prompt_id,
        "server": job.server.name if job.server else None,
        "status": status,
        "outputs": outputs,
        "attempts": job.attempts,
        "seconds": seconds,
    }
    if err is not None:
        out["error"] = str(err)
    if frame is not None:
        out["frame"] = frame
    return out


def _fmt_bytes(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 2**30:.1f}G"


def status_json(status: ServerStatus, now_wall: Optional[float] = None, now_mono: Optional[float] = None) -> Dict[str, Any]:
    """One server's status for ``status --json``: ``last_checked`` and ``next_probe_at`` as
    UTC times (ISO 8601), not the pool's monotonic clock readings."""
    now_wall = time.time() if now_wall is None else now_wall
    now_mono = time.monotonic() if now_mono is None else now_mono
    data = status.to_dict()
    for key in ("last_checked", "next_probe_at"):
        mono = data.get(key)
        if isinstance(mono, (int, float)) and mono > 0:
            wall = datetime.datetime.fromtimestamp(now_wall - (now_mono - mono), datetime.timezone.utc)
            data[key] = wall.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            data[key] = None
    return data


def status_table(statuses: Sequence[ServerStatus]) -> str:
    rows = [["NAME", "URL", "ONLINE", "RUN", "PEND", "DEVICE", "VRAM FREE", "VERSION", "RTT", "ERROR"]]
    for s in statuses:
        online = "yes" if s.online else "no"
        rows.append([
            s.name, s.url, online if s.enabled else f"{online} (disabled)", str(s.queue_running), str(s.queue_pending),
            (s.device_name or "-")[:28], _fmt_bytes(s.vram_free), s.comfyui_version or "-",
            "-" if s.rtt_ms is None else f"{s.rtt_ms:.0f}ms", s.error or "",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
