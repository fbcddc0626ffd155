"""Replicas of the gateway on one real PostgreSQL server are one service: whichever replica a
load balancer picks answers the same lists (``/queue``, ``/history``, ``/api/jobs``) and one
job's detail, whoever posted, claimed or finished the prompts, and honours the same web
sign-ins (no sticky routing). In one process (real HTTP,
real sockets, a real PostgreSQL): the crash cases run as processes in test_gateway_replicas."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import requests
import sqlalchemy as sa
from gateway_util import FAST_POOL, ScriptClient, _Socket, is_done, of_prompt

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.gateway.auth import add_user, session_cookie_name
from comfy_cluster.state import Store, schema
from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = pytest.mark.timeout(90)
Factory = Callable[..., MockCluster]


@contextlib.contextmanager
def replicas_over(cluster: MockCluster, state: str, n: int = 2, **gateway_kwargs: Any) -> Iterator[List[Gateway]]:
    """``n`` started replicas (each with a pool of its own) over ``cluster`` on ``state``."""
    made: List[Tuple[Gateway, ServerPool]] = []
    options: Any = FAST_POOL
    try:
        for i in range(n):
            pool = ServerPool([{"url": s.url, "name": s.name, "max_queue": 1} for s in cluster], **options)
            gw = Gateway(pool, port=0, state=state, replica=f"r{i}", **gateway_kwargs)
            made.append((gw, pool))
            gw.start()
        yield [gw for gw, _ in made]
    finally:
        for gw, pool in made:
            gw.stop()
            pool.close()


def _lists(url: str) -> Dict[str, Any]:
    """What one replica lists: job statuses, the queue's running and pending ids, history ids,
    the queue's length."""
    jobs = requests.get(url + "/api/jobs", timeout=10).json()["jobs"]
    queue = requests.get(url + "/queue", timeout=10).json()
    return {
        "jobs": {j["id"]: j["status"] for j in jobs},
        "running": [i[1] for i in queue["queue_running"]],
        "pending": sorted(i[1] for i in queue["queue_pending"]),
        "history": sorted(requests.get(url + "/history", timeout=10).json()),
        "remaining": requests.get(url + "/prompt", timeout=10).json()["exec_info"]["queue_remaining"],
    }


