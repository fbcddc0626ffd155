"""Selection: which servers may take a job and why the others may not, against mock servers on
loopback. Each test checks what a user relies on (where a job goes, what a refusal says, how
often a failing server is asked); most were written against a surviving mutant of
``comfy_cluster/selection.py`` (docs/TESTING.md)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List

import pytest
from helpers import FakeClock, servers_of, sleep_workflow, wait_until

from comfy_cluster import ConfigError, NoServerAvailable, ServerPool
from comfy_cluster.client import ComfyClient
from comfy_cluster.selection import UNKNOWN, Capabilities
from comfy_cluster.server_config import ServerConfig
from comfy_cluster.testing import Fault


def _object_info_reads(mock: Any) -> int:
    """Requests that reached ``/object_info`` (failed ones too)."""
    return sum(1 for path, _ in mock.request_queries if path.rstrip("/").endswith("/object_info"))


@pytest.fixture
def probe_executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as ex:
        yield ex


def test_a_node_list_that_cannot_be_read_is_asked_again_only_after_a_doubling_backoff(mock_comfy, probe_executor):
    """A server whose /object_info fails costs one read per backoff (2 s, doubling, capped at
    60 s), never one per submission; the reason given names the failure once, without the
    server's name repeated; a success ends the backoff and is kept until the server is
    forgotten (it went away and came back), after which a failure starts again at 2 s."""
    clock = FakeClock()
    changes: List[int] = []
    caps = Capabilities({"m": ComfyClient(ServerConfig(name="m", url=mock_comfy.url))}, probe_executor.submit, clock,
                        on_change=lambda: changes.append(caps.version))
    assert caps.get("m") == (None, UNKNOWN)
    mock_comfy.fail_route("/object_info", "500")
    caps.fetch(["m"], wait=True)
    assert _object_info_reads(mock_comfy) == 1
    info, why = caps.get("m")
    assert info is None and why is not None
    # The server's name is said once, by whoever names the server (NoServerAvailable).
    assert why == "cannot read its node list (/object_info): HTTP 500 on GET /object_info"
    for delay in (2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0):
        reads = _object_info_reads(mock_comfy)
        clock.advance(delay - 0.5)
        caps.fetch(["m"], wait=True)
        assert _object_info_reads(mock_comfy) == reads, f"asked again before its {delay} s backoff was over"
        clock.advance(0.5)
        caps.fetch(["m"], wait=True)
        assert _object_info_reads(mock_comfy) == reads + 1, f"not asked again once its {delay} s backoff was over"
    mock_comfy.clear_route_faults()
    clock.advance(60.0)
    caps.fetch(["m"], wait=True)
    info, why = caps.get("m")
    assert why is None and info is not None and "TestSleep" in info
    reads = _object_info_reads(mock_comfy)
    clock.advance(1000.0)
    caps.fetch(["m"], wait=True)
    assert _object_info_reads(mock_comfy) == reads  # read once, kept
    # Every read that ended told the pool (it wakes the scheduler), each with a new version.
    assert len(changes) == 9 and len(set(changes)) == 9
    caps.forget("m")
    assert caps.get("m") == (None, UNKNOWN) and caps.version not in changes
    mock_comfy.fail_route("/object_info", "500")
    caps.fetch(["m"], wait=True)
    assert _object_info_reads(mock_comfy) == reads + 1
    clock.advance(2.0)
    caps.fetch(["m"], wait=True)
    assert _object_info_reads(mock_comfy) == reads + 2  # the backoff started again at 2 s
    caps.forget("m")  # it went away and came back: its failure is forgotten too
    assert caps.get("m") == (None, UNKNOWN)
    caps.fetch(["m"], wait=True)
    assert _object_info_reads(mock_comfy) == reads + 3


def test_one_failing_node_list_does_not_stop_the_others_being_read(mock_cluster_factory, probe_executor):
    """Several servers asked at once: one whose node list failed recently (inside its
    backoff) is skipped, the others are still read and waited for."""
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    a, b, c = cluster.servers
    clock = FakeClock()
    clients = {s.name: ComfyClient(ServerConfig(name=s.name, url=s.url)) for s in cluster.servers}
    caps = Capabilities(clients, probe_executor.submit, clock, on_change=lambda: None)
    a.fail_route("/object_info", "500")
    caps.fetch([a.name], wait=True)
    caps.fetch([a.name, b.name, c.name], wait=True)
    assert _object_info_reads(a) == 1
    assert caps.get(b.name)[0] is not None and caps.get(c.name)[0] is not None


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_no_server_says_why_for_each_server_in_config_order(mock_cluster_factory):
    """README: ``NoServerAvailable`` names each server and why, in config order, joined by
    "; " (its ``reasons`` map the same): a node list that cannot be read, a missing node type,
    excluded, disabled, offline with the probe's error."""
    cluster = mock_cluster_factory(speeds=(1, 1, 1), per_server=[{}, {"node_types": ["EmptyImage", "SaveImage"]}, {}])
    a, b, c = cluster.servers
    a.fail_route("/object_info", "500")
    servers = servers_of(cluster) + [{"name": "d", "url": c.url, "enabled": False},
                                     {"name": "e", "host": "127.0.0.1", "port": _closed_port()}]
    with ServerPool(servers, background_status=False) as pool:
        assert pool.select(sleep_workflow()).name == c.name  # the only one able to run it
        with pytest.raises(NoServerAvailable) as info:
            pool.select(sleep_workflow(), exclude=[c.name])
    reasons = info.value.reasons
    assert list(reasons) == [a.name, b.name, c.name, "d", "e"]
    assert reasons[a.name].startswith("cannot read its node list (/object_info): ") and "500" in reasons[a.name]
    assert reasons[b.name] == "missing node types TestSleep"
    assert reasons[c.name] == "excluded"
    assert reasons["d"] == "disabled"
    assert reasons["e"].startswith("offline: ") and "refused" in reasons["e"]
    detail = "; ".join(f"{n}: {why}" for n, why in reasons.items())
    assert str(info.value) == f"no server can take the job ({detail})"


