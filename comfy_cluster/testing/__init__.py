"""Testing helpers for comfy-cluster: a faithful mock ComfyUI server and pytest fixtures.

``MockComfyServer`` runs one mock ComfyUI (aiohttp, in a daemon thread) on 127.0.0.1;
``MockCluster`` starts several at once; ``Fault`` names the faults they can show. The pytest
fixtures (``mock_comfy``, ``mock_cluster``, ``mock_cluster_factory``) come from
:mod:`comfy_cluster.testing.pytest_plugin`, registered as a ``pytest11`` entry point.

The server needs aiohttp (``pip install comfy-cluster[mock]``). It is imported lazily, so that
pytest can load the plugin of an installation without aiohttp and only a test that asks for
a mock server fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from .faults import Fault, parse_fault

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from .cluster import MockCluster
    from .server import MockComfyServer

__all__ = ["MockComfyServer", "MockCluster", "Fault", "parse_fault", "wait_until"]

_LAZY = {
    "MockComfyServer": ("comfy_cluster.testing.server", "MockComfyServer"),
    "MockCluster": ("comfy_cluster.testing.cluster", "MockCluster"),
    "wait_until": ("comfy_cluster.testing.waiting", "wait_until"),
}


def __getattr__(name: str) -> Any:
    """Import the aiohttp-based parts on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as ex:
            if ex.name == "aiohttp":
                raise ImportError(
                    "comfy_cluster.testing needs aiohttp for the mock server: pip install 'comfy-cluster[mock]'"
                ) from ex
            raise
        value = getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