def test_every_replica_lists_the_same_queue_history_and_jobs(mock_cluster_factory: Factory, postgres_url: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as (a, b):
        ca, cb = ScriptClient(a.url), ScriptClient(b.url)
        try:
            done = [c.run(sleep_workflow(seconds=0.02, steps=1, seed=i)) for i, c in enumerate((ca, cb))]
            for c, pid in zip((ca, cb), done):
                c.follow(pid)
            running = ca.run(sleep_workflow(seconds=60.0, steps=60, seed=10))
            wait_until(lambda: cluster[0].queue_snapshot()[0], timeout=30, message="the long job running")
            pending = [cb.run(sleep_workflow(seconds=60.0, steps=60, seed=11)), ca.run(sleep_workflow(seconds=60.0, steps=60, seed=12))]
            want: Dict[str, Any] = {
                "jobs": dict({p: "completed" for p in done}, **{running: "in_progress"}, **{p: "pending" for p in pending}),
                "running": [running],
                "pending": sorted(pending),
                "history": sorted(done),
                "remaining": 3,  # what ComfyUI's page shows as the queue's length
            }
            for gw in (a, b):
                seen: List[Dict[str, Any]] = []

                def agrees() -> bool:
                    seen.append(_lists(gw.url))
                    return seen[-1] == want

                try:
                    wait_until(agrees, timeout=30, message=f"{gw.url} lists the whole service")
                finally:
                    assert seen[-1] == want, (gw.url, seen[-1], want)
                newest = list(requests.get(gw.url + "/history", timeout=10).json())[-1]  # oldest first, as ComfyUI
                assert list(requests.get(gw.url + "/history", params={"max_items": "1"}, timeout=10).json()) == [newest]
                for pid, status in want["jobs"].items():
                    detail = requests.get(f"{gw.url}/api/jobs/{pid}", timeout=10)
                    assert detail.status_code == 200 and detail.json()["status"] == status, (gw.url, pid, detail.text)
            # A history item deleted on one replica is gone on every replica (from the list once
            # the other replica's last read of it is half a second old).
            assert requests.post(b.url + "/history", json={"delete": [done[0]]}, timeout=10).status_code == 200
            for gw in (a, b):
                assert requests.get(f"{gw.url}/history/{done[0]}", timeout=10).json() == {}
                wait_until(lambda: sorted(requests.get(gw.url + "/history", timeout=10).json()) == [done[1]], timeout=10,
                           message="the deleted item out of the list")
            cancelled = requests.post(a.url + "/api/jobs/cancel", json={"job_ids": [running, *pending]}, timeout=10).json()
            assert cancelled == {"cancelled": True}
        finally:
            ca.close()
            cb.close()


def test_a_sign_in_on_one_replica_holds_on_every_replica_until_signed_out(mock_cluster_factory: Factory, postgres_url: str, tmp_path: Any) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    path = str(tmp_path / "users.json")
    token = add_user(path, "alice")
    with replicas_over(cluster, postgres_url, users=path) as (a, b):
        form = requests.post(a.url + "/login", data={"token": token, "next": "/"}, allow_redirects=False, timeout=10)
        assert form.status_code == 303
        [session_id] = [str(c.value) for c in form.cookies]

        def as_signed_in(gw: Gateway, path: str, method: str = "GET") -> requests.Response:
            # Behind a load balancer both replicas have one host name: the same cookie name.
            name = session_cookie_name(gw.url.split("//", 1)[1])
            return requests.request(method, gw.url + path, cookies={name: session_id}, allow_redirects=False, timeout=10)

        for gw in (a, b):
            assert as_signed_in(gw, "/queue").status_code == 200
            assert as_signed_in(gw, "/login/status").json()["user"] == "alice"
        store = Store(postgres_url)
        try:
            with store.reading() as conn:  # only the id's hash is kept
                assert session_id not in str(conn.execute(sa.select(schema.sessions)).all())
        finally:
            store.close()
        assert as_signed_in(b, "/logout", "POST").status_code == 200
        for gw in (a, b):
            assert as_signed_in(gw, "/queue").status_code == 401


def test_a_client_that_moves_to_another_replica_gets_each_end_once(mock_cluster_factory: Factory, postgres_url: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as (a, b):
        cid = "artist-1"
        first = _Socket(a.url, cid)
        first.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        # Posted through the other replica (a load balancer's choice): kept there for the client.
        r = requests.post(b.url + "/prompt", json={"prompt": sleep_workflow(seconds=0.05, steps=2, seed=1), "client_id": cid}, timeout=10)
        pid = r.json()["prompt_id"]
        seen = first.wait_for(is_done(pid))
        first.close()
        running = requests.post(b.url + "/prompt", json={"prompt": sleep_workflow(seconds=0.3, steps=3, seed=2), "client_id": cid}, timeout=10).json()["prompt_id"]
        later = _Socket(b.url, cid)  # the client reconnects, now to the replica that kept its frames
        try:
            frames = seen + later.wait_for(is_done(running))
            for p in (pid, running):
                ends = [f["type"] for f in of_prompt(frames, p) if f["type"] in ("execution_success", "execution_error", "execution_interrupted")]
                assert ends == ["execution_success"], (p, ends)
                assert sum(1 for f in frames if is_done(p)(f)) == 1, p
        finally:
            later.close()


NUKE = ["User-Agent: nuke"]


def _run_seen_live_through_two_replicas(a: Gateway, b: Gateway, cid: str, seed: int) -> Tuple[_Socket, str]:
    """ComfyUI-for-Nuke behind a load balancer: its socket on replica ``a``, its POST of a long
    run on ``b``; the socket (still open) and the prompt, once the socket got the run's progress."""
    socket = _Socket(a.url, cid, NUKE)
    try:
        socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
        pid = requests.post(b.url + "/prompt", json={"prompt": sleep_workflow(seconds=30.0, steps=100, seed=seed), "client_id": cid},
                            timeout=10).json()["prompt_id"]
        socket.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "progress" and f["data"].get("prompt_id") == pid, timeout=30)
    except BaseException:
        socket.close()
        raise
    return socket, str(pid)


@contextlib.contextmanager
def frames_held(gw: Gateway, prompt_id: str) -> Iterator[Callable[[], None]]:
    """Every frame of ``prompt_id`` that reaches ``gw``'s relay (sent by its own book, or
    delivered from another replica's notice) waits until the ``release()`` yielded: then they
    go on, in order, on the gateway's loop. The end of a run told late: a notice, or a commit's
    callback, that comes after the client saw the end in /history and opened its next socket."""
    relay = gw.relay
    send, deliver = relay.send, relay.deliver
    held: List[Callable[[], None]] = []

    def held_send(key: Any, kind: str, data: Dict[str, Any], **kwargs: Any) -> None:
        if data.get("prompt_id") != prompt_id:
            return send(key, kind, data, **kwargs)
        held.append(lambda: send(key, kind, data, **kwargs))

    def held_deliver(key: Any, frame: str, keep: bool, pid: Any = None, role: str = "") -> None:
        if pid != prompt_id:
            return deliver(key, frame, keep, pid, role)
        held.append(lambda: deliver(key, frame, keep, pid, role))

    def release() -> None:
        async def go() -> int:
            relay.send, relay.deliver = send, deliver  # type: ignore[method-assign]
            for call in held:
                call()
            return len(held)
        assert gw._loop is not None
        n = asyncio.run_coroutine_threadsafe(go(), gw._loop).result(timeout=10)
        assert n > 0, "no frame of the prompt was held: the test did not reach its state"

    relay.send, relay.deliver = held_send, held_deliver  # type: ignore[method-assign]
    try:
        yield release
    finally:
        relay.send, relay.deliver = send, deliver  # type: ignore[method-assign]


@pytest.mark.parametrize("again", ["same-replica", "other-replica"])
def test_comfyui_for_nuke_run_cancel_close_then_run_again_across_replicas(mock_cluster_factory: Factory, postgres_url: str, again: str) -> None:
    """ComfyUI-for-Nuke's sequence behind a load balancer: its socket on one replica, its POSTs
    on another (which sees no socket of it, so keeps the events for the client). Once a socket
    got the run live, its cancelled end must not reach the socket the client opens next, on
    either replica (CfN would take it for its new run's end), even when the end reaches that
    replica only after the client saw it in /history and opened that socket."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as (a, b):
        cid = "artist:shot010:1"
        first, pid1 = _run_seen_live_through_two_replicas(a, b, cid, seed=1)
        first.close()
        wait_until(lambda: a.relay.connected == 0, message="replica a saw the socket close")
        # Replica a told b that the run reached the client's socket (in milliseconds, long
        # before a person cancels; awaited here so that the test does not rely on it).
        wait_until(lambda: b.relay.is_live(("default", cid), pid1), message="replica b heard the run went live on a")
        there = a if again == "same-replica" else b
        with frames_held(there, pid1) as release:
            assert requests.post(b.url + "/interrupt", json={"prompt_id": pid1}, timeout=10).status_code == 200
            wait_until(lambda: requests.get(f"{a.url}/history/{pid1}", timeout=5).json(), timeout=30, message="the first run ended")
            second = _Socket(there.url, cid, NUKE)
            try:
                second.wait_for(lambda f: isinstance(f, dict) and f.get("type") == "status")
                release()  # the end's notice (a) or its commit's callback (b) comes only now
                pid2 = requests.post(b.url + "/prompt", json={"prompt": sleep_workflow(seconds=0.05, steps=2, seed=2), "client_id": cid}, timeout=10).json()["prompt_id"]
                frames = second.wait_for(is_done(pid2), timeout=30)
                assert of_prompt(frames, pid1) == [], "the new socket got the old run's events"
            finally:
                second.close()


def test_a_client_whose_replica_stopped_still_gets_the_end_of_a_run_it_saw_live(mock_cluster_factory: Factory, postgres_url: str) -> None:
    """The other side of the test above: a socket that dies with its replica (stopped here; a
    crash says nothing either) is not a client's close. The replica that runs the prompt goes on
    keeping its frames, and the client that reconnects there gets its end."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as (a, b):
        cid = "artist:shot010:1"
        first, pid = _run_seen_live_through_two_replicas(a, b, cid, seed=3)
        try:
            a.stop()  # the client's socket dies with its replica
        finally:
            first.close()
        assert requests.post(b.url + "/interrupt", json={"prompt_id": pid}, timeout=10).status_code == 200
        wait_until(lambda: requests.get(f"{b.url}/history/{pid}", timeout=5).json(), timeout=30, message="the run ended")
        later = _Socket(b.url, cid, NUKE)  # it reconnects through the load balancer
        try:
            frames = of_prompt(later.wait_for(is_done(pid), timeout=30), pid)
            assert [f["type"] for f in frames][-2:] == ["execution_interrupted", "executing"]
        finally:
            later.close()


def _holders(url: str) -> Dict[str, Any]:
    """prompt_id -> the replica holding it (None: waiting for a claim), from the database."""
    store = Store(url)
    try:
        with store.reading() as conn:
            return {str(p): r for p, r in conn.execute(sa.select(schema.prompts.c.prompt_id, schema.prompts.c.replica)).all()}
    finally:
        store.close()


def test_interrupt_and_queue_delete_reach_a_prompt_on_any_replica(mock_cluster_factory: Factory, postgres_url: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as gws:
        client = ScriptClient(gws[0].url)
        try:
            running = client.run(sleep_workflow(seconds=60.0, steps=60, seed=1))
            wait_until(lambda: cluster[0].queue_snapshot()[0], timeout=30, message="the job running")
            pending = client.run(sleep_workflow(seconds=60.0, steps=60, seed=2))
            holders = _holders(postgres_url)
            # Asked of a replica that does not hold them (as ComfyUI-for-Nuke cancels: both calls).
            far = next(gw for gw in gws if f"r{gws.index(gw)}" != holders[pending])
            assert requests.post(far.url + "/queue", json={"delete": [pending]}, timeout=10).status_code == 200
            for gw in gws:
                wait_until(lambda: not requests.get(gw.url + "/queue", timeout=10).json()["queue_pending"], timeout=30, message="the pending prompt gone")
            other = next(gw for gw in gws if f"r{gws.index(gw)}" != holders[running])
            assert requests.post(other.url + "/interrupt", json={"prompt_id": running}, timeout=10).status_code == 200
            assert [f["type"] for f in client.follow(running) if f["type"].startswith("execution_")][-1] == "execution_interrupted"
            assert pending not in cluster[0].executed_prompt_ids and requests.get(f"{gws[0].url}/history/{pending}", timeout=10).json() == {}
        finally:
            client.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pages_asking_at_once_share_one_read_of_the_store(mock_cluster_factory: Factory, postgres_url: str) -> None:
    """ComfyUI's page re-reads /queue and /history on every status frame: a hundred pages must
    not cost a hundred reads of the shared store (a read serves the others for half a second,
    unless this replica changed the queue meanwhile)."""
    cluster = mock_cluster_factory(speeds=(1.0,))
    with replicas_over(cluster, postgres_url) as (a, b):
        clock = _Clock()
        assert a.listing is not None and a.replicas is not None
        a.listing.clock = clock
        shared, store = a.replicas.shared, a.replicas.shared.store
        reads: List[str] = []
        queue_rows, history_page = shared.queue_rows, store.history_page
        shared.queue_rows = lambda: reads.append("queue") or queue_rows()  # type: ignore[method-assign]
        store.history_page = lambda *a, **k: reads.append("history") or history_page(*a, **k)  # type: ignore[method-assign]
        client = ScriptClient(b.url)
        try:
            running = client.run(sleep_workflow(seconds=60.0, steps=60, seed=1))
            # Quiet: the job runs and replica a knows the queue's length (no change until it ends).
            wait_until(lambda: cluster[0].queue_snapshot()[0] and a.book is not None and a.book.shared_remaining == 1, timeout=30,
                       message="the job running, counted on replica a")
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                queues = list(pool.map(lambda _: requests.get(a.url + "/queue", timeout=10).json(), range(20)))
                pages = list(pool.map(lambda _: requests.get(a.url + "/history", params={"max_items": "64"}, timeout=10).json(), range(20)))
            assert reads.count("queue") == 1 and reads.count("history") == 1, reads
            assert all(q == queues[0] for q in queues) and all(p == pages[0] for p in pages)
            assert [i[1] for i in queues[0]["queue_running"] + queues[0]["queue_pending"]] == [running]
            clock.now += 0.5
            requests.get(a.url + "/queue", timeout=10)
            assert reads.count("queue") == 2
            # This replica's own change is seen at once: posted through it, listed by it.
            posted = ScriptClient(a.url)
            try:
                pid = posted.run(sleep_workflow(seconds=60.0, steps=60, seed=2))
                queue = requests.get(a.url + "/queue", timeout=10).json()
                assert pid in [i[1] for i in queue["queue_running"] + queue["queue_pending"]]
            finally:
                posted.close()
            requests.post(a.url + "/api/jobs/cancel", json={"job_ids": [running, pid]}, timeout=10)
        finally:
            client.close()
