"""Running a "ComfyUI Cluster Run" node: the buttons, and ``start``/``submit`` for scripts.

* :func:`execute` (Execute), :func:`execute_current_frame` (Current frame) and
  :func:`rerun_failed` (Re-run failed) read and check the knobs on the main thread, then return
  at once with the run going on in a worker thread: Nuke stays responsive.
* :func:`start` is the same for the Script Editor: it returns the run's handle
  (:class:`~.runner.Run`: ``wait()``, ``cancel()``, ``paths``, ``error``).
* :func:`submit` blocks until the frames are done and returns the files, for ``nuke -t`` and
  worker threads. On the GUI main thread it refuses (blocking there would freeze Nuke and the
  progress bar it needs): use :func:`start` there.
* :func:`cancel` is the Cancel button (the ProgressTask's cancel does the same).

What a run does is in :mod:`.runner`; where it writes, :mod:`.destinations`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import List, Optional, Sequence, Union

import nuke

from comfy_cluster import ComfyClusterError

from . import destinations, ledger, mainthread
from . import node as node_mod
from .report import describe_error
from .runner import POLL_SECONDS, Run, RunCancelled, pool_options
from .settings import RunError, Settings, default_strategy, read_settings, set_default_strategy

__all__ = [
    "RunError",
    "RunCancelled",
    "Run",
    "Settings",
    "execute",
    "execute_current_frame",
    "rerun_failed",
    "start",
    "submit",
    "cancel",
    "reap",
    "is_running",
    "current",
    "all_runs",
    "read_settings",
    "default_strategy",
    "set_default_strategy",
    "describe_error",
    "pool_options",
    "POLL_SECONDS",
]

log = logging.getLogger(__name__)

# Runs in progress by the node's id (destinations.node_uid), never by its name: renaming the
# node, or moving it into a group (a cut and paste: a new node object, same id), while it runs
# must leave Cancel working and Execute refusing a second run.
_runs: dict = {}
_runs_lock = threading.Lock()


def _as_node(node: Union[nuke.Node, str]) -> nuke.Node:
    if isinstance(node, str):
        found = nuke.toNode(node)
        if found is None:
            raise RunError(f"no node named {node}")
        return found
    return node


def _forget(run: Run) -> None:
    with _runs_lock:
        if _runs.get(run.settings.uid) is run:
            del _runs[run.settings.uid]


def _register(node: nuke.Node, settings: Settings, *, interactive: bool, dialogs: bool) -> Run:
    with _runs_lock:
        if settings.uid in _runs:
            raise RunError(f"{settings.node_name} is already running; cancel it first.")
        run = Run(node, settings, interactive=interactive, dialogs=dialogs, on_end=_forget)
        _runs[settings.uid] = run
    return run


def _failed_frames(node: nuke.Node) -> List[int]:
    text = str(node["failed_frames"].value()).split()
    return [int(t) for t in text if t.lstrip("-").isdigit()]


def _button(node: nuke.Node, frames: Optional[Sequence[int]] = None, reuse_version: str = "", carry_from: str = "") -> Optional[Run]:
    try:
        settings = read_settings(node, frames=frames, reuse_version=reuse_version, carry_from=carry_from)
        run = _register(node, settings, interactive=bool(nuke.GUI), dialogs=True)
    except RunError as exc:
        node_mod.set_status(node, f"not started - {exc}")
        nuke.message(str(exc))
        return None
    if not nuke.GUI:
        # No event loop to come back to: run here, like submit() (nuke -t pressing a button).
        try:
            run.run()
        except ComfyClusterError:
            pass  # reported
        return run
    node_mod.set_status(node, "starting")
    run.start()
    return run


def execute(node: nuke.Node) -> Optional[Run]:
    """The Execute button (main thread): the node's whole range, in the background."""
    return _button(node)


def execute_current_frame(node: nuke.Node) -> Optional[Run]:
    """The Current frame button: only the frame the Viewer shows, for a quick look. Its new
    version also holds the other frames of the last run (linked), so the Read keeps showing
    that run around the new frame instead of holding the one new frame over the range."""
    return _button(node, frames=[int(nuke.frame())], carry_from=str(node["last_version"].value()))


