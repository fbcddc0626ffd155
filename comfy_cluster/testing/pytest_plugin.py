"""pytest fixtures for mock ComfyUI servers, registered as the ``comfy_cluster`` pytest11
entry point so that installing comfy-cluster gives every test suite:

* ``mock_comfy`` - one started :class:`~comfy_cluster.testing.MockComfyServer`;
* ``mock_cluster_factory`` - ``factory(speeds=(1, 1), **kwargs)`` returning a started
  :class:`~comfy_cluster.testing.MockCluster`;
* ``mock_cluster`` - a started cluster of two servers, speeds 1 and 2.

Everything is stopped after the test. The server classes are imported inside the fixtures:
pytest loads this module for every project that has comfy-cluster installed, and only tests
that use a mock server need aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Sequence

import pytest

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .cluster import MockCluster
    from .server import MockComfyServer

__all__ = ["mock_comfy", "mock_cluster_factory", "mock_cluster"]


@pytest.fixture
def mock_comfy() -> Iterator["MockComfyServer"]:
    """One mock ComfyUI server on a free loopback port, stopped after the test."""
    from comfy_cluster.testing import MockComfyServer

    server = MockComfyServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mock_cluster_factory() -> Iterator[Callable[..., "MockCluster"]]:
    """A callable ``factory(speeds=(1, 1), **kwargs)`` that starts a MockCluster; every
    cluster it made is stopped after the test."""
    from comfy_cluster.testing import MockCluster

    made: List[MockCluster] = []

    def factory(speeds: Sequence[float] = (1.0, 1.0), **kwargs: Any) -> MockCluster:
        cluster = MockCluster(speeds=speeds, **kwargs)
        made.append(cluster)
        return cluster.start()

    try:
        yield factory
    finally:
        for cluster in made:
            cluster.stop()


@pytest.fixture
def mock_cluster(mock_cluster_factory: Callable[..., "MockCluster"]) -> "MockCluster":
    """A started cluster of two mock servers, ``mock1`` (speed 1) and ``mock2`` (speed 2)."""
    return mock_cluster_factory(speeds=(1.0, 2.0))