def test_a_server_missing_a_model_is_refused_naming_each_missing_model(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1), per_server=[{"models": ["base.safetensors"]},
                                                             {"models": ["base.safetensors", "x.safetensors", "y.safetensors"]}])
    poor, rich = cluster.servers
    wf = sleep_workflow()
    wf["8"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}}
    wf["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "y.safetensors"}}
    with ServerPool(servers_of(cluster), background_status=False) as pool:
        assert pool.select(wf).name == rich.name
        with pytest.raises(NoServerAvailable) as info:
            pool.select(wf, exclude=[rich.name])
    assert info.value.reasons[poor.name] == "missing model x.safetensors, y.safetensors"


def test_a_job_whose_input_file_is_uploaded_is_not_refused_for_the_image_the_server_lacks(mock_comfy, tmp_path):
    """The LoadImage file of a job's ``inputs`` is uploaded with the job: the server not
    having that file yet is no reason to refuse it."""
    from helpers import load_image_workflow

    from comfy_cluster.testing.png import write_png

    image = tmp_path / "in.png"
    write_png(str(image), 8, 8)
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False) as pool:
        job = pool.submit(load_image_workflow(), inputs={"10": str(image)})
        assert job.result(timeout=30).server == "m"


def test_a_custom_strategy_is_shown_the_candidates_and_the_workflow_and_its_answer_is_checked(mock_cluster_factory):
    """README: a strategy is any callable ``fn(candidates, workflow)`` returning one of the
    candidates (the candidate, its server or its name); ``exclude`` takes any iterable of
    names; an answer that is not a candidate is refused (ConfigError naming the candidates),
    None is "no server", and a strategy that raises gives a ConfigError naming it."""
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    a, b, c = cluster.servers
    seen: List[Any] = []
    answer: List[Any] = []

    def mine(candidates, workflow):
        seen.append(([x.name for x in candidates], workflow))
        how = answer[0]
        if how == "raise":
            raise KeyError("no such thing")
        if how in ("candidate", "server", "name"):
            last = candidates[-1]
            return {"candidate": last, "server": last.server, "name": last.name}[how]
        return how

    wf = sleep_workflow()
    with ServerPool(servers_of(cluster), background_status=False, strategy=mine) as pool:
        for how in ("candidate", "server", "name"):
            answer[:] = [how]
            seen.clear()
            assert pool.select(wf, exclude=(n for n in [c.name])).name == b.name
            assert seen[0][0] == [a.name, b.name] and seen[0][1] == wf
        answer[:] = ["elsewhere"]
        with pytest.raises(ConfigError, match=rf"strategy mine: returned 'elsewhere', which is not one of the candidates \({a.name}, {b.name}, {c.name}\)"):
            pool.select(wf)
        answer[:] = [None]
        with pytest.raises(NoServerAvailable, match="strategy mine chose no server"):
            pool.select(wf)
        answer[:] = ["raise"]
        with pytest.raises(ConfigError, match="strategy mine raised KeyError: 'no such thing'"):
            pool.select(wf)


