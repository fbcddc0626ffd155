"""``OnlineView``: the gateway's cached reading of the pool's status (which servers are
online, how full each is), re-read in the background at most every second so a request
never waits on a probe; and what it is used for: the slots a replica may claim, and the
numbers of a ``/metrics`` scrape."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .metrics import live_state

__all__ = ["OnlineView"]


class OnlineView:
    """Status of ``pool`` as last read (on the gateway's loop only)."""

    def __init__(self, pool: Any, executor: Callable[[], Optional[concurrent.futures.Executor]]) -> None:
        self._pool = pool
        self._executor = executor
        self._cache: Tuple[float, List[str]] = (-1.0, [])
        self._task: "Optional[asyncio.Task[List[str]]]" = None
        self.statuses: List[Any] = []
        self.leases: Dict[str, int] = {}

    async def names(self) -> List[str]:
        """Names of online servers. Re-read in the background at most every second: a
        request never waits on a probe, except for the very first reading."""
        at, names = self._cache
        if at < 0:
            return await self._read()
        if time.monotonic() - at >= 1.0 and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._read())
        return names

    async def _read(self) -> List[str]:
        statuses = await asyncio.get_running_loop().run_in_executor(self._executor(), self._pool.status)
        self.statuses = list(statuses)
        names = [s.name for s in statuses if s.online]
        self._cache = (time.monotonic(), names)
        return names

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def free_slots(self, active: Iterable[Any]) -> int:
        """Replicas: prompts this replica may claim now: room on the online servers (their
        own queue counts, every replica's jobs in them) less its jobs not started yet."""
        free = 0
        limits = {s.name: s.max_queue for s in self._pool.servers if s.enabled}
        for st in self.statuses:
            if st.online and st.name in limits:
                free += max(0, limits[st.name] - max(st.queue_running + st.queue_pending, st.in_flight))
        mine = sum(1 for gj in active if not gj.started and gj.state != "done")
        if self._cache[0] < 0 or time.monotonic() - self._cache[0] >= 0.5:
            asyncio.get_running_loop().create_task(self.names())
        return free - mine

    def live_numbers(self, active: Iterable[Any]) -> Dict[str, Any]:
        """For a /metrics scrape (on the loop): the online list is the cached one."""
        return live_state(list(active), [s.name for s in self._pool.servers], self._cache[1], self.leases)
