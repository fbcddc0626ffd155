"""The submit path against the mock cluster: success, every failure path, cancel, outputs."""

from __future__ import annotations

import json
import os
import threading

import pytest
from helpers import callbacks_delivered, fail_workflow, kinds, load_image_workflow, servers_of, sleep_workflow, symlink_dir, wait_until

from comfy_cluster import (
    JobCancelled,
    JobFailed,
    JobResult,
    OutputFile,
    ServerPool,
    UnsafePathError,
    WorkflowError,
    WorkflowInputError,
)
from comfy_cluster.testing import Fault

FAST = dict(background_status=False, ws_connect_timeout=5.0, probe_timeout=(5.0, 5.0), reconcile_interval=0.5, server_lost_after=2.0)


def test_success_events_outputs_and_download(mock_comfy, tmp_path):
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        seen = []
        job = pool.submit(sleep_workflow(0.05, steps=3), on_event=seen.append)
        res = job.result(timeout=30)
        assert isinstance(res, JobResult)
        assert job.status == "succeeded"
        assert res.server == "m" and res.attempts == 1 and res.seconds > 0
        assert res.prompt_id == job.prompt_id
        assert list(res.outputs) == ["3"] and res.outputs["3"][0].filename.endswith(".png")
        k = kinds(job.events)
        assert k[:2] == ["submitted", "queued"] and k[-1] == "succeeded"
        assert "started" in k and k.count("progress") >= 3 and "output" in k
        assert k.index("started") < k.index("progress") < k.index("output") < k.index("succeeded")
        assert callbacks_delivered(job)  # result() returns as soon as the job is done, before its callbacks ran
        assert kinds(seen) == k
        assert all(e.server == "m" for e in job.events)
        paths = job.download(str(tmp_path))
        assert len(paths) == 1 and open(paths[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.dirname(paths[0]).startswith(str(tmp_path))


def test_workflow_from_file_and_single_client_id(mock_comfy, tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(sleep_workflow()))
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        pool.submit(str(path)).result(timeout=30)
        pool.submit(sleep_workflow()).result(timeout=30)
        ids = {extra.get("client_id") for _, _, extra in mock_comfy.received_prompts}
        assert ids == {pool.client_id}


def test_inputs_are_uploaded_to_the_server_that_runs_the_job(mock_comfy, tmp_path):
    from comfy_cluster.testing.png import png_bytes

    img = tmp_path / "plate.0001.png"
    img.write_bytes(png_bytes(4, 4))
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        res = pool.submit(load_image_workflow(), inputs={"10": str(img)}).result(timeout=30)
        assert res.outputs
        _, prompt, _ = mock_comfy.received_prompts[-1]
        assert prompt["10"]["inputs"]["image"].endswith("plate.0001.png")


@pytest.mark.parametrize(
    "workflow, inputs, words",
    [
        ([1, 2], None, "must be a JSON object of nodes"),
        ({"1": {"inputs": {}}}, None, "node 1 has no class_type"),
        ({"nodes": [], "links": []}, None, "UI-format"),
        ("/no/such/workflow.json", None, "workflow file not found"),
        (load_image_workflow(), {"10": "/no/such/plate.png"}, "file not found: /no/such/plate.png"),
        (load_image_workflow(), {"99": __file__}, "node 99 is not in the workflow"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(mock_comfy, workflow, inputs, words):
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        with pytest.raises(WorkflowInputError, match=words):
            pool.submit(workflow, inputs=inputs)
        assert mock_comfy.received_prompts == []


def test_validation_error_is_workflow_error_without_retry(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    wf = sleep_workflow()
    wf["2"]["inputs"]["steps"] = "many"
    with ServerPool(servers_of(cluster), **FAST) as pool:
        job = pool.submit(wf)
        with pytest.raises(WorkflowError) as info:
            job.result(timeout=30)
        err = info.value
        assert err.node_errors and err.node_errors[0].node_id == "2"
        assert err.node_errors[0].class_type == "TestSleep" and err.node_errors[0].input == "steps"
        assert "node 2 (TestSleep) input 'steps'" in str(err)
        assert job.status == "failed"
        assert sum(len(s.received_prompts) for s in cluster.servers) == 0  # a 400 is not accepted
        assert job.attempts == 1


def _upload(server, name):
    import requests

    from comfy_cluster.testing.png import png_bytes

    r = requests.post(server.url + "/upload/image", files={"image": (name, png_bytes(2, 2), "image/png")}, data={"overwrite": "true"})
    r.raise_for_status()


def _needs_file(name):
    wf = load_image_workflow()
    wf["10"]["inputs"]["image"] = name
    return wf


def test_file_missing_on_one_server_moves_to_one_that_has_it(mock_comfy):
    """A 400 for something one server lacks (value_not_in_list) is retried where it exists."""
    from comfy_cluster.testing import MockComfyServer

    with MockComfyServer(name="big") as big:
        _upload(big, "only_on_big.png")
        servers = [{"name": "small", "url": mock_comfy.url, "priority": 0}, {"name": "big", "url": big.url, "priority": 1}]
        with ServerPool(servers, strategy="priority", **FAST) as pool:
            job = pool.submit(_needs_file("only_on_big.png"))
            res = job.result(timeout=30)
            assert res.server == "big" and job.tried == ["small", "big"]
            assert pool.status()[0].online  # a missing file or model is not a server failure


def test_file_missing_everywhere_is_workflow_error(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    with ServerPool(servers_of(cluster), **FAST) as pool:
        job = pool.submit(_needs_file("nowhere.png"))
        with pytest.raises(WorkflowError, match="nowhere.png"):
            job.result(timeout=30)
        assert sorted(job.tried) == sorted(s.name for s in cluster.servers)


@pytest.mark.parametrize("fault", [Fault.REFUSE, Fault.ERROR_500, Fault.HANG])
def test_post_failure_moves_the_job(mock_cluster_factory, fault):
    cluster = mock_cluster_factory(speeds=(1, 1))
    bad, good = cluster.servers
    servers = [dict(s, priority=i) for i, s in enumerate(servers_of(cluster))]  # bad is preferred
    # Reads and websocket connects of 2 s: the hung server costs that long, and a healthy mock
    # answers well within it even on a loaded machine (CI, with half a second for probes: the bad
    # server seen offline before its fault was set, so the job never tried it).
    knobs = dict(FAST, ws_connect_timeout=2.0, probe_timeout=(5.0, 2.0))
    with ServerPool(servers, strategy="priority", request_timeout=(5.0, 2.0), **knobs) as pool:
        wf = sleep_workflow()
        pool.select(wf)  # status and node lists read while both are fine
        bad.set_fault(fault)
        job = pool.submit(wf)
        res = job.result(timeout=20)
        assert res.server == good.name and res.attempts == 2
        retry = [e for e in job.events if e.kind == "retrying"]
        assert retry and retry[0].from_server == bad.name and retry[0].to_server == good.name
        assert not pool.status()[0].online


def test_restart_mid_job_resubmits_elsewhere(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    with ServerPool(servers_of(cluster), **FAST) as pool:
        for s in cluster.servers:  # the job cannot end before the restart, however loaded the machine
            s.pause_jobs()
        job = pool.submit(sleep_workflow(1.0, steps=10))
        wait_until(lambda: job.status == "running", what="job running")
        first = job.server.name
        victim = next(s for s in cluster.servers if s.name == first)
        victim.restart()
        for s in cluster.servers:
            s.resume_jobs()
        res = job.result(timeout=20)
        assert res.server != first and res.attempts == 2
        assert "retrying" in kinds(job.events)


def test_websocket_dropped_mid_job_while_server_lives(mock_comfy):
    mock_comfy.pause_jobs()  # still running when the test sees it running, however loaded the machine
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        job = pool.submit(sleep_workflow(0.6, steps=6))
        wait_until(lambda: job.status == "running", what="job running")
        mock_comfy.drop_websockets()
        mock_comfy.resume_jobs()
        res = job.result(timeout=30)
        assert res.server == "m" and res.attempts == 1
        assert len(mock_comfy.received_prompts) == 1


def test_runtime_error_is_job_failed_not_retried(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(1, 1))
    with ServerPool(servers_of(cluster), **FAST) as pool:
        job = pool.submit(fail_workflow("kaboom"))
        with pytest.raises(JobFailed) as info:
            job.result(timeout=30)
        err = info.value
        assert err.node_id == "2" and err.node_type == "TestFail"
        assert "kaboom" in err.exception_message and "kaboom" in str(err)
        assert err.traceback
        assert job.attempts == 1 and job.status == "failed"
        assert "failed" in kinds(job.events)


def test_cancel_pending_and_running_on_their_server(mock_comfy):
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 2}], **FAST) as pool:
        running = pool.submit(sleep_workflow(5.0, steps=50))
        wait_until(lambda: running.status == "running", what="first running")
        pending = pool.submit(sleep_workflow(5.0, steps=50))
        wait_until(lambda: pending.prompt_id is not None, what="second pending on the server")
        assert pending.cancel()
        with pytest.raises(JobCancelled):
            pending.result(timeout=30)
        assert pending.status == "cancelled"
        assert any(pending.prompt_id in r.get("delete", []) for r in mock_comfy.queue_delete_requests)
        # A pending job is deleted, never interrupted: older servers ignore the id of an
        # interrupt and would stop whatever runs (here: our other job).
        assert mock_comfy.interrupt_requests == []
        assert running.status == "running"
        assert running.cancel()
        with pytest.raises(JobCancelled):
            running.result(timeout=30)
        assert {"prompt_id": running.prompt_id} in mock_comfy.interrupt_requests
        # Never an interrupt without our id (that would stop another client's job).
        assert all(r.get("prompt_id") in (running.prompt_id, pending.prompt_id) for r in mock_comfy.interrupt_requests)
        assert mock_comfy.queue_snapshot() == ([], [])
        assert not running.cancel()  # already ended


def test_cancel_never_interrupts_another_clients_job(mock_comfy):
    import requests

    other = requests.post(mock_comfy.url + "/prompt", json={"prompt": sleep_workflow(3.0, steps=30), "client_id": "other"}).json()["prompt_id"]
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        mine = pool.submit(sleep_workflow(1.0))
        wait_until(lambda: mine.prompt_id is not None, what="posted")
        mine.cancel()
        with pytest.raises(JobCancelled):
            mine.result(timeout=30)
        running, _ = mock_comfy.queue_snapshot()
        assert running == [other]
        requests.post(mock_comfy.url + "/interrupt", json={"prompt_id": other})


def test_cancel_while_waiting_locally(mock_comfy):
    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 1}], **FAST) as pool:
        mock_comfy.pause_jobs()  # first holds the only slot until second is cancelled, whatever the load
        first = pool.submit(sleep_workflow(3.0, steps=30))
        second = pool.submit(sleep_workflow())
        wait_until(lambda: first.prompt_id is not None, what="first posted")
        second.cancel()
        with pytest.raises(JobCancelled):
            second.result(timeout=5)
        assert second.prompt_id is None and len(mock_comfy.received_prompts) == 1
        first.cancel()


@pytest.mark.parametrize(
    "filename, subfolder",
    [("../evil.png", ""), ("ok.png", "../.."), ("/etc/passwd", ""), ("ok.png", "/abs"), ("C:\\x.png", ""),
     ("ok.png", "D:"), ("a\x00.png", ""), ("..", ""), ("ok.png", "a/../../b"), ("sub\\..\\..\\x.png", "")],
)
def test_download_refuses_names_that_escape(mock_comfy, tmp_path, filename, subfolder):
    dest = tmp_path / "out"
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        good = OutputFile("fine.png", "", "output", "3")
        bad = OutputFile(filename, subfolder, "output", "3")
        with pytest.raises(UnsafePathError):
            pool._download(pool.servers[0], [good, bad], str(dest))
        assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_download_refuses_symlinked_subfolder(mock_comfy, tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    symlink_dir(outside, dest / "link")  # a junction on Windows without the symlink privilege
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        with pytest.raises(UnsafePathError, match="leads outside"):
            pool._download(pool.servers[0], [OutputFile("x.png", "link", "output", "3")], str(dest))
    assert list(outside.iterdir()) == []


def test_shared_storage_returns_mapped_paths(mock_comfy, tmp_path):
    with ServerPool([{"name": "m", "url": mock_comfy.url, "dir_local": mock_comfy.data_dir}], **FAST) as pool:
        job = pool.submit(sleep_workflow())
        job.result(timeout=30)
        dest = tmp_path / "dl"
        paths = job.download(str(dest))
        assert paths and all(p.startswith(mock_comfy.data_dir) and os.path.isfile(p) for p in paths)
        assert not dest.exists()  # nothing copied


def test_many_jobs_from_many_threads(mock_cluster_factory):
    cluster = mock_cluster_factory(speeds=(4, 4, 4))
    results = []
    lock = threading.Lock()
    with ServerPool(servers_of(cluster), **FAST) as pool:

        def work():
            jobs = [pool.submit(sleep_workflow(0.01, steps=1)) for _ in range(8)]
            for j in jobs:
                r = j.result(timeout=30)
                with lock:
                    results.append(r.prompt_id)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 48 == len(set(results))
    executed = [pid for s in cluster.servers for pid in s.executed_prompt_ids]
    assert sorted(executed) == sorted(results)


def test_close_cancels_and_leaves_no_threads(mock_comfy):
    before = set(threading.enumerate())
    pool = ServerPool([{"name": "m", "url": mock_comfy.url}], ws_connect_timeout=5.0)
    job = pool.submit(sleep_workflow(5.0, steps=50))
    wait_until(lambda: job.status == "running", what="running")
    pool.close()
    with pytest.raises(JobCancelled):
        job.result(timeout=10)
    wait_until(lambda: set(threading.enumerate()) <= before, timeout=30, what="threads gone")
    wait_until(lambda: mock_comfy.queue_snapshot() == ([], []), what="job stopped on the server")


def test_headers_on_every_request_and_the_websocket_behind_a_proxy(mock_comfy, caplog):
    """A studio's reverse proxy with a bearer token and a path prefix: everything goes through."""
    import logging

    from auth_proxy import AuthProxy

    caplog.set_level(logging.DEBUG)
    token = "tok-9f8e7d6c5b4a"
    with AuthProxy(mock_comfy.url, token) as proxy:
        good = {"name": "p", "url": proxy.url, "headers": {"Authorization": f"Bearer {token}"}}
        with ServerPool([good], **FAST) as pool:
            res = pool.submit(sleep_workflow(0.05)).result(timeout=15)
            assert res.server == "p"
        assert "ws" in proxy.seen and proxy.seen.count("http") >= 4  # queue, object_info, prompt, history
        assert proxy.refused == []
        with ServerPool([{"name": "p", "url": proxy.url}], **FAST) as pool:
            st = pool.status()[0]
            assert not st.online and "HTTP 401" in st.error
    assert token not in caplog.text


def test_refused_mid_job_moves_soon_and_the_copy_is_removed_when_back(mock_cluster_factory):
    """ComfyUI stops answering (connection refused) while the job runs: the job moves within a
    few seconds (not after server_lost_after), and the copy left there is deleted once the
    server is reachable again, so it never runs twice."""
    cluster = mock_cluster_factory(speeds=(1, 1))
    kw = dict(FAST, server_lost_after=60.0)
    with ServerPool(servers_of(cluster), **kw) as pool:
        job = pool.submit(sleep_workflow(8.0, steps=80))
        wait_until(lambda: job.status == "running", what="job running")
        first = next(s for s in cluster.servers if s.name == job.server.name)
        old_id = job.prompt_id
        first.pause_jobs()  # the copy cannot finish before it is removed, however loaded the machine
        first.set_fault(Fault.REFUSE)  # the machine unreachable; its ComfyUI goes on running
        # "soon": well before server_lost_after (60 s), with room for a loaded machine
        wait_until(lambda: "retrying" in kinds(job.events), timeout=20, what="job moved")
        first.set_fault(None)
        pool.status(refresh=True)
        wait_until(lambda: {"prompt_id": old_id} in first.interrupt_requests, what="old copy interrupted")
        wait_until(lambda: first.queue_snapshot() == ([], []), what="old copy gone")
        assert old_id not in first.executed_prompt_ids
        job.cancel()


def test_download_by_type_leaves_previews_out(mock_comfy, tmp_path):
    wf = sleep_workflow(0.05)
    wf["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    with ServerPool([{"name": "m", "url": mock_comfy.url}], **FAST) as pool:
        job = pool.submit(wf)
        res = job.result(timeout=30)
        assert {f.type for f in res.files} == {"output", "temp"}
        all_paths = job.download(str(tmp_path / "all"))
        outputs = job.download(str(tmp_path / "out"), types=("output",))
    assert len(all_paths) == 2 and len(outputs) == 1
    assert os.path.basename(outputs[0]) == res.outputs["3"][0].filename
