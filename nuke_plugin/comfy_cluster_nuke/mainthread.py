"""Running calls on Nuke's main thread.

Nuke allows node creation, knob changes, dialogs and renders only on its main thread. A worker
thread asks for them with ``nuke.executeInMainThreadWithResult`` (blocks until done) or
``nuke.executeInMainThread`` (queued, returns at once). Both are wrong in two places, which the
helpers here handle:

* on the main thread itself ``...WithResult`` hangs Nuke, so the call is made directly;
* without a GUI (``nuke -t``) the main-thread queue may never be serviced, so the call is made
  directly too (as ComfyUI-for-Nuke does).

``...WithResult`` prints an exception raised by the call and returns ``None``; :func:`call`
instead carries the result or the exception back in a box and raises it on the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, TypeVar

import nuke

__all__ = ["is_main_thread", "direct", "call", "post"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_main_thread() -> bool:
    """Whether this is Nuke's main thread (the one that runs init.py, menus and the GUI)."""
    return threading.current_thread() is threading.main_thread()


def direct() -> bool:
    """True when a Nuke call may be made right here (main thread, or no GUI at all)."""
    return is_main_thread() or not nuke.GUI


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on the main thread, wait, and return its result.

    An exception raised by ``fn`` is raised here, on the calling thread.
    """
    if direct():
        return fn(*args, **kwargs)
    box: Dict[str, Any] = {}

    def wrapper() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # carried to the worker and raised there
            box["error"] = exc

    nuke.executeInMainThreadWithResult(wrapper)
    # The box, not Nuke's return value, says whether the call ran: some Nuke versions return
    # None for a call that did run.
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        # Nothing in the box: Nuke could not run the call (for example while quitting).
        raise RuntimeError(f"Nuke did not run {getattr(fn, '__name__', fn)!r} on the main thread")
    result: T = box["result"]
    return result


def post(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Queue ``fn(*args, **kwargs)`` for the main thread without waiting (run now if allowed).

    An exception raised by ``fn`` is logged: nobody is waiting for it.
    """

    def wrapper() -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("main-thread call %s failed", getattr(fn, "__name__", fn))

    if direct():
        wrapper()
    else:
        nuke.executeInMainThread(wrapper)
