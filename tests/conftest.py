"""Shared pytest setup of the comfy-cluster test suite.

The mock-server fixtures come from ``comfy_cluster.testing.pytest_plugin``. Once the package is
installed, pytest loads that module through the ``pytest11`` entry point; listing it in
``pytest_plugins`` as well would register it twice (an error). So it is registered here only
when no entry point did it (running from a source tree, or with plugin autoload disabled).
"""

from __future__ import annotations

import pytest

import comfy_cluster.testing.pytest_plugin as _mock_plugin


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.is_registered(_mock_plugin):
        config.pluginmanager.register(_mock_plugin, "comfy_cluster.testing.pytest_plugin")
