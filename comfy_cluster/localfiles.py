"""Writing local files the way Windows allows: claim, replace and remove with a short retry.

On Windows a file that another program holds open (Nuke's Read node or Viewer, an antivirus
scan, Explorer's preview pane) cannot be replaced or removed for a moment: ``os.replace`` and
``os.unlink`` raise ``PermissionError`` ("being used by another process"). These helpers retry
briefly, then raise :class:`~comfy_cluster.errors.LocalFileError` naming the file, never a bare
``OSError`` (which would reach a user as a traceback).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from .errors import LocalFileError

__all__ = ["claim", "replace", "remove", "remove_quietly", "LOCK_RETRY_SECONDS"]

log = logging.getLogger(__name__)

#: How long a file held by another program is waited for before giving up.
LOCK_RETRY_SECONDS = 2.0
# Tests replace these to simulate a lock without waiting for it.
_sleep: Callable[[float], None] = time.sleep
_clock: Callable[[], float] = time.monotonic


def _retry(op: Callable[[], None], what: str, path: str) -> None:
    deadline = _clock() + LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            op()
            return
        except PermissionError as exc:
            # Windows' sharing violation; on POSIX a real permission problem, which the retry
            # only delays by LOCK_RETRY_SECONDS before the same error.
            if _clock() >= deadline:
                raise LocalFileError(f"cannot {what} {path}: {_reason(exc)} (held by another program?)", path=path) from None
            _sleep(delay)
            delay = min(delay * 2, 0.25)
        except OSError as exc:
            raise LocalFileError(f"cannot {what} {path}: {_reason(exc)}", path=path) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def claim(path: str) -> bool:
    """Create ``path`` empty if no file of that name exists (atomically: O_EXCL); False if one does.

    Two threads or processes claiming one name never both win, so a claimed name is never
    another job's file.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        return False
    except OSError as exc:
        if isinstance(exc, PermissionError) and os.path.exists(path):
            return False  # Windows: a file being deleted (pending delete) still holds the name
        raise LocalFileError(f"cannot create {path}: {_reason(exc)}", path=path) from None
    os.close(fd)
    return True


def replace(src: str, dst: str) -> None:
    """``os.replace(src, dst)``, retried while another program holds ``dst``."""
    _retry(lambda: os.replace(src, dst), "replace", dst)


def remove(path: str) -> None:
    """Remove ``path`` (gone already is fine), retried while another program holds it."""

    def op() -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    _retry(op, "remove", path)


def remove_quietly(path: Optional[str]) -> None:
    """Clean-up after a failure: remove ``path`` but never raise (the first error matters)."""
    if not path:
        return
    try:
        remove(path)
    except LocalFileError as exc:
        log.warning("%s", exc)
