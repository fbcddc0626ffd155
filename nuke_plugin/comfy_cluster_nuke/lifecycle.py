"""Stopping the plugin's work when the script closes or Nuke quits.

Jobs run on the GPUs until they are cancelled: closing the script (File > Close, opening
another script) or quitting Nuke must not leave them running, nor a gateway listening.

* A copy of a run node pasted next to its original gets an id of its own (``nuke.addOnCreate``,
  GUI only), so the two never share output folders.
* On script close (``nuke.addOnScriptClose``, main thread), which Nuke also runs when it quits,
  every run's jobs are cancelled right there and the hook waits (at most
  :data:`EXIT_WAIT_SECONDS`) until the servers have let them go: when Nuke quits, the process
  may end right after its hooks, before a worker thread would have done it, and whether
  Python's ``atexit`` runs then is not documented (Foundry's callbacks are the documented
  hook). Cancelling is quick: the freeze of the close is one round trip per server.
* At exit (``atexit``, when it runs) the same again, and the gateway is stopped.
"""

from __future__ import annotations

import atexit
import logging
import sys
import time
from typing import Any, List

import nuke

__all__ = ["install", "cancel_all", "at_exit", "EXIT_WAIT_SECONDS"]

log = logging.getLogger(__name__)

EXIT_WAIT_SECONDS = 5.0
_installed = False


def install() -> None:
    """Register the callbacks once per session (main thread, from ``menu.py``/``init``)."""
    global _installed
    if _installed:
        return
    _installed = True
    nuke.addOnScriptClose(_on_script_close)
    # Nuke runs onCreate for every node it creates, loads or pastes (Foundry, "Callbacks"):
    # a pasted copy of a run node gets an id of its own there.
    nuke.addOnCreate(_on_create, nodeClass="Group")
    atexit.register(at_exit)


def _loaded(name: str) -> Any:
    # Only what was used this session: a module never imported has no run and no gateway,
    # and importing it here would cost Nuke's start-up (menu.py) the library's imports.
    return sys.modules.get(f"{__package__}.{name}")


def _runs() -> List[Any]:
    run_mod = _loaded("run")
    return run_mod.all_runs() if run_mod is not None else []


def cancel_all(*, now: bool = False) -> int:
    """Ask every run to cancel; with ``now`` cancel their jobs from this thread. How many."""
    runs = _runs()
    for run in runs:
        run.cancel(now=now)
    return len(runs)


def _on_create() -> None:
    node = nuke.thisNode()
    if not nuke.GUI or node.knob("node_uid") is None:  # not ours (or a farm task: ids stay)
        return
    from . import destinations  # only nuke and .quiet: cheap, and only for our nodes

    destinations.renew_uid_of_copy(node)


def _on_script_close() -> None:
    count = cancel_all(now=True)
    if count:
        log.info("script closed: cancelling %d ComfyUI Cluster run(s)", count)
        _wait_jobs_ended()


def _wait_jobs_ended() -> None:
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for run in _runs():
        if not run.jobs_ended(max(0.0, deadline - time.monotonic())):
            log.warning("%s: its jobs were not confirmed cancelled in %.0f s", run.settings.node_name, EXIT_WAIT_SECONDS)


def at_exit() -> None:
    """Cancel every run's jobs on their servers and stop the gateway (Nuke is quitting)."""
    try:
        cancel_all(now=True)
        deadline = time.monotonic() + EXIT_WAIT_SECONDS
        for run in _runs():
            run.finished.wait(max(0.0, deadline - time.monotonic()))
    except Exception:  # never let a clean-up error hide Nuke's own exit
        log.exception("cancelling runs at exit failed")
    try:
        gateway = _loaded("gateway")
        if gateway is not None:
            gateway.stop()
    except Exception:
        log.exception("stopping the gateway at exit failed")
