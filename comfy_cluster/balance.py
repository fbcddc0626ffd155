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
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from .errors import ConfigError
from .server_config import ServerConfig
from .status import ServerStatus
from .warm import Warmth, warmth_of

__all__ = [
    "Candidate",
    "Balancer",
    "LeastLoaded",
    "RoundRobin",
    "Priority",
    "FastestCompletion",
    "WarmModels",
    "STRATEGIES",
    "DEFAULT_STRATEGY",
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


#: A job whose prompt is the one its server last ran costs about this share of a job: ComfyUI
#: answers it from its cache.
CACHED_SHARE = 0.1


class WarmModels:
    """The earliest estimated finish, counting what the server has loaded and cached.

    A job costs ``(load + 1) x expected seconds`` there, plus a model load when it needs a
    model file (``CheckpointLoaderSimple.ckpt_name``, ``UNETLoader``, ``LoraLoader``,
    ``VAELoader``...) that the last job this pool queued there did not load; a job identical
    to that last one costs a tenth (ComfyUI's cache). The load time is learned per server
    (``ServerStatus.model_load_seconds``: cold jobs minus warm ones), else taken from servers
    that learned it, else guessed as one job. Ties go to the server sharing more of the job's
    nodes (text encodings of the same prompt), then at random.

    Under late binding (the pool's local queue) :meth:`place` also keeps a free server for
    the waiting jobs already warm there, and lets a job wait for a busy warm server when its
    model's backlog there is shorter than a load elsewhere. Workflows without model loaders
    are placed as ``fastest_completion`` would.
    """

    name = "warm_models"

    def __init__(self, rng: Optional[random.Random] = None) -> None:
        self._rng = rng or random.Random()

    def select(self, candidates: Sequence[Candidate], workflow: Optional[Workflow] = None) -> Candidate:
        warmth = warmth_of(workflow) if workflow else Warmth()
        return self._best(candidates, warmth, self._load_guess(candidates))

    def place(
        self,
        candidates: Sequence[Candidate],
        eligible: Sequence[Candidate],
        warmth: Warmth,
        waiting: Mapping[Tuple[str, ...], int],
    ) -> Optional[Candidate]:
        """The scheduler's pick for a waiting job, or None: wait for a warm server.

        ``candidates`` have room; ``eligible`` are every server able to run the job, full or
        not; ``waiting`` counts the jobs waiting locally per model set (this one included).
        """
        guess = self._load_guess(eligible)
        if not warmth.models:
            return self._best(candidates, warmth, guess)
        # A free server stays free for the jobs waiting that are warm there (it would load
        # twice: this job's model now, theirs again later).
        free = [c for c in candidates if warmth.warm_on(c.status.models)
                or not (c.status.models and waiting.get(c.status.models, 0) > 0)]
        if not free:
            return None
        if any(warmth.warm_on(c.status.models) for c in free):
            return self._best(free, warmth, guess)
        warm = [e for e in eligible if warmth.warm_on(e.status.models)]
        if warm:
            # Waiting: this model's backlog, spread over the servers warm for it; going cold: a
            # load here. Another server is warmed only when the backlog is the longer.
            per_job = min(e.expected_seconds for e in warm)
            backlog = (sum(e.load for e in warm) + waiting.get(warmth.models, 1)) / len(warm) * per_job
            cold = min(self._cost(c, warmth, guess) for c in free)
            if backlog <= cold:
                return None
        return self._best(free, warmth, guess)

    def _best(self, candidates: Sequence[Candidate], warmth: Warmth, guess: Optional[float]) -> Candidate:
        mine = set(warmth.nodes)

        def key(c: Candidate) -> float:
            shared = len(mine.intersection(c.status.node_keys)) if mine else 0
            return self._cost(c, warmth, guess) - 1e-6 * shared

        return _pick_lowest(candidates, key, self._rng)

    @staticmethod
    def _cost(c: Candidate, warmth: Warmth, guess: Optional[float]) -> float:
        run = c.expected_seconds
        if warmth.prompt is not None and c.status.prompt_key == warmth.prompt:
            run *= CACHED_SHARE
        load = 0.0
        if not warmth.warm_on(c.status.models):
            learned = c.status.model_load_seconds
            load = learned if learned is not None else guess if guess is not None else c.expected_seconds
        return c.load * c.expected_seconds + load + run

    @staticmethod
    def _load_guess(servers: Sequence[Candidate]) -> Optional[float]:
        known = [c.status.model_load_seconds for c in servers if c.status.model_load_seconds is not None]
        return sum(known) / len(known) if known else None


STRATEGIES: Dict[str, Callable[[Optional[random.Random]], Any]] = {
    "least_loaded": LeastLoaded,
    "round_robin": RoundRobin,
    "priority": Priority,
    "fastest_completion": FastestCompletion,
    "warm_models": WarmModels,
}
#: The strategy of a pool given none (and of NUKE_COMFYUI_STRATEGY unset): warm_models won
#: bench_models (2.9x faster than least_loaded over three checkpoints) and matched
#: least_loaded on one-model work and on bench_batch (BENCHMARKS.md).
DEFAULT_STRATEGY = "warm_models"

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