def test_round_robin_takes_the_servers_in_config_order(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1, 1))
    servers = list(reversed(servers_of(cluster)))
    with ServerPool(servers, background_status=False, strategy="round_robin") as pool:
        picked = [pool.select().name for _ in range(4)]
    assert picked == [s["name"] for s in servers] + [servers[0]["name"]]


def test_without_the_status_thread_a_probe_older_than_the_ttl_is_not_trusted(mock_cluster_factory):
    """background_status=False: select() re-probes an online server once its reading is
    status_ttl old (exactly), so a server that went away is not picked."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    gone, other = cluster.servers
    clock = FakeClock()
    with ServerPool(servers_of(cluster), background_status=False, clock=clock, status_ttl=5) as pool:
        assert pool.select(exclude=[other.name]).name == gone.name
        gone.set_fault(Fault.REFUSE)
        clock.advance(4.5)
        assert pool.select(exclude=[other.name]).name == gone.name  # cached: not asked again
        clock.advance(0.5)
        with pytest.raises(NoServerAvailable) as info:
            pool.select(exclude=[other.name])
        assert "refused" in info.value.reasons[gone.name]


def test_without_the_status_thread_an_offline_server_is_asked_again_once_its_backoff_is_over(mock_comfy):
    """select() starts the re-probe of an offline server whose backoff is over (exactly) in
    the background, without waiting for it; not before."""
    clock = FakeClock()
    mock_comfy.set_fault(Fault.REFUSE)
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False, clock=clock) as pool:
        with pytest.raises(NoServerAvailable):
            pool.select()
        st = pool._monitor.snapshot("m")
        backoff = st.next_probe_at - clock.now
        mock_comfy.set_fault(None)
        probes = mock_comfy.request_count
        clock.advance(backoff - 0.25)
        with pytest.raises(NoServerAvailable):
            pool.select()
        assert mock_comfy.request_count == probes
        clock.advance(0.25)
        try:
            pool.select()  # the probe runs in the background: this one may not see it yet
        except NoServerAvailable:
            pass
        wait_until(lambda: pool._monitor.snapshot("m").online, what="the background re-probe")
        assert pool.select().name == "m"


def test_without_the_status_thread_a_waiting_job_goes_to_a_server_that_came_back(mock_cluster_factory, caplog):
    """No caller asks for the status: the dispatcher itself re-probes an offline server once
    its backoff is over (to the instant), and a job waiting for room goes there; nothing is
    logged as an error on the way."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    busy, away = cluster.servers
    clock = FakeClock()
    busy.pause_jobs()  # the first job holds busy's only slot
    away.set_fault(Fault.REFUSE)
    with ServerPool(servers_of(cluster, max_queue=1), background_status=False, clock=clock) as pool:
        first = pool.submit(sleep_workflow())
        wait_until(lambda: first.server is not None, what="the first job placed")
        second = pool.submit(sleep_workflow())
        away.set_fault(None)
        clock.advance(pool._monitor.snapshot(away.name).next_probe_at - clock.now)  # its backoff is over, exactly
        assert second.result(timeout=30).server == away.name
        busy.resume_jobs()
        assert first.result(timeout=30).server == busy.name
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_submit_does_not_refuse_a_job_because_every_server_is_full(mock_comfy):
    """README: ``submit`` does not raise for full servers: the job waits locally for room
    (while ``select`` says "full")."""
    mock_comfy.pause_jobs()
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 1}], background_status=False) as pool:
        first = pool.submit(sleep_workflow())
        wait_until(lambda: first.server is not None, what="the first job placed")
        with pytest.raises(NoServerAvailable, match="full"):
            pool.select()
        second = pool.submit(sleep_workflow())  # accepted: waits for the slot
        assert second.server is None
        mock_comfy.resume_jobs()
        assert first.result(timeout=30).server == "m" and second.result(timeout=30).server == "m"


