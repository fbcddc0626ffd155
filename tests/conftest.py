"""Shared pytest setup of the comfy-cluster test suite.

The mock-server fixtures come from ``comfy_cluster.testing.pytest_plugin``. Once the package is
installed, pytest loads that module through the ``pytest11`` entry point; listing it in
``pytest_plugins`` as well would register it twice (an error). So it is registered here only
when no entry point did it (running from a source tree, or with plugin autoload disabled).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import comfy_cluster.testing.pytest_plugin as _mock_plugin

# Property tests check values, never speed: on a loaded CI machine generating examples can be
# slow by seconds, which Hypothesis would otherwise report as a failure (too_slow, deadline).
settings.register_profile("comfy-cluster", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("comfy-cluster")


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(_mock_plugin):
        config.pluginmanager.register(_mock_plugin, "comfy_cluster.testing.pytest_plugin")
    config.addinivalue_line("markers", "real_comfyui: needs real ComfyUI servers named in COMFY_REAL_SERVERS")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    _mutation_order(items)
    # Real-server checks run only where real servers are named; elsewhere they are deselected
    # (not skipped), so a run's summary shows exactly what ran.
    if os.environ.get("COMFY_REAL_SERVERS"):
        return
    keep = [i for i in items if "real_comfyui" not in i.keywords]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if "real_comfyui" in i.keywords])
        items[:] = keep


def _mutation_order(items: list) -> None:
    """tools/mutate.py: run the tests in the order of the files it lists for the module (fast
    ones first). mutmut hands pytest a mutant's tests in no fixed order and stops at the first
    failure: this way a mutant the fast tests kill costs only those."""
    order = [e.split("::")[0] for e in os.environ.get("COMFY_MUTATE_ORDER", "").split(os.pathsep) if e]
    if order:
        def rank(item: Any) -> int:
            path = item.nodeid.split("::")[0]
            return next((i for i, f in enumerate(order) if path == f or path.endswith("/" + f)), len(order))

        items.sort(key=rank)  # stable: the order within a file stays


@pytest.fixture(scope="session")
def postgres_server_url():
    """One real PostgreSQL server (its own cluster in a temporary folder) for the session."""
    from comfy_cluster.testing.postgres import postgres_server

    with postgres_server("postgres_tests") as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = "t" + uuid.uuid4().hex[:12]
    base = postgres_server_url.rsplit("/", 1)[0]
    host_port = base.split("@", 1)[1]
    host, port = host_port.split(":")
    with psycopg.connect(f"host={host} port={port} user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


@pytest.fixture(autouse=True)
def _own_data_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own user data folder: a gateway started without ``--state`` keeps its
    state there, never in the real ``~/.local/share/comfy-cluster`` (which another checkout's
    newer schema would make every later run refuse)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))
