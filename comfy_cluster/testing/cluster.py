"""Several mock ComfyUI servers started and stopped together."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Iterator, List, Mapping, Optional, Sequence

from .server import MockComfyServer

__all__ = ["MockCluster"]

logger = logging.getLogger(__name__)


class MockCluster:
    """``len(speeds)`` mock servers named ``mock1``, ``mock2``, ... on free loopback ports.

    Every other keyword argument goes to each :class:`MockComfyServer`; ``per_server`` adds
    keyword arguments for one server each (``[{}, {"node_packs": ["ComfyUI-HQ-Image-Save"]}]``).
    Servers are started and stopped in parallel threads, so a cluster costs about as much as
    one server.
    """

    def __init__(
        self,
        speeds: Sequence[float] = (1.0, 2.0),
        *,
        names: Optional[Sequence[str]] = None,
        per_server: Optional[Sequence[Mapping[str, Any]]] = None,
        **common_kwargs: Any,
    ) -> None:
        speeds = list(speeds)
        if not speeds:
            raise ValueError("a cluster needs at least one server")
        if names is None:
            names = [f"mock{i}" for i in range(1, len(speeds) + 1)]
        if len(names) != len(speeds):
            raise ValueError("names and speeds must have the same length")
        common_kwargs.pop("name", None)
        common_kwargs.pop("speed", None)
        if common_kwargs.get("port", 0) not in (0, None):
            raise ValueError("cluster servers always pick free ports (port=0)")
        common_kwargs.pop("port", None)
        extra = list(per_server) if per_server is not None else [{}] * len(speeds)
        if len(extra) != len(speeds):
            raise ValueError("per_server and speeds must have the same length")
        self.servers: List[MockComfyServer] = [
            MockComfyServer(name=name, speed=speed, **{**common_kwargs, **own}) for name, speed, own in zip(names, speeds, extra)
        ]

    def _each(self, action: str) -> None:
        """Run ``server.<action>()`` on every server at once; raise the first failure."""
        errors: List[BaseException] = []

        def run(server: MockComfyServer) -> None:
            try:
                getattr(server, action)()
            except BaseException as ex:  # noqa: BLE001 - collected and re-raised below
                errors.append(ex)

        threads = [threading.Thread(target=run, args=(s,), name=f"mock-cluster-{action}-{s.name}") for s in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def start(self) -> "MockCluster":
        """Start every server; returns self once all listen (stops them all on failure)."""
        try:
            self._each("start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server; idempotent."""
        self._each("stop")

    def __enter__(self) -> "MockCluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def urls(self) -> List[str]:
        return [s.url for s in self.servers]

    def servers_json(self) -> str:
        """The servers in the ``NUKE_COMFYUI_SERVERS`` format: ``[{"name", "url"}, ...]``."""
        return json.dumps([{"name": s.name, "url": s.url} for s in self.servers])

    def clear_faults(self) -> None:
        for server in self.servers:
            server.clear_faults()

    def executed_prompt_ids(self) -> List[str]:
        """Successful prompt_ids of all servers (server by server)."""
        return [pid for s in self.servers for pid in s.executed_prompt_ids]

    def by_name(self, name: str) -> MockComfyServer:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def __getitem__(self, index: int) -> MockComfyServer:
        return self.servers[index]

    def __iter__(self) -> Iterator[MockComfyServer]:
        return iter(self.servers)

    def __len__(self) -> int:
        return len(self.servers)

    def __repr__(self) -> str:
        return f"MockCluster({', '.join(repr(s) for s in self.servers)})"