def test_a_node_list_being_read_is_waited_for_not_read_twice(mock_comfy, probe_executor):
    """Two submissions at once for a server whose node list is not known: one read."""
    caps = Capabilities({"m": ComfyClient(ServerConfig(name="m", url=mock_comfy.url))}, probe_executor.submit, FakeClock(),
                        on_change=lambda: None)
    mock_comfy.fail_route("/object_info", "stall", count=1)  # the first answer is held
    caps.fetch(["m"], wait=False)
    wait_until(lambda: mock_comfy.held_requests() == 1, what="the read held")
    caps.fetch(["m"], wait=False)  # another caller, while the first read is under way
    mock_comfy.release_held()
    caps.fetch(["m"], wait=True)
    assert caps.get("m")[0] is not None
    assert _object_info_reads(mock_comfy) == 1


def test_an_offline_server_is_not_asked_again_before_its_own_backoff_is_over(mock_cluster_factory):
    """Two servers down, one of them for longer (a longer backoff): once the other's backoff
    is over, only that one is probed again."""
    from comfy_cluster.selection import StatusView
    from comfy_cluster.status import StatusMonitor

    cluster = mock_cluster_factory(speeds=(1, 1))
    longer, shorter = cluster.servers
    for s in cluster.servers:
        s.set_fault(Fault.ERROR_500)
    configs = [ServerConfig(name=s.name, url=s.url) for s in cluster.servers]
    clients = {c.name: ComfyClient(c) for c in configs}
    clock = FakeClock()
    monitor = StatusMonitor(configs, clients, clock=clock, background=False)
    try:
        view = StatusView(monitor, configs, clock)
        monitor.probe([longer.name, shorter.name])
        monitor.probe([longer.name])  # a second failure: its backoff doubled
        assert monitor.snapshot(longer.name).next_probe_at > monitor.snapshot(shorter.name).next_probe_at
        asked = {s.name: sum(1 for p, _ in s.request_queries if p.endswith("/queue")) for s in cluster.servers}
        clock.advance(monitor.snapshot(shorter.name).next_probe_at - clock.now)
        view.current(probe=True)  # starts the due re-probe in the background
    finally:
        monitor.close()  # waits for the probes started
    now = {s.name: sum(1 for p, _ in s.request_queries if p.endswith("/queue")) for s in cluster.servers}
    assert now[shorter.name] == asked[shorter.name] + 1
    assert now[longer.name] == asked[longer.name]


def test_a_job_input_named_like_a_model_file_is_not_refused_as_a_missing_model(mock_comfy, tmp_path):
    """The LoadImage node of a job's ``inputs`` is uploaded with the job, whatever name the
    workflow's placeholder has (here one that looks like a model file)."""
    from helpers import load_image_workflow

    from comfy_cluster.testing.png import write_png

    image = tmp_path / "in.png"
    write_png(str(image), 8, 8)
    wf = load_image_workflow()
    wf["10"]["inputs"]["image"] = "plate_v1.pt"
    with ServerPool([{"name": "m", "url": mock_comfy.url}], background_status=False) as pool:
        job = pool.submit(wf, inputs={"10": str(image)})
        assert job.result(timeout=30).server == "m"
