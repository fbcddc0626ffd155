"""pytest fixtures and helpers for the Nuke plugin tests (``tests/test_nuke_*.py``).

``fake_nuke`` puts this folder on ``sys.path`` so that ``import nuke`` finds the fake, gives a
fresh script, and afterwards removes the fake and every module that imported it, then fails the
test if the plugin made a call Nuke would forbid (even one the plugin caught) or a main-thread
call raised.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Dict, Iterator, List, Optional

import pytest

FAKE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(FAKE_DIR))
PLUGIN_DIR = os.path.join(ROOT, "nuke_plugin")  # on NUKE_PATH: Nuke puts it on sys.path
_PURGE = ("nuke", "nukescripts", "comfy_cluster_nuke")


def _purge_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _PURGE:
            del sys.modules[name]


@pytest.fixture
def fake_nuke() -> Iterator[Any]:
    """The fake's test controls (``nuke._fake``); ``import nuke`` gives the fake meanwhile."""
    _purge_modules()
    sys.path.insert(0, FAKE_DIR)
    sys.path.insert(1, PLUGIN_DIR)
    try:
        from nuke import _fake

        _fake.reset()
        yield _fake
        info = sys.modules.get("comfy_cluster_nuke.serverinfo")
        if info is not None:  # background questions to the servers (GUI knob changes)
            for thread in info.started():
                thread.join(15.0)
        _fake.shutdown()  # release a worker still waiting on the main thread
        if "comfy_cluster_nuke.run" in sys.modules:
            assert sys.modules["comfy_cluster_nuke.run"]._wait_all(15.0), "a plugin run did not end"
        violations = _fake.violations()
        errors = _fake.errors()
        assert violations == [], "calls Nuke forbids:\n" + "\n".join(violations)
        assert errors == [], "main-thread calls raised:\n" + "\n".join(errors)
    finally:
        sys.path.remove(FAKE_DIR)
        sys.path.remove(PLUGIN_DIR)
        _purge_modules()


@pytest.fixture
def cluster_env(mock_cluster_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A started two-server mock cluster (speeds 1 and 2) that ``ServerPool.from_env`` uses."""
    cluster = mock_cluster_factory(speeds=(1.0, 2.0))
    use_cluster(cluster, monkeypatch)
    return cluster


def use_cluster(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("NUKE_COMFYUI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", cluster.servers_json())


def load_image_workflow(seconds: float = 0.05, steps: int = 2) -> Dict[str, Any]:
    """LoadImage (10) -> TestSleep (2) -> SaveImage (3): the node's input goes through."""
    return {
        "10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}, "_meta": {"title": "Plate"}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["10", 0], "seconds": seconds, "steps": steps, "seed": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nuke"}},
    }


def empty_image_workflow(seconds: float = 0.05, steps: int = 2) -> Dict[str, Any]:
    """EmptyImage (1) -> TestSleep (2) -> SaveImage (3): no Nuke input needed."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps, "seed": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "nuke"}},
    }


def write_json(path: Any, data: Dict[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return str(path)


def make_run_node(
    fake: Any,
    workflow_path: str,
    output_dir: str,
    *,
    first: int = 1,
    last: int = 4,
    frame_input: str = "2.seed",
    with_input: bool = True,
    strategy: Optional[str] = None,
) -> Any:
    """A "ComfyUI Cluster Run" node set up as a user would, fed by a Constant when asked."""
    import nuke

    import comfy_cluster_nuke.node

    node = comfy_cluster_nuke.node.create()
    if with_input:
        source = nuke.nodes.Constant()
        node.setInput(0, source)
    fake.user_set(node, "workflow", workflow_path)
    fake.user_set(node, "frame_input", frame_input)
    fake.user_set(node, "first", first)
    fake.user_set(node, "last", last)
    fake.user_set(node, "output_dir", output_dir)
    if strategy is not None:
        fake.user_set(node, "strategy", strategy)
    return node


def read_nodes() -> List[Any]:
    """The result Reads that read something (inside the run nodes, anywhere in the script)."""
    import nuke

    return [r for r in nuke.allNodes("Read", recurseGroups=True) if r["file"].value()]


def wait_run(fake: Any, node: Any, timeout: float = 30.0) -> Any:
    """Pump Nuke's main loop until the node's run has ended; returns the finished run."""
    import comfy_cluster_nuke.run as run_mod

    run = run_mod.current(node)
    assert run is not None, "no run in progress"
    try:
        fake.pump_until(lambda: run.finished.is_set(), timeout=timeout, what="the run to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{where_it_waits(run)}") from None
    assert run.thread is not None
    run.thread.join(5.0)
    assert not run.thread.is_alive()
    fake.pump()
    return run


def where_it_waits(run: Any) -> str:
    """The jobs of a run that did not end (``pump_until`` adds the threads' stacks)."""
    batch = getattr(run, "_batch", None)
    return "jobs: " + ", ".join(repr(job) for job in batch.jobs) if batch is not None else "no batch yet"


def settle_threads(before: "set[threading.Thread]", timeout: float = 30.0) -> List[threading.Thread]:
    """Library and plugin threads (named ``comfy-cluster...``) started since ``before`` that
    are still alive after ``timeout``.

    The mock servers' own threads (their asyncio executors keep idle workers on Python 3.9)
    are not the plugin's to stop, so only the library's and the plugin's names count.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive() and t.name.startswith("comfy-cluster")]
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)
