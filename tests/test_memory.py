"""What a large pool holds: a 100-server pool after its first status round stays under
1 MB (it held 2.7 MB when every server got a requests session, a websocket object and a
second connection pool for /system_stats up front)."""

from __future__ import annotations

import gc
import tracemalloc

from comfy_cluster import ServerPool
from comfy_cluster.testing.stubs import stub_servers


def _held_after_first_status(urls):
    servers = [{"name": f"s{i}", "url": u} for i, u in enumerate(urls)]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pool = ServerPool(servers, background_status=False)
    try:
        statuses = pool.status()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        pool.close()
    return held, statuses


def test_a_100_server_pool_holds_under_1_mb_after_its_first_status_round():
    with stub_servers(100) as urls:
        _held_after_first_status(urls[:2])  # first use of requests and urllib3 (their caches)
        held, statuses = _held_after_first_status(urls)
    assert all(s.online and s.comfyui_version == "0.3.64" for s in statuses)  # a real round
    # 1 MB with room for other Python versions' object sizes; today's figure is in BENCHMARKS.md.
    assert held < 1_300_000, f"{held} bytes"


def test_probes_and_stats_use_one_light_connection_per_server_and_nothing_else(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    servers = [{"name": f"g{i}", "url": s.url} for i, s in enumerate(cluster.servers)]
    with ServerPool(servers, background_status=False) as pool:
        assert all(s.online and s.device_name for s in pool.status())
        assert all(c._session is None for c in pool._clients.values())  # no session yet
        assert pool._sockets.made() == []  # no websocket object yet
        job = pool.submit({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
                           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "m"}}})
        job.result(timeout=60)
        assert [s.server.name for s in pool._sockets.made()] == [job.server.name]