def rerun_failed(node: nuke.Node) -> Optional[Run]:
    """The Re-run failed button: the frames that failed last time, into the same version."""
    failed = _failed_frames(node)
    if not failed:
        node_mod.set_status(node, "no failed frame to run again")
        return None
    return _button(node, frames=failed, reuse_version=str(node["last_version"].value()))  # an absolute path


def start(node: Union[nuke.Node, str], frames: Optional[Sequence[int]] = None) -> Run:
    """Start a run in the background and return its handle (Script Editor; main thread).

    Raises :class:`RunError` when it cannot start. ``handle.wait(timeout)`` must not be called
    on Nuke's GUI main thread (it would freeze Nuke); poll ``handle.finished.is_set()``.
    """
    target = mainthread.call(_as_node, node)
    settings = mainthread.call(read_settings, target, frames=frames)
    run = _register(target, settings, interactive=bool(nuke.GUI), dialogs=False)
    run.start()
    return run


def submit(node: Union[nuke.Node, str], frames: Optional[Sequence[int]] = None, version: str = "") -> List[str]:
    """Run ``node`` and wait (``nuke -t``, or a worker thread): returns the frame files in order
    (in a multi-view script, each frame's file per view, in the views' order).

    ``frames`` overrides the node's range; ``version`` (``"v004"``, or a folder) writes into that
    version folder instead of a new one: farm tasks of one node's range share a version.

    Raises :class:`RunError` (with ComfyUI's words) when frames failed, or
    :class:`RunCancelled`. Without a GUI the progress is printed to the terminal. Ctrl+C cancels
    every job on its server. On the GUI main thread it raises RunError at once: use
    :func:`start` there.
    """
    if nuke.GUI and mainthread.is_main_thread():
        raise RunError(
            "submit() waits for the whole run and would freeze Nuke here: on the GUI use "
            "start(node), which returns a handle at once (or call submit from a thread, or under nuke -t)."
        )
    target = mainthread.call(_as_node, node)
    settings = mainthread.call(read_settings, target, frames=frames, reuse_version=version)
    run = _register(target, settings, interactive=bool(nuke.GUI), dialogs=False)
    try:
        return run.run()
    except KeyboardInterrupt:
        raise RunCancelled(f"{settings.node_name}: interrupted") from None


def reap(node: Union[nuke.Node, str], version: str) -> int:
    """Cancel, on their servers, the jobs that runs killed without a signal left in ``version``
    of ``node`` (their job ledgers, see :mod:`.ledger`); how many. Not on the GUI main thread
    (it talks to the servers). The farm script's ``--reap``."""
    from comfy_cluster.environment import servers_from_env

    target = mainthread.call(_as_node, node)
    base = mainthread.call(destinations.output_base, target)
    servers, _ = servers_from_env()
    return ledger.reap(os.path.join(base, version), servers)


def cancel(node: nuke.Node) -> bool:
    """The Cancel button: cancel the node's run, every job where it is. False if none runs."""
    with _runs_lock:
        run = _runs.get(destinations.node_uid(node))
    if run is None:
        node_mod.set_status(node, "nothing to cancel")
        return False
    run.cancel()
    node_mod.set_status(node, "cancelling")
    return True


def current(node: nuke.Node) -> Optional[Run]:
    """The node's run in progress, if any (main thread)."""
    with _runs_lock:
        return _runs.get(destinations.node_uid(node))


def is_running(node: nuke.Node) -> bool:
    """Whether ``node`` has a run in progress (main thread)."""
    return current(node) is not None


def all_runs() -> List[Run]:
    """Every run in progress (any thread)."""
    with _runs_lock:
        return list(_runs.values())


def _wait_all(timeout: float) -> bool:
    """Wait for every background run to end (for tests and shutdown); False on timeout."""
    deadline = time.monotonic() + timeout
    for run in all_runs():
        if not run.finished.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True
