"""Cache affinity: an identical workflow goes to the server that ran it last.

ComfyUI keeps the outputs of the last prompt it ran and reuses every node whose inputs did not
change: the same prompt again finishes at once there (``execution_cached`` lists every node)
but runs in full anywhere else. :class:`CacheAffinity` wraps a strategy: when a workflow is the
one a candidate server was last given, that server is chosen; otherwise the wrapped strategy
chooses. It only ever picks among the candidates the pool allows (online, with room, able).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, Dict, Mapping, Optional, Sequence

from .balance import Candidate, strategy_name

__all__ = ["CacheAffinity", "fingerprint"]


def fingerprint(workflow: Optional[Mapping[str, Any]]) -> Optional[str]:
    """A digest of a workflow's content (None when there is none, or it is not JSON)."""
    if workflow is None:
        return None
    try:
        text = json.dumps(workflow, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CacheAffinity:
    """A strategy: the server last given the same workflow, else ``inner``'s choice.

    Thread-safe (the pool selects from its dispatcher and from callers). Its ``name`` is the
    wrapped strategy's, so the pool still reports the strategy the user chose. While not
    ``enabled`` it only passes the choice on (no fingerprint is computed).
    """

    def __init__(self, inner: Any, *, enabled: bool = True) -> None:
        self.inner = inner
        self.enabled = enabled
        self.name = strategy_name(inner)
        self._lock = threading.Lock()
        self._last: Dict[str, str] = {}  # server name -> fingerprint of the last workflow given

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Mapping[str, Any]] = None) -> Any:
        if not self.enabled:
            return self.inner.select(candidates, workflow)
        digest = fingerprint(workflow)
        with self._lock:
            cached = next((c for c in candidates if digest is not None and self._last.get(c.name) == digest), None)
        chosen = cached if cached is not None else self.inner.select(candidates, workflow)
        name = chosen.name if isinstance(chosen, Candidate) else getattr(chosen, "name", chosen)
        if isinstance(name, str) and digest is not None:
            with self._lock:
                self._last[name] = digest
        return chosen
