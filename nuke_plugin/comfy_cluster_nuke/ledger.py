"""A run's jobs on record in its version folder, so that a task killed without a signal does not
leave its jobs on the GPUs.

A farm task stopped politely (SIGTERM, Ctrl-Break) cancels its jobs itself. One *killed*
(Deadline's ``TerminateProcess`` on Windows, SIGKILL, a machine lost) cannot. So each run keeps
``.jobs-<random>.json`` in its version folder: every job's server and prompt id, rewritten when a
job reaches a server and touched every :data:`HEARTBEAT` seconds; the run removes it when it
ends. A ledger untouched for :data:`STALE` seconds is a dead run's: :func:`reap` (called by
every run before it sends its own jobs, and by the farm script's ``--reap``) cancels its jobs on
their servers (a pending one deleted, a running one interrupted only when the server's queue
shows it running: never another artist's job) and removes it and the dead run's working
folders. The file's modification time is the heartbeat, so tasks on other machines sharing the
folder see it too. No ``nuke`` here: any thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from comfy_cluster import ComfyClusterError, localfiles
from comfy_cluster.attempt import cancel_on_server
from comfy_cluster.client import ComfyClient
from comfy_cluster.config import ServerConfig

__all__ = ["HEARTBEAT", "STALE", "PREFIX", "WORKING_PREFIXES", "JobLedger", "reap"]

log = logging.getLogger(__name__)

HEARTBEAT = 10.0  # seconds between touches of a running task's ledger
STALE = 60.0  # a ledger (or working folder) untouched this long belongs to a dead task
PREFIX = ".jobs-"
WORKING_PREFIXES = (".inputs-", ".download-", ".preview-")  # the runs' working folders (see .runner)
_clock: Callable[[], float] = time.monotonic  # the heartbeat's clock (tests replace it)


class JobLedger:
    """The ledger of one run in ``version_dir`` (created at once, empty). The run's working
    folders are named with its :attr:`token` (:meth:`working_prefix`), so a reap removes the
    dead run's and never a live one's."""

    def __init__(self, version_dir: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix=PREFIX, suffix=".json", dir=version_dir)
        os.close(fd)
        self.token = os.path.basename(self.path)[len(PREFIX) : -len(".json")]
        self._jobs: Dict[str, str] = {}  # prompt id -> server name
        self._written = _clock()
        self._write()

    def _write(self) -> None:
        temp = self.path + ".tmp"
        with open(temp, "w", encoding="utf-8") as fh:
            json.dump({"pid": os.getpid(), "jobs": [{"prompt_id": p, "server": s} for p, s in self._jobs.items()]}, fh)
        localfiles.replace(temp, self.path)
        self._written = _clock()

    def update(self, jobs: Iterable[Any]) -> None:
        """Record the jobs that reached a server since the last call; touch the file when a
        heartbeat is due. Never raises (a ledger problem must not fail the frames)."""
        changed = False
        for job in jobs:
            prompt_id, server = job.prompt_id, job.server
            if prompt_id and server is not None and self._jobs.get(prompt_id) != server.name:
                self._jobs[prompt_id] = server.name
                changed = True
        if changed or _clock() - self._written >= HEARTBEAT:
            try:
                self._write()
            except (OSError, ComfyClusterError) as exc:
                log.warning("job ledger %s: %s", self.path, exc)

    def working_prefix(self, kind: str) -> str:
        """``.inputs-<token>-`` for ``kind`` ``.inputs-`` (one of :data:`WORKING_PREFIXES`)."""
        return f"{kind}{self.token}-"

    def close(self) -> None:
        """The run ended: its jobs are its own business no more."""
        localfiles.remove_quietly(self.path)


def _stale(path: str, now: float) -> bool:
    try:
        return now - os.path.getmtime(path) >= STALE
    except OSError:
        return False


def _cancel(entries: Sequence[Dict[str, Any]], servers: Dict[str, ServerConfig]) -> int:
    cancelled = 0
    by_server: Dict[str, list] = {}
    for entry in entries:
        by_server.setdefault(str(entry.get("server")), []).append(str(entry.get("prompt_id")))
    for name, prompt_ids in by_server.items():
        config = servers.get(name)
        if config is None:
            log.warning("job ledger: server %s is not configured here; its jobs %s are left", name, prompt_ids)
            continue
        client = ComfyClient(config)
        try:
            for prompt_id in prompt_ids:
                cancel_on_server(client, prompt_id)
                cancelled += 1
        except ComfyClusterError as exc:
            log.warning("job ledger: cannot cancel on %s: %s", name, exc)
        finally:
            client.close()
    return cancelled


def reap(version_dir: str, servers: Iterable[ServerConfig], now: Optional[float] = None) -> int:
    """Cancel the jobs of the dead runs' ledgers in ``version_dir`` and remove what those runs
    left; returns how many jobs were cancelled. ``now``: wall-clock time (file times)."""
    when = time.time() if now is None else now
    configs = {s.name: s for s in servers}
    try:
        names = os.listdir(version_dir)
    except OSError:
        return 0
    cancelled = 0
    for name in sorted(names):
        path = os.path.join(version_dir, name)
        if not (name.startswith(PREFIX) and name.endswith(".json") and _stale(path, when)):
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                entries = json.load(fh).get("jobs", [])
        except (OSError, ValueError, AttributeError):
            entries = []
        cancelled += _cancel([e for e in entries if isinstance(e, dict)], configs)
        token = name[len(PREFIX) : -len(".json")]
        for other in names:  # the dead run's working folders (named with its token)
            if any(other.startswith(f"{kind}{token}-") for kind in WORKING_PREFIXES):
                shutil.rmtree(os.path.join(version_dir, other), ignore_errors=True)
        localfiles.remove_quietly(path)
        log.info("job ledger %s: a dead run's %d job(s) cancelled", name, len(entries))
    return cancelled
