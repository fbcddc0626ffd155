"""Users of one gateway: each sees and manages their own jobs, fair share goes by user (never by
the client_id a client picks), a clientId's events belong to the user who opened it; and the
events a socket gets are only those of its own prompts' lives (ComfyUI-for-Nuke's sequence)."""

from __future__ import annotations

import threading
import uuid
from typing import Any, Callable, Dict, List

import pytest
import requests
from gateway_util import NukeRemoteClient, ScriptClient, _Socket, gateway_over, is_done, of_prompt

from comfy_cluster.gateway.auth import add_user
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import image_workflow, sleep_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def kinds(messages: List[Dict[str, Any]]) -> List[str]:
    return [m["type"] for m in messages if m["type"] != "progress_state"]


def _users(tmp_path: Any, *names: str) -> Dict[str, Any]:
    path = str(tmp_path / "users.json")
    tokens = {name: add_user(path, name) for name in names}
    return {"path": path, **tokens}


def _auth(token: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- events: ComfyUI-for-Nuke's run, cancel, close, run again --------------------------------


def test_comfyui_for_nuke_run_cancel_close_then_run_again_gets_its_own_result(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        first = NukeRemoteClient(gw.url)  # clientId "artist:shot010:1", as in every Nuke process
        try:
            pid1 = first.run(sleep_workflow(seconds=30.0, steps=100, seed=1))
            assert first.socket is not None
            first.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            # CfN closes its socket right after its cancel, and the server confirms the
            # interrupt later: closing first makes that order certain.
            first.socket.close()
            wait_until(lambda: gw.relay.connected == 0, message="the gateway saw the socket close")
            first.cancel()
            wait_until(lambda: requests.get(f"{gw.url}/history/{pid1}", timeout=5).json(), message="the first run ended")
        finally:
            first.close()
        _next_run_gets_only_its_own(gw.url, pid1)


def _next_run_gets_only_its_own(url: str, old: str) -> None:
    """ComfyUI-for-Nuke's next run (the same clientId, a new socket): none of run ``old``'s
    events, its own end and result."""
    second = NukeRemoteClient(url)
    try:
        pid2 = second.run(image_workflow(color=5))
        frames = second.wait_done(pid2)
        assert of_prompt(frames, old) == [], "the new socket got the old run's events"
        assert kinds(of_prompt(frames, pid2))[-2:] == ["execution_success", "executing"]
        assert second.collect("mock", "")  # its own result is there
    finally:
        second.close()


def test_a_socket_that_opens_while_its_prompt_is_being_committed_makes_its_events_live(mock_cluster_factory: Factory) -> None:
    """ComfyUI-for-Nuke posts while its socket connects. A socket that opens after the POST
    looked for one but before the prompt is in the book (the store's commit in between) sees
    the run live: once it closes, the run's end must not be kept for the next socket (the CI's
    failure of the test above, reached here without timing luck)."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        store = gw.keeper.store
        add_prompt = store.add_prompt
        entered, go = threading.Event(), threading.Event()

        def held_add_prompt(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            go.wait(20)
            return add_prompt(*args, **kwargs)

        store.add_prompt = held_add_prompt  # type: ignore[method-assign]
        first = NukeRemoteClient(gw.url)
        posted: Dict[str, Any] = {}
        poster = threading.Thread(target=lambda: posted.update(pid=first.run(sleep_workflow(seconds=30.0, steps=100, seed=1), socket_gate=entered)))
        try:
            poster.start()
            assert entered.wait(20), "the POST reached the store"
            wait_until(lambda: gw.relay.connected == 1, message="the socket opened while the prompt was being committed")
            go.set()
            poster.join(20)
            pid1 = posted["pid"]
            assert first.socket is not None
            first.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress" and f["data"].get("prompt_id") == pid1)
            first.socket.close()
            wait_until(lambda: gw.relay.connected == 0, message="the gateway saw the socket close")
            first.cancel()
            wait_until(lambda: requests.get(f"{gw.url}/history/{pid1}", timeout=5).json(), message="the first run ended")
        finally:
            go.set()
            first.close()
        _next_run_gets_only_its_own(gw.url, pid1)


def test_events_of_a_prompt_posted_without_a_socket_are_delivered_once(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        cid = str(uuid.uuid4())
        pid = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=2), "client_id": cid}, timeout=5).json()["prompt_id"]
        wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", timeout=5).json(), message="the prompt ended")
        a = _Socket(gw.url, cid)
        try:
            assert kinds(of_prompt(a.wait_for(is_done(pid)), pid))[-2:] == ["execution_success", "executing"]
        finally:
            a.close()
        wait_until(lambda: gw.relay.connected == 0, message="the first socket closed")
        b = _Socket(gw.url, cid)
        try:
            b.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
            pid2 = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=3), "client_id": cid}, timeout=5).json()["prompt_id"]
            frames = b.wait_for(is_done(pid2))
            assert of_prompt(frames, pid) == []
        finally:
            b.close()


# -- users ------------------------------------------------------------------------------------


def test_users_file_tokens_and_the_admin_token(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice")
    with gateway_over(cluster, token="adm1n", gateway_kwargs={"users": users["path"]}) as gw:
        assert requests.get(gw.url + "/queue", headers=_auth(users["alice"]), timeout=5).status_code == 200
        assert requests.get(gw.url + "/queue", headers=_auth("guess"), timeout=5).status_code == 401
        assert requests.get(gw.url + "/queue", timeout=5).status_code == 401
        bob = add_user(users["path"], "bob")  # added while it runs: no restart
        assert requests.get(gw.url + "/api/queue", headers=_auth(bob), timeout=5).status_code == 200
        assert requests.get(gw.url + "/queue?token=" + bob, timeout=5).status_code == 200


def test_each_user_sees_and_manages_only_their_own_jobs(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster[0]
    users = _users(tmp_path, "alice", "bob")
    with gateway_over(cluster, token="adm1n", gateway_kwargs={"users": users["path"]}, server_mock1={"max_queue": 1}) as gw:
        alice, bob = ScriptClient(gw.url, token=users["alice"]), ScriptClient(gw.url, token=users["bob"])
        try:
            a_run = alice.run(sleep_workflow(seconds=30.0, steps=100, seed=1))
            alice.socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress")
            a_wait = alice.run(sleep_workflow(seconds=0.01, steps=1, seed=2))
            b_wait = bob.run(sleep_workflow(seconds=0.01, steps=1, seed=3))
            b_wait2 = bob.run(sleep_workflow(seconds=0.01, steps=1, seed=4))
            q = bob.http.get(gw.url + "/queue", timeout=5).json()
            assert q["queue_running"] == [] and [i[1] for i in q["queue_pending"]] == [b_wait, b_wait2]
            assert q["queue_others"] == {"running": 1, "pending": 1}
            admin = requests.get(gw.url + "/queue", headers=_auth("adm1n"), timeout=5).json()
            assert len(admin["queue_pending"]) == 3 and "queue_others" not in admin
            # bob: an interrupt without id, a delete of alice's pending job, a clear
            assert bob.http.post(gw.url + "/interrupt", json={}, timeout=5).status_code == 200
            assert bob.http.post(gw.url + "/queue", json={"delete": [a_wait, b_wait2]}, timeout=5).status_code == 200
            assert bob.http.post(gw.url + "/api/queue", json={"clear": True}, timeout=5).status_code == 200
            q = alice.http.get(gw.url + "/queue", timeout=5).json()
            assert [i[1] for i in q["queue_running"]] == [a_run] and [i[1] for i in q["queue_pending"]] == [a_wait]
            assert server.interrupt_requests == []
            # alice's interrupt without id stops her running job
            assert alice.http.post(gw.url + "/interrupt", data=b"", timeout=5).status_code == 200
            assert kinds(alice.follow(a_run))[-2:] == ["execution_interrupted", "executing"]
            alice.follow(a_wait)
            # history: her own; bob's view of it is empty, his deletes of it do nothing
            assert bob.http.get(f"{gw.url}/history/{a_run}", timeout=5).json() == {}
            assert bob.http.get(gw.url + "/history", timeout=5).json() == {}
            bob.http.post(gw.url + "/history", json={"delete": [a_run]}, timeout=5)
            bob.http.post(gw.url + "/history", json={"clear": True}, timeout=5)
            assert list(alice.http.get(gw.url + "/history", timeout=5).json()) == [a_run, a_wait]
            assert list(requests.get(gw.url + "/history?max_items=1", headers=_auth("adm1n"), timeout=5).json()) == [a_wait]
        finally:
            alice.close()
            bob.close()


def test_a_client_id_stream_belongs_to_the_user_who_opened_it(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    users = _users(tmp_path, "alice", "mallory")
    with gateway_over(cluster, gateway_kwargs={"users": users["path"]}) as gw:
        alice = ScriptClient(gw.url, token=users["alice"])
        spy = _Socket(gw.url, alice.client_id, [f"Authorization: Bearer {users['mallory']}"])
        try:
            spy.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
            pid = alice.run(image_workflow(color=4))
            assert kinds(alice.follow(pid))[-2:] == ["execution_success", "executing"]
            # mallory's own prompt under the same clientId reaches her socket only
            own = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=6), "client_id": alice.client_id}, headers=_auth(users["mallory"]), timeout=5)
            spy.wait_for(is_done(own.json()["prompt_id"]))
            assert of_prompt(spy.frames, pid) == []
            assert of_prompt(alice.socket.frames, own.json()["prompt_id"]) == []
        finally:
            spy.close()
            alice.close()


def test_fair_share_goes_by_user_never_by_client_id(mock_cluster_factory: Factory, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    server = cluster[0]
    users = _users(tmp_path, "batch", "single")
    with gateway_over(cluster, token="adm1n", gateway_kwargs={"users": users["path"]}, server_mock1={"max_queue": 1}) as gw:
        batch, single = ScriptClient(gw.url, token=users["batch"]), ScriptClient(gw.url, token=users["single"])
        try:
            server.pause_jobs()
            # The batch user posts each prompt under a new client_id (as if to be many clients).
            many = [batch.run(sleep_workflow(seconds=0.02, steps=1, seed=i), client_id=str(uuid.uuid4())) for i in range(6)]
            one = single.run(sleep_workflow(seconds=0.02, steps=1, seed=100))
            book = gw.book
            assert book is not None
            wait_until(lambda: len(book.active) == 7 and all(gj.job is not None for gj in list(book.active.values())), message="all seven in the pool")
            server.resume_jobs()
            single.follow(one)
            wait_until(lambda: len(requests.get(gw.url + "/history", headers=_auth("adm1n"), timeout=5).json()) == 7, message="all seven done")
            order = list(requests.get(gw.url + "/history", headers=_auth("adm1n"), timeout=5).json())
            assert order[:3] == [many[0], one, many[1]]  # the second slot went to the other user
        finally:
            batch.close()
            single.close()


def test_the_comfy_user_header_names_the_user_on_a_trusted_network_only(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, gateway_kwargs={"trust_user_header": True}) as gw:
        pid = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=1)}, headers={"comfy-user": "alice"}, timeout=5).json()["prompt_id"]
        wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", headers={"comfy-user": "alice"}, timeout=5).json(), message="alice's prompt done")
        assert requests.get(f"{gw.url}/history/{pid}", headers={"comfy-user": "bob"}, timeout=5).json() == {}
        # ComfyUI's page opens its socket without the header: it gets the events of the user who
        # posts with its clientId (a trusted network).
        page = _Socket(gw.url, "page-1")
        try:
            page.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
            pid = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=2), "client_id": "page-1"}, headers={"comfy-user": "alice"}, timeout=5).json()["prompt_id"]
            page.wait_for(is_done(pid))
        finally:
            page.close()
    with gateway_over(cluster) as gw:  # not opted in: the header names nobody, all is shared
        pid = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=1)}, headers={"comfy-user": "alice"}, timeout=5).json()["prompt_id"]
        wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", headers={"comfy-user": "bob"}, timeout=5).json(), message="visible to all")


def test_an_identical_prompt_goes_to_the_server_that_has_it_cached(mock_cluster_factory: Factory) -> None:
    # round_robin would send the rerun to the next server, which has nothing cached.
    cluster = mock_cluster_factory(speeds=(1.0, 1.0, 1.0))
    with gateway_over(cluster, strategy="round_robin") as gw:
        client = ScriptClient(gw.url)
        try:
            prompt = sleep_workflow(seconds=0.3, steps=3, seed=42)
            first = client.run(prompt)
            client.follow(first)
            other = client.run(sleep_workflow(seconds=0.01, steps=1, seed=7))  # another prompt moves the turn on
            client.follow(other)
            again = client.run(prompt)
            frames = client.follow(again)
            assert [f["type"] for f in frames if f["type"] == "progress"] == []
            cached = [f for f in frames if f["type"] == "execution_cached"]
            assert cached and sorted(cached[0]["data"]["nodes"]) == sorted(prompt)
            ran = [s.name for s in cluster if len(s.executed_prompt_ids) >= 2]
            assert len(ran) == 1, [s.executed_prompt_ids for s in cluster]
        finally:
            client.close()
