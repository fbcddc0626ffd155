"""Cache affinity: an identical workflow goes to the server that ran it last.

ComfyUI keeps the outputs of the last prompt it ran and reuses every node whose inputs did not
change: the same prompt again finishes at once there (``execution_cached`` lists every node)
but runs in full anywhere else. :class:`CacheAffinity` wraps a strategy: when a workflow is the
one a candidate server was last given, that server is chosen; otherwise the wrapped strategy
chooses. It only ever picks among the candidates the pool allows (online, with room, able).
A wrapped strategy that places jobs waiting in the pool's queue (``place``, as
``warm_models``) keeps doing so through the wrapper.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .balance import Candidate, strategy_name
from .warm import Warmth, warmth_of

__all__ = ["CacheAffinity", "fingerprint"]


def fingerprint(workflow: Optional[Mapping[str, Any]]) -> Optional[str]:
    """A digest of a workflow's content, node ids aside: what ComfyUI's cache keys on (see
    :mod:`comfy_cluster.warm`); None when there is no workflow."""
    if workflow is None:
        return None
    return warmth_of(workflow).prompt


class CacheAffinity:
    """A strategy: the server last given the same workflow, else ``inner``'s choice.

    Thread-safe (the pool selects from its dispatcher and from callers). Its ``name`` is the
    wrapped strategy's, so the pool still reports the strategy the user chose. While not
    ``enabled`` it only passes the choice on (no fingerprint is computed).
    """

    #: The wrapped strategy's ``place`` through the affinity, when it has one (else None: the
    #: scheduler then picks with ``select``).
    place: Optional[Callable[..., Optional[Candidate]]] = None

    def __init__(self, inner: Any, *, enabled: bool = True) -> None:
        self.inner = inner
        if callable(getattr(inner, "place", None)):
            self.place = self._place
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
        self._remember(chosen, digest)
        return chosen

    def _place(
        self, candidates: Sequence[Candidate], eligible: Sequence[Candidate], warmth: Warmth, waiting: Mapping[Tuple[str, ...], int],
        **context: Any,
    ) -> Optional[Candidate]:
        # ``context`` (how long the job waited, how long running jobs ran) goes to ``inner``.
        digest = warmth.prompt if self.enabled else None
        cached = None
        if digest is not None:
            with self._lock:
                cached = next((c for c in candidates if self._last.get(c.name) == digest), None)
        chosen = cached if cached is not None else self.inner.place(candidates, eligible, warmth, waiting, **context)
        if chosen is not None:
            self._remember(chosen, digest)
        return chosen

    def _remember(self, chosen: Any, digest: Optional[str]) -> None:
        name = chosen.name if isinstance(chosen, Candidate) else getattr(chosen, "name", chosen)
        if isinstance(name, str) and digest is not None:
            with self._lock:
                self._last[name] = digest
