"""Faults of single routes of a mock server: the next N requests to a path (or all, until
cleared) answer 500, hang, have their connection cut, or run and then never answer.

Kept apart from the server module so the server only asks "does a rule take this request?".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import List, Optional

from .faults import RouteFault

__all__ = ["RouteRule", "RouteRules", "route_key"]


def route_key(path: str) -> str:
    """A request path without ComfyUI's ``/api`` prefix and trailing slash (``/history/x`` stays)."""
    if path == "/api" or path.startswith("/api/"):
        path = path[len("/api"):] or "/"
    return path.rstrip("/") or "/"


@dataclass
class RouteRule:
    """One route fault: ``path`` matches itself and everything below it (``/history`` takes
    ``/history/<id>``); ``remaining`` None means until cleared; ``delay`` None means a held
    request waits until released (HANG, STALL)."""

    path: str
    kind: RouteFault
    method: Optional[str] = None
    remaining: Optional[int] = None
    delay: Optional[float] = None
    hits: int = 0
    status: int = 500  # the answer's status for RouteFault.STATUS

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        key = route_key(path)
        return key == self.path or key.startswith(self.path + "/")


class RouteRules:
    """The active rules of one server; thread-safe (set from tests, consumed on the loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: List[RouteRule] = []

    def add(self, rule: RouteRule) -> None:
        rule.path = route_key(rule.path)
        rule.method = rule.method.upper() if rule.method else None
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def take(self, method: str, path: str) -> Optional[RouteRule]:
        """The first rule for this request (counted as used), or None."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def active(self) -> List[RouteRule]:
        with self._lock:
            return list(self._rules)
