"""The gateway's Keeper (comfy_cluster/gateway/durable.py) on a real SQLite store: a write asked
with ``later`` tells the loop once it is committed (``then``) or that it failed (``failed``):
the job book holds the next job's events behind an end until one of them comes, so neither may
be lost."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, List

import pytest

from comfy_cluster.gateway.durable import Keeper
from comfy_cluster.state import Store


def _run_later(tmp_path: Path, fn: Any) -> List[str]:
    store = Store(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    seen: List[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        keeper = Keeper(store, loop)
        told = asyncio.Event()
        try:
            keeper.later(fn, then=lambda: (seen.append("then"), told.set()), failed=lambda: (seen.append("failed"), told.set()))
            await asyncio.wait_for(told.wait(), 10.0)  # bounds a hang only
        finally:
            keeper.close()

    try:
        asyncio.run(main())
    finally:
        store.close()
    return seen


def test_a_committed_write_calls_then_on_the_loop(tmp_path: Path) -> None:
    assert _run_later(tmp_path, lambda: None) == ["then"]


def test_a_failed_write_is_logged_and_calls_failed_on_the_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def refused() -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.ERROR, logger="comfy_cluster.gateway.durable"):
        assert _run_later(tmp_path, refused) == ["failed"]
    assert "gateway state write failed: disk full" in caplog.text
