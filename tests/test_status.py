"""Status probing, caching, backoff and selection filters, against the mock cluster."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import requests
from helpers import FakeClock, servers_of, sleep_workflow, wait_until

from comfy_cluster import NoServerAvailable, ServerPool
from comfy_cluster.testing import Fault


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_status_one_per_server_in_config_order(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 2, 4))
    servers = list(reversed(servers_of(cluster)))
    with ServerPool(servers, background_status=False) as pool:
        statuses = pool.status()
        assert [s.name for s in statuses] == [s["name"] for s in servers]
        for st in statuses:
            assert st.online and st.error is None
            assert (st.queue_running, st.queue_pending, st.in_flight) == (0, 0, 0)
            assert st.rtt_ms is not None and st.rtt_ms >= 0
            assert st.comfyui_version and st.device_name
            assert st.vram_total is not None and st.vram_free is not None


def test_offline_server_reason_and_doubling_backoff():
    clock = FakeClock()
    port = closed_port()
    with ServerPool([{"name": "dead", "host": "127.0.0.1", "port": port}], background_status=False, clock=clock) as pool:
        st = pool.status()[0]
        assert not st.online
        assert "refused" in st.error
        assert st.consecutive_failures == 1
        first_retry = st.next_probe_at - clock.now
        # Inside the backoff: cached, no new probe.
        assert pool.status()[0].consecutive_failures == 1
        clock.advance(first_retry)
        st = pool.status()[0]
        assert st.consecutive_failures == 2
        assert st.next_probe_at - clock.now == pytest.approx(2 * first_retry)
        clock.advance(2 * first_retry)
        assert pool.status()[0].consecutive_failures == 3
        # The cap holds however many failures there are.
        for _ in range(12):
            clock.advance(1000)
            st = pool.status()[0]
        assert st.next_probe_at - clock.now == pytest.approx(30.0)


def test_success_resets_backoff(mock_comfy):
    clock = FakeClock()
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False, clock=clock) as pool:
        mock_comfy.set_fault(Fault.REFUSE)
        assert pool.status()[0].consecutive_failures == 1
        clock.advance(100)
        assert pool.status()[0].consecutive_failures == 2
        mock_comfy.set_fault(None)
        clock.advance(100)
        st = pool.status()[0]
        assert st.online and st.consecutive_failures == 0 and st.error is None


@pytest.mark.parametrize("fault, words", [(Fault.ERROR_500, "HTTP 500"), (Fault.MALFORMED, "malformed"), (Fault.HANG, "timed out")])
def test_garbage_and_hangs_mark_offline_with_reason(mock_comfy, fault, words):
    mock_comfy.set_fault(fault)
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False, probe_timeout=(0.5, 0.5)) as pool:
        st = pool.status()[0]
        assert not st.online
        assert words in st.error


def test_ttl_caches_probes(mock_comfy):
    clock = FakeClock()
    with ServerPool([{"name": "m", "url": mock_comfy.url}], status_ttl=5, background_status=False, clock=clock) as pool:
        pool.status()
        n = mock_comfy.request_count
        pool.status()
        clock.advance(4.9)
        pool.status()
        assert mock_comfy.request_count == n  # cached
        clock.advance(0.2)
        pool.status()
        assert mock_comfy.request_count == n + 1
        pool.status(refresh=True)
        assert mock_comfy.request_count == n + 2


def test_select_never_waits_on_an_offline_server(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    hang, good = cluster.servers
    clock = FakeClock()
    # Marked offline by a refusal (at once), then hung: a probe waited on would take the whole
    # timeout, which is long enough for the good server to answer on a loaded machine.
    with ServerPool(servers_of(cluster), background_status=False, clock=clock, probe_timeout=(2.0, 2.0)) as pool:
        hang.set_fault(Fault.REFUSE)
        pool.status(refresh=True)
        assert [s.online for s in pool.status()] == [False, True]
        hang.set_fault(Fault.HANG)
        waited = []
        real = pool._monitor.probe

        def spy(names, wait_for_them=True):
            names = list(names)
            if wait_for_them:
                waited.extend(names)
            return real(names, wait_for_them=wait_for_them)

        pool._monitor.probe = spy
        clock.advance(1000)  # every backoff and TTL expired
        for _ in range(5):
            assert pool.select().name == good.name
        # The offline server may be re-probed, but select() never waits for that probe.
        assert hang.name not in waited


def test_two_submissions_in_one_ttl_go_to_different_servers(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    clock = FakeClock()
    with ServerPool(servers_of(cluster), background_status=False, clock=clock, status_ttl=60) as pool:
        jobs = [pool.submit(sleep_workflow(0.3)) for _ in range(2)]
        wait_until(lambda: all(j.server is not None for j in jobs), what="dispatch")
        assert {j.server.name for j in jobs} == {s.name for s in cluster.servers}
        for j in jobs:
            j.result(timeout=10)


def test_websocket_status_frames_update_load_without_polling(mock_comfy):
    clock = FakeClock()
    mock_comfy.pause_jobs()  # the queue stays as filled, however loaded the machine
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 5}], background_status=False, clock=clock, status_ttl=3600) as pool:
        job = pool.submit(sleep_workflow(1.0))
        wait_until(lambda: job.prompt_id is not None and job.status in ("queued", "running"), what="job posted")
        probes = mock_comfy.request_count
        # Another artist fills the queue directly.
        for i in range(3):
            requests.post(mock_comfy.url + "/prompt", json={"prompt": sleep_workflow(1.0), "client_id": f"other{i}"}).raise_for_status()
        wait_until(lambda: pool.status()[0].load >= 4, what="load from websocket status frames")
        assert pool.status()[0].queue_pending >= 3
        assert mock_comfy.request_count == probes + 3  # only the three POSTs: no probe was made
        job.cancel()


def test_select_filters_node_types_and_models(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    a, b, c = cluster.servers
    cluster_kw = servers_of(cluster)
    # a lacks TestSleep; b lacks the model; c has both (their node lists, as fetched once).
    wf = sleep_workflow()
    wf["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "special.safetensors"}}
    with ServerPool(cluster_kw, background_status=False) as pool:
        pool.status()
        pool._object_info[a.name] = {k: v for k, v in requests.get(a.url + "/object_info").json().items() if k != "TestSleep"}
        info_c = requests.get(c.url + "/object_info").json()
        info_c["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0].append("special.safetensors")
        pool._object_info[c.name] = info_c
        assert pool.select(wf).name == c.name
        with pytest.raises(NoServerAvailable) as info:
            pool.select(wf, exclude=[c.name])
        text = str(info.value)
        assert f"{a.name}: missing node types TestSleep" in text
        assert f"{b.name}: missing model special.safetensors" in text
        assert f"{c.name}: excluded" in text


def test_object_info_fetched_once_per_server(mock_comfy):
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False) as pool:
        pool.select(sleep_workflow())
        n = mock_comfy.request_count
        for _ in range(5):
            pool.select(sleep_workflow())
        assert mock_comfy.request_count == n


def test_full_servers_are_reported(mock_comfy):
    mock_comfy.pause_jobs()  # the job holds its slot, however loaded the machine
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 1}], background_status=False) as pool:
        job = pool.submit(sleep_workflow(1.0))
        wait_until(lambda: pool.status()[0].in_flight == 1, what="slot taken")
        with pytest.raises(NoServerAvailable, match=r"m: full \(1 of max_queue 1 jobs\)"):
            pool.select()
        job.cancel()


def test_every_server_down_is_no_server_available_at_once():
    servers = [{"name": f"d{i}", "host": "127.0.0.1", "port": closed_port()} for i in range(3)]
    with ServerPool(servers, background_status=False) as pool:
        with pytest.raises(NoServerAvailable) as info:
            pool.submit(sleep_workflow())
        assert set(info.value.reasons) == {"d0", "d1", "d2"}
        assert all(r.startswith("offline:") for r in info.value.reasons.values())


def test_learned_stats_show_in_status(mock_comfy):
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False) as pool:
        pool.submit(sleep_workflow(0.05)).result(timeout=10)
        st = pool.status()[0]
        assert st.jobs_succeeded == 1 and st.jobs_failed == 0
        assert st.avg_job_seconds is not None and st.avg_job_seconds > 0


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "comfy_cluster", *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_status_json_and_exit_code(mock_comfy, monkeypatch):
    import os

    env = dict(os.environ)
    env["NUKE_COMFYUI_SERVERS"] = json.dumps([{"name": "m", "url": mock_comfy.url}, {"name": "dead", "host": "127.0.0.1", "port": closed_port()}])
    out = _cli(["status", "--json"], env)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["m", "dead"]
    assert rows[0]["online"] is True and rows[1]["online"] is False
    for key in ("url", "queue_running", "queue_pending", "error"):
        assert key in rows[0]
    table = _cli(["status"], env)
    assert "NAME" in table.stdout and "dead" in table.stdout and "refused" in table.stdout
    env["NUKE_COMFYUI_SERVERS"] = json.dumps([{"name": "dead", "host": "127.0.0.1", "port": closed_port()}])
    assert _cli(["status", "--json"], env).returncode == 1


def test_a_server_going_offline_is_logged_once_per_outage_naming_it_and_why(caplog):
    """One warning when a server goes offline (naming it and the reason), none for each
    re-probe while it stays down, nothing at ERROR level; the first re-probe comes after half
    a second (then doubling)."""
    import logging

    clock = FakeClock()
    port = closed_port()
    caplog.set_level(logging.INFO, logger="comfy_cluster")
    with ServerPool([{"name": "dead", "host": "127.0.0.1", "port": port}], background_status=False, clock=clock) as pool:
        st = pool.status()[0]
        assert st.next_probe_at - clock.now == pytest.approx(0.5)
        for _ in range(3):
            clock.advance(1000)
            assert not pool.status()[0].online
    offline = [r.getMessage() for r in caplog.records if "offline" in r.getMessage()]
    assert offline == ["server dead is offline: connection refused"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
