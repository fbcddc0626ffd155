"""Workflows and small helpers shared by the tests."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Dict, List, Optional

_seeds = itertools.count(1)


def sleep_workflow(seconds: float = 0.05, steps: int = 2, seed: Optional[int] = None, prefix: str = "t") -> Dict[str, Any]:
    """EmptyImage -> TestSleep -> SaveImage. A new seed by default, so ComfyUI's cache never
    turns the job into a no-op."""
    seed = next(_seeds) if seed is None else seed
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 1000}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def fail_workflow(message: str = "boom") -> Dict[str, Any]:
    seed = next(_seeds)
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": seed % 1000}},
        "2": {"class_type": "TestFail", "inputs": {"image": ["1", 0], "message": message}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}},
    }


def load_image_workflow(seconds: float = 0.05) -> Dict[str, Any]:
    seed = next(_seeds)
    return {
        "10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["10", 0], "seconds": seconds, "steps": 1, "seed": seed}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "li"}},
    }


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy (for states no event announces, e.g. a mock's queue).
    The timeout only bounds a hang, generously: a loaded CI machine can be slow by seconds."""
    deadline = time.monotonic() + timeout
    ev = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        ev.wait(0.01)


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ThawableClock(FakeClock):
    """A FakeClock that can be set running: real time on from where it stands."""

    def __init__(self) -> None:
        super().__init__()
        self._thawed_at: Optional[float] = None

    def thaw(self) -> None:
        self._thawed_at = time.monotonic()

    def __call__(self) -> float:
        if self._thawed_at is None:
            return self.now
        return self.now + (time.monotonic() - self._thawed_at)


def kinds(events: List[Any]) -> List[str]:
    return [e.kind for e in events]


def servers_of(cluster: Any, **extra: Any) -> List[Dict[str, Any]]:
    return [dict({"name": s.name, "url": s.url}, **extra) for s in cluster.servers]


def symlink_dir(target: Any, link: Any) -> None:
    """A folder link leading to ``target``: a symbolic link, or on Windows without the
    symlink privilege (the default for artists) a junction, which needs none."""
    import os
    import sys

    try:
        os.symlink(target, link, target_is_directory=True)
    except OSError:
        if sys.platform != "win32":
            raise
        import _winapi  # Windows only

        _winapi.CreateJunction(str(target), str(link))


def symlink_file(target: Any, link: Any) -> bool:
    """A file symlink if this OS lets the user make one (False on Windows without the privilege)."""
    import os
    import sys

    try:
        os.symlink(target, link)
        return True
    except OSError:
        if sys.platform != "win32":
            raise
        return False


#: One tick of the coarsest monotonic clock a CI runner has (Windows: 15.6 ms). A wait of
#: ``t`` seconds can measure up to one tick short there; lower bounds allow for it.
CLOCK_TICK = 0.016


def windows_argv(command_line: str) -> List[str]:
    """``command_line`` split as a Windows program's C runtime splits it (CommandLineToArgvW):
    what ``setx``, ``python.exe`` and ``comfy-cluster.exe`` receive from cmd.exe. Backslashes
    are literal except before a double quote (2n -> n and the quote toggles quoting; 2n+1 ->
    n and a literal quote); single quotes are ordinary characters."""
    args: List[str] = []
    current: List[str] = []
    quoted = started = False
    i = 0
    while i < len(command_line):
        c = command_line[i]
        if c == "\\":
            n = len(command_line[i:]) - len(command_line[i:].lstrip("\\"))
            if command_line[i + n:i + n + 1] == '"':
                current.append("\\" * (n // 2))
                if n % 2:
                    current.append('"')
                    i += n + 1
                else:
                    i += n
            else:
                current.append("\\" * n)
                i += n
            continue
        if c == '"':
            if quoted and command_line[i + 1:i + 2] == '"':  # "" inside quotes: one literal quote
                current.append('"')
                i += 2
                continue
            quoted = not quoted
            started = True
        elif c in " \t" and not quoted:
            if current or started:
                args.append("".join(current))
            current, started = [], False
        else:
            current.append(c)
        i += 1
    if current or started:
        args.append("".join(current))
    return args


def callbacks_delivered(job: Any, timeout: float = 30.0) -> bool:
    """Wait until every on_event call of ``job`` has run: a done-callback added now runs on
    the pool's callback thread after all of them (``result()`` returns before they may have)."""
    delivered = threading.Event()
    job.add_done_callback(lambda _job: delivered.set())
    return delivered.wait(timeout)


class OsWith:
    """The ``os`` module with some functions replaced, to patch into one module under test
    (``monkeypatch.setattr(localfiles, "os", OsWith(unlink=...))``): patching ``os`` itself
    would also reach every other thread and fixture still running (a mock server's clean-up
    calls ``os.unlink`` after the test's body, before the patch is undone)."""

    def __init__(self, **overrides: Any) -> None:
        import os

        self._os = os
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._os, name)
