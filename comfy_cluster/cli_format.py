"""What the ``comfy-cluster`` command shows: live progress, the status table, and the JSON
of ``status --json`` and ``submit --json`` (split from cli.py, which runs the commands)."""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from .errors import JobCancelled
from .jobs import Job, JobEvent
from .status import ServerStatus

__all__ = ["Progress", "fit", "job_json", "status_json", "status_table", "terminal_width"]


def terminal_width(stream: TextIO, default: int = 80) -> int:
    """The width of the terminal ``stream`` writes to (``COLUMNS`` wins, as in shutil)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(stream.fileno()).columns or default
    except (AttributeError, ValueError, OSError):  # not a terminal, or no file behind it
        return default


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending with ``...`` when cut (ASCII: any console)."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."[: max(width, 0)]


class Progress:
    """Live progress on stderr: on a terminal one line, redrawn in place and never wider than
    the terminal (a wider line wraps, and every redraw then leaves a row behind), with labelled
    figures: ``jobs 7/12 done, 0 failed | mock3-x4: job 9 step 3/5 | ...``; cleared at the end
    so the summary that follows is printed once. Not a terminal: one line per job event.

    Only ``\r`` and spaces are written, no escape codes: Windows 10's classic console shows
    those as text unless VT mode is on.
    """

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.width = terminal_width(stream) if self.tty else 0
        self.lock = threading.Lock()
        self.done = 0
        self.failed = 0
        self.steps: Dict[int, Tuple[str, str]] = {}  # job index -> (server, "step 3/5" or "queued")
        self._last_draw = 0.0
        self._drawn = False
        self._finished = False  # events delivered after finish() must not draw the line again

    def on_event(self, event: JobEvent) -> None:
        idx = event.index if event.index is not None else 0
        with self.lock:
            if event.kind == "progress" and event.max:
                self.steps[idx] = (event.server or "?", f"step {event.value or 0}/{event.max}")
            elif event.kind == "started":
                self.steps[idx] = (event.server or "?", "started")
            elif event.kind == "queued":
                self.steps[idx] = (event.server or "?", "queued")
            elif event.kind == "succeeded":
                self.done += 1
                self.steps.pop(idx, None)
            elif event.kind in ("failed", "cancelled"):
                self.failed += 1
                self.steps.pop(idx, None)
            if self.tty:
                # After finish() the summary owns the screen: a late event (its callback ran
                # after the job was done) changes the figures but draws and prints nothing.
                now = time.monotonic()
                if not self._finished and (now - self._last_draw > 0.1 or event.kind in ("succeeded", "failed")):
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

    def line(self) -> str:
        """The progress line, not yet cut to the terminal's width."""
        running = sorted(self.steps.items(), key=lambda item: (item[1][0], item[0]))
        parts = [f"jobs {self.done}/{self.total} done, {self.failed} failed"]
        parts += [f"{server}: job {idx} {step}" for idx, (server, step) in running]
        return " | ".join(parts)

    def _draw(self) -> None:
        # The last column stays empty: writing there makes some terminals wrap at once.
        usable = max(self.width - 1, 10)
        self.stream.write("\r" + fit(self.line(), usable).ljust(usable))
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Clear the progress line (terminal only); the caller prints the summary."""
        with self.lock:
            self._finished = True
            if self.tty and self._drawn:
                usable = max(self.width - 1, 10)
                self.stream.write("\r" + " " * usable + "\r")
                self.stream.flush()
                self._drawn = False


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


# Dropped in this order when the table is wider than the terminal; then ERROR and NAME are cut.
_DROP_ORDER = ("VERSION", "RTT", "URL", "DEVICE", "VRAM FREE", "PEND")


def status_table(statuses: Sequence[ServerStatus], width: Optional[int] = None) -> str:
    """The servers as a table; with ``width`` (a terminal's) never wider: the least needed
    columns are left out (version, round trip, URL, device, VRAM), then the error and the
    name are cut (``...``)."""
    header = ["NAME", "URL", "ONLINE", "RUN", "PEND", "DEVICE", "VRAM FREE", "VERSION", "RTT", "ERROR"]
    rows = [header]
    for s in statuses:
        online = "yes" if s.online else "no"
        rows.append([
            s.name, s.url, online if s.enabled else f"{online} (disabled)", str(s.queue_running), str(s.queue_pending),
            s.device_name or "-", _fmt_bytes(s.vram_free), s.comfyui_version or "-",
            "-" if s.rtt_ms is None else f"{s.rtt_ms:.0f}ms", s.error or "",
        ])
    keep = list(range(len(header)))

    def widths() -> List[int]:
        return [max(len(r[i]) for r in rows) for i in keep]

    def total() -> int:
        return sum(widths()) + 2 * (len(keep) - 1)

    if width is not None:
        usable = width - 1  # the last column stays empty: some terminals wrap on writing there
        for name in _DROP_ORDER:
            if total() <= usable:
                break
            keep.remove(header.index(name))
        for col in (header.index("ERROR"), header.index("NAME")):
            excess = total() - usable
            if excess > 0:
                limit = max(max(len(r[col]) for r in rows) - excess, len(header[col]) + 2)
                rows = [r[:col] + [fit(r[col], limit)] + r[col + 1:] for r in rows]
    sizes = widths()
    return "\n".join("  ".join(r[i].ljust(w) for i, w in zip(keep, sizes)).rstrip() for r in rows)


CLEAR_SCREEN = "\033[2J\033[H"
_ENABLE_VIRTUAL_TERMINAL_PROCESSING = 0x0004


def ansi_ok(stream: TextIO, platform: str = sys.platform, kernel32: Any = None) -> bool:
    """Whether escape codes written to ``stream`` are obeyed rather than shown as text.

    A terminal on POSIX unless ``TERM=dumb``. On Windows the console must have VT mode, which
    Windows Terminal has and the classic console of Windows 10 gets only when asked
    (SetConsoleMode with ENABLE_VIRTUAL_TERMINAL_PROCESSING): asked here; refused means no.
    ``kernel32`` stands for ``ctypes.windll.kernel32`` (tests give a console of their own).
    """
    if not stream.isatty():
        return False
    if platform != "win32":
        return os.environ.get("TERM", "") != "dumb"
    try:
        if kernel32 is None:  # pragma: no cover - Windows only
            import ctypes
            import msvcrt

            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
            handle = msvcrt.get_osfhandle(stream.fileno())  # type: ignore[attr-defined]
        else:
            handle = stream.fileno()
        import ctypes as _ctypes

        mode = _ctypes.c_uint32()
        if not kernel32.GetConsoleMode(handle, _ctypes.byref(mode)):
            return False
        if mode.value & _ENABLE_VIRTUAL_TERMINAL_PROCESSING:
            return True
        return bool(kernel32.SetConsoleMode(handle, mode.value | _ENABLE_VIRTUAL_TERMINAL_PROCESSING))
    except (AttributeError, OSError, ValueError):
        return False
