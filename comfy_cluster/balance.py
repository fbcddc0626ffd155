"""Balancing strategies: pick one server among the candidates that passed the pool's filters.

A strategy is any object with ``select(candidates, workflow)`` or any callable
``fn(candidates, workflow)``; it returns one of the candidates (or its ``server`` or name).
Built-in strategies are pure functions of the snapshots (plus a shared counter for
round-robin and a random source for tie-breaks), so they are tested table-driven.
"""

from __future__ import annotations

import math
import operator
import random
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

from .config import ServerConfig
from .errors import ConfigError
from .status import ServerStatus

__all__ = [
    "Candidate",
    "Balancer",
    "LeastLoaded",
    "RoundRobin",
    "Priority",
    "FastestCompletion",
    "STRATEGIES",
    "get_strategy",
    "expected_seconds",
    "strategy_name",
]

Workflow = Mapping[str, Any]


class Candidate:
    """A server that passed the filters, with its current snapshot. Read-only.

    ``index`` is its position in the pool's configuration; ``expected_seconds`` the job
    duration expected there (learned from finished jobs, else derived from ``weight``).
    ``load`` is ``status.load``; ``score`` is ``load / weight`` (what least-loaded compares).
    They are computed once, because selection runs on every submission.
    """

    __slots__ = ("server", "status", "index", "expected_seconds", "name", "load", "score")

    def __init__(self, server: ServerConfig, status: ServerStatus, index: int, expected_seconds: float) -> None:
        self.server = server
        self.status = status
        self.index = index
        self.expected_seconds = expected_seconds
        self.name = server.name
        self.load = status.load
        self.score = self.load / server.weight

    def __repr__(self) -> str:
        return f"Candidate({self.name!r}, load={self.load}, expected_seconds={self.expected_seconds:.3g})"


@runtime_checkable
class Balancer(Protocol):
    """What a strategy object offers."""

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow]) -> Any: ...


def expected_seconds(statuses: Sequence[ServerStatus], servers: Sequence[ServerConfig], default: float = 1.0) -> List[float]:
    """Expected job duration per server, in config order.

    A server with finished jobs uses its learned average. Others are estimated from ``weight``
    relative to the servers that have data (``weight`` is a speed hint: 2 means twice as fast),
    or ``default / weight`` when no server has data yet.
    """
    ref: List[float] = [
        st.avg_job_seconds * sv.weight for st, sv in zip(statuses, servers) if st.avg_job_seconds
    ]
    base = sum(ref) / len(ref) if ref else default
    return [st.avg_job_seconds if st.avg_job_seconds else base / sv.weight for st, sv in zip(statuses, servers)]


def _pick_lowest(candidates: Sequence[Candidate], key: Callable[[Candidate], float], rng: random.Random) -> Candidate:
    best = math.inf
    tied: List[Candidate] = []
    for c in candidates:
        k = key(c)
        if k < best - 1e-12:
            best = k
            tied = [c]
        elif k <= best + 1e-12:
            tied.append(c)
    # Ties broken at random: always taking the first would pile every client onto it.
    return tied[0] if len(tied) == 1 else rng.choice(tied)


_score = operator.attrgetter("score")


class LeastLoaded:
    """Fewest jobs (running + pending + ours not yet seen) per unit of ``weight``; random tie-break."""

    name = "least_loaded"

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Candidate:
        return _pick_lowest(candidates, _score, self._rng)


class RoundRobin:
    """Cycles over the servers that pass the filters, in config order; one cursor for all threads."""

    name = "round_robin"

    def __init__(self, rng: Optional[random.Random] = None) -> None:  # no randomness: rng unused
        self._lock = threading.Lock()
        self._last = -1

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Candidate:
        ordered = sorted(candidates, key=lambda c: c.index)
        with self._lock:
            # The next server after the last one picked, so the cycle holds even when the
            # set of candidates changes between calls.
            chosen = next((c for c in ordered if c.index > self._last), ordered[0])
            self._last = chosen.index
        return chosen


class Priority:
    """The lowest ``priority`` number that has a candidate; least loaded within that tier.

    Candidates are already filtered (online, not full), so the next tier is used only when the
    whole preferred tier is offline or full.
    """

    name = "priority"

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._inner = LeastLoaded(rng)

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Candidate:
        tier = min(c.server.priority for c in candidates)
        return self._inner.select([c for c in candidates if c.server.priority == tier], workflow)


class FastestCompletion:
    """The smallest estimated finish time: (jobs ahead + 1) x expected job duration there."""

    name = "fastest_completion"

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Candidate:
        return _pick_lowest(candidates, lambda c: (c.load + 1) * c.expected_seconds, self._rng)


STRATEGIES: Dict[str, Callable[[Optional[random.Random]], Any]] = {
    "least_loaded": LeastLoaded,
    "round_robin": RoundRobin,
    "priority": Priority,
    "fastest_completion": FastestCompletion,
}

StrategyLike = Union[str, Balancer, Callable[[Sequence[Candidate], Optional[Workflow]], Any]]


def get_strategy(strategy: StrategyLike, rng: Optional[random.Random] = None) -> Any:
    """A strategy object from a name, an object with ``select``, or a callable.

    ``rng`` is the random source of a named strategy's tie-breaks (tests seed it).
    """
    if isinstance(strategy, str):
        key = strategy.strip().lower().replace("-", "_")
        if key not in STRATEGIES:
            valid = ", ".join(sorted(STRATEGIES))
            raise ConfigError(f"strategy: unknown strategy {strategy!r} (valid: {valid})")
        return STRATEGIES[key](rng)
    if callable(getattr(strategy, "select", None)):
        return strategy
    if callable(strategy):
        return _CallableStrategy(strategy)
    raise ConfigError(f"strategy: must be a name, an object with select(), or a callable, got {type(strategy).__name__}")


class _CallableStrategy:
    def __init__(self, fn: Callable[[Sequence[Candidate], Optional[Workflow]], Any]) -> None:
        self._fn = fn
        self.name = getattr(fn, "__name__", "custom")

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Any:
        return self._fn(candidates, workflow)


def strategy_name(strategy: Any) -> str:
    """The name shown for a strategy object (its ``name`` attribute, else its class name)."""
    name = getattr(strategy, "name", None)
    return name if isinstance(name, str) else type(strategy).__name__

