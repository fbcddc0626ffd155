"""The "ComfyUI Servers" panel against a mock cluster: rows, Refresh off the main thread, strategy."""

from __future__ import annotations

import threading

import pytest
from comfy_cluster.testing import Fault
from nuke_fake.support import fake_nuke, settle_threads, use_cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cluster(mock_cluster_factory, monkeypatch):
    c = mock_cluster_factory(speeds=(1.0, 2.0, 1.0), device_name="cuda:0 NVIDIA RTX 4090 : cudaMallocAsync", vram_free=12 * 1024**3)
    use_cluster(c, monkeypatch)
    return c


def _open(fake):
    import comfy_cluster_nuke.panel as panel_mod

    panel = panel_mod.show()
    fake.pump_until(lambda: not panel.refreshing and "online" in panel.summary_knob.value(), what="the refresh")
    return panel


def test_rows_show_each_server(fake_nuke, cluster, monkeypatch):
    from comfy_cluster import ServerPool

    cluster[2].set_fault(Fault.REFUSE)
    probe_threads = []
    original = ServerPool.status

    def recording_status(self, refresh=False):
        probe_threads.append(threading.current_thread())
        return original(self, refresh=refresh)

    monkeypatch.setattr(ServerPool, "status", recording_status)
    before = set(threading.enumerate())
    panel = _open(fake_nuke)

    assert probe_threads and all(t is not threading.main_thread() for t in probe_threads)  # Nuke never froze
    rows = panel.rows
    assert [r.label() for r in rows] == ["mock1", "mock2", "mock3"]
    first = rows[0].value()
    for cell in ("online", "running 0", "pending 0", "NVIDIA RTX 4090", "VRAM free 12.0 GB"):
        assert cell in first, (cell, first)
    third = rows[2].value()
    assert third.startswith("OFFLINE") and "error:" in third and "running -" in third
    assert panel.summary_knob.value().startswith("2 of 3 online")
    assert settle_threads(before) == []  # the probe pool was closed


def test_rows_show_queues(fake_nuke, cluster):
    from comfy_cluster import ServerPool

    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": 5.0, "steps": 50, "seed": 0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "p"}},
    }
    cluster[0].pause_jobs()  # the queue stays as it is while the panel reads it
    pool = ServerPool([{"name": "only", "url": cluster[0].url, "max_queue": 3}])
    try:
        jobs = [pool.submit(dict(workflow, **{"2": {**workflow["2"], "inputs": {**workflow["2"]["inputs"], "seed": i}}})) for i in range(3)]
        fake_nuke.pump_until(lambda: [len(q) for q in cluster[0].queue_snapshot()] == [1, 2], what="one running, two pending")
        panel = _open(fake_nuke)
        assert "running 1" in panel.rows[0].value() and "pending 2" in panel.rows[0].value()
    finally:
        for job in jobs:
            job.cancel()
        pool.close()


def test_refresh_button_and_strategy(fake_nuke, cluster):
    import comfy_cluster_nuke.run as run_mod

    panel = _open(fake_nuke)
    cluster[0].set_fault(Fault.REFUSE)
    fake_nuke.panel_press(panel, "refresh")
    assert panel.summary_knob.value() == "refreshing ..."  # the click returned at once
    fake_nuke.pump_until(lambda: not panel.refreshing and "online" in panel.summary_knob.value())
    assert panel.rows[0].value().startswith("OFFLINE")
    assert panel.summary_knob.value().startswith("2 of 3 online")

    assert "warm_models (default)" in panel.summary_knob.value()
    fake_nuke.panel_set(panel, "strategy", "round_robin")
    try:
        assert run_mod.default_strategy() == "round_robin"
        assert "round_robin (chosen here)" in panel.summary_knob.value()
        fake_nuke.panel_set(panel, "strategy", "default")
        assert run_mod.default_strategy() is None
    finally:
        run_mod.set_default_strategy(None)


def test_a_configuration_error_is_shown_not_raised(fake_nuke, monkeypatch):
    import comfy_cluster_nuke.panel as panel_mod

    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", '[{"name": "gpu1", "host": "127.0.0.1", "port": 99999}]')
    panel = panel_mod.ServersPanel()
    assert panel.summary_knob.value().startswith("configuration:") and "port" in panel.summary_knob.value()
    panel.refresh()
    fake_nuke.pump_until(lambda: not panel.refreshing and fake_nuke.queued() == 0)
    assert "port" in panel.summary_knob.value()


def test_format_row_without_a_probe(fake_nuke):
    from comfy_cluster import ServerStatus

    from comfy_cluster_nuke.panel import format_row

    row = format_row(ServerStatus(name="gpu1", url="http://127.0.0.1:1"))
    assert row.startswith("not checked")
