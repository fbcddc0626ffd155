"""Every way a terminal command can be stopped, turned into one exception in the main thread.

Ctrl-C (SIGINT), ``kill`` (SIGTERM), a closed terminal (SIGHUP), and on Windows Ctrl-Break
(SIGBREAK) and closing the console window, logging off or shutting down (console control
events, which Python's ``signal`` module does not see) all raise :class:`Stopped` in the main
thread, once: the command then cancels its jobs on their servers. Signals arriving while it
cancels are ignored, so a second Ctrl-C cannot leave jobs running on the GPUs.

The main thread must wait in slices (``wait(0.2)`` in a loop): on Windows before Python 3.14 a
wait on a lock without a timeout does not return for Ctrl-C.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Callable, Dict, List, Optional, Type

__all__ = ["Stopped", "StopSignals", "wait_sliced"]

# Windows console control events that end the process when the handler returns.
CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT = 2, 5, 6
# Windows ends the process 5 s after CTRL_CLOSE_EVENT (or as soon as the handler returns).
# The command gets until CONSOLE_DEADLINE_SECONDS to cancel and print what it must; the handler
# holds the process until the command is done, or until CONSOLE_GRACE_SECONDS at most.
WINDOWS_CLOSE_SECONDS = 5.0
CONSOLE_DEADLINE_SECONDS = 4.0
CONSOLE_GRACE_SECONDS = 4.8
#: Seconds a command waits for its jobs' cancels to be confirmed after any other stop.
CANCEL_WAIT_SECONDS = 15.0


class Stopped(KeyboardInterrupt):
    """The command was asked to stop; ``exit_code`` is 130 for Ctrl-C, else 128 + the signal."""

    def __init__(self, signum: int, deadline: Optional[float] = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 130 if signum == signal.SIGINT else 128 + int(signum)
        #: time.monotonic() by which the command must have cancelled and reported its jobs:
        #: a closed Windows console leaves seconds, not the usual CANCEL_WAIT_SECONDS.
        self.deadline = deadline if deadline is not None else time.monotonic() + CANCEL_WAIT_SECONDS


def _stop_signals() -> List[int]:
    names = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"]  # SIGHUP: POSIX; SIGBREAK: Windows
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


class StopSignals:
    """Installs the handlers for the duration of a ``with`` block (main thread only)."""

    def __init__(self) -> None:
        self.stopping = False
        self._old: Dict[int, Any] = {}
        self._done = threading.Event()
        self._console_handler: Any = None
        self._console_deadline: Optional[float] = None  # set by a console close, log-off, shutdown

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only
        for signum in _stop_signals():
            try:
                self._old[signum] = signal.signal(signum, self._on_signal)
            except (OSError, ValueError):  # not settable here
                pass
        if sys.platform == "win32":  # pragma: no cover - Windows only
            self._install_console_handler()
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()
        self._done.set()  # a console-close handler waiting for the cancel may return now
        if self._console_handler is not None:  # pragma: no cover - Windows only
            import ctypes

            ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, False)  # type: ignore[attr-defined]
            self._console_handler = None  # a console-close handler waiting for the cancel may return now

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.stopping:
            return  # already cancelling: a second Ctrl-C must not cut the cancel short
        self.stopping = True
        raise Stopped(signum, self._console_deadline)

    def on_console_event(self, ctrl_type: int) -> bool:
        """The Windows console control handler (runs in a thread of its own).

        Close, log-off and shutdown interrupt the main thread like Ctrl-Break would, then
        hold the process until the command has cancelled its jobs (or the grace time is up);
        Ctrl-C and Ctrl-Break are left to Python's own handling (False).
        """
        if ctrl_type not in (CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT):
            return False
        start = time.monotonic()
        signum = getattr(signal, "SIGBREAK", signal.SIGTERM)
        if not self.stopping:
            self._console_deadline = start + CONSOLE_DEADLINE_SECONDS
            if sys.version_info >= (3, 10):
                _thread.interrupt_main(signum)
            else:  # 3.9: only SIGINT can be simulated
                _thread.interrupt_main()
        # Returning lets Windows end the process at once: hold it until the command is done.
        self._done.wait(max(0.0, start + CONSOLE_GRACE_SECONDS - time.monotonic()))
        return True

    def _install_console_handler(self) -> None:  # pragma: no cover - Windows only
        import ctypes
        from ctypes import wintypes

        routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)  # type: ignore[attr-defined]
        self._console_handler = routine(lambda ctrl: bool(self.on_console_event(int(ctrl))))
        ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, True)  # type: ignore[attr-defined]


def wait_sliced(wait: Callable[[float], bool], timeout: Optional[float] = None, slice_seconds: float = 0.2) -> bool:
    """Call ``wait(slice)`` until it returns True or ``timeout`` passes, so that signals are
    handled between slices (see the module docstring). Returns the last result."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = slice_seconds if deadline is None else max(0.0, min(slice_seconds, deadline - time.monotonic()))
        if wait(step):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
