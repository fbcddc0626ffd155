"""Polling helper for tests that must wait for a condition no event announces."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

__all__ = ["wait_until"]

_T = TypeVar("_T")


def wait_until(
    predicate: Callable[[], Optional[_T]],
    timeout: float = 30.0,
    interval: float = 0.005,
    message: str = "condition",
) -> _T:
    """Call ``predicate`` until it returns something truthy and return that.

    Raises ``TimeoutError`` naming ``message`` after ``timeout`` seconds. The timeout only
    bounds a hang (a loaded CI machine can be slow by seconds), so it is generous. The interval
    is short because the mock answers in microseconds; polling costs nothing noticeable.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)
