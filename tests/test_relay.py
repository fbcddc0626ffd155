"""The gateway's relay alone (comfy_cluster/gateway/relay.py), with fake client sockets.

What a ComfyUI client of the gateway relies on, checked without a network: a clientId's
events reach that user's socket only; each prompt's end reaches its client exactly once (the
first end, then its ``executing`` null, nothing after until the prompt_id starts again);
events posted before a client's socket opened are kept for it, once, in bounded memory; a
client that does not read loses previews first and is then closed with 1013; an end other
replicas may hold a copy of waits for its record, but never for ever. Frames are the ones a
real ComfyUI 0.3.64 sent (transcripts.json of shared/comfyui-api, the "success" scenario).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Union

import pytest

import comfy_cluster.gateway.outbox as outbox_module
import comfy_cluster.gateway.relay as relay_module
from comfy_cluster.gateway.previews import PREVIEW_IMAGE_WITH_METADATA
from comfy_cluster.gateway.relay import CLOSE_TOO_SLOW, END, Key, Relay

Frame = Union[str, bytes]
ALICE: Key = ("alice", "c1")
BOB: Key = ("bob", "c1")  # the same clientId as Alice's, another user
PID = "3fa1e423-fdd0-4957-9a82-9942383e9014"

# A real ComfyUI 0.3.64's frames of one prompt, in order (transcripts.json "success"), ending
# with its execution_success; ComfyUI then sends the executing null that closes it.
SUCCESS: List[Tuple[str, Dict[str, Any]]] = [
    ("execution_start", {"prompt_id": PID, "timestamp": 1795798121021}),
    ("execution_cached", {"nodes": [], "prompt_id": PID, "timestamp": 1795798121022}),
    ("executing", {"node": "2", "display_node": "2", "prompt_id": PID}),
    ("progress", {"value": 1, "max": 5, "prompt_id": PID, "node": "2"}),
    ("progress_state", {"prompt_id": PID, "nodes": {"2": {"value": 1.0, "max": 5.0, "state": "running", "node_id": "2"}}}),
    ("executed", {"node": "3", "display_node": "3", "output": {"images": [{"filename": "rec_00004_.png", "subfolder": "",
                                                                          "type": "output"}]}, "prompt_id": PID}),
]
ENDS = {
    "execution_success": {"prompt_id": PID, "timestamp": 1795798121529},
    "execution_error": {"prompt_id": PID, "node_id": "2", "node_type": "TestFail", "exception_message": "boom",
                        "exception_type": "RuntimeError", "traceback": [], "current_inputs": {}, "current_outputs": {}},
    "execution_interrupted": {"prompt_id": PID, "node_id": "2", "node_type": "TestSleep", "executed": ["1"],
                              "timestamp": 1795798122959},
}
CLOSING = ("executing", {"node": None, "prompt_id": PID})
STATUS = ("status", {"status": {"exec_info": {"queue_remaining": 1}}})


class FakeSocket:
    """aiohttp's WebSocketResponse as the relay uses it: records what is written, in order.
    ``stalled``: a client that does not read (each send waits until ``resume()``);
    ``close_hangs``: a close that is never answered; ``send_fails``: the peer is gone."""

    def __init__(self, stalled: bool = False, close_hangs: bool = False, send_fails: bool = False,
                 close_fails: bool = False) -> None:
        self.sent: List[Frame] = []
        self.sending = 0  # sends waiting on a stalled client
        self._go = asyncio.Event()
        if not stalled:
            self._go.set()
        self.close_hangs = close_hangs
        self.send_fails = send_fails
        self.close_fails = close_fails
        self.closed_with: Optional[Tuple[int, bytes]] = None

    def resume(self) -> None:
        self._go.set()

    async def _send(self, frame: Frame) -> None:
        if self.send_fails:
            raise ConnectionResetError("peer gone")
        self.sending += 1
        await self._go.wait()
        self.sending -= 1
        self.sent.append(frame)

    async def send_str(self, data: str) -> None:
        assert isinstance(data, str)
        await self._send(data)

    async def send_bytes(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        await self._send(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self.close_hangs:
            await asyncio.Event().wait()
        if self.close_fails:
            raise ConnectionResetError("peer gone")
        self.closed_with = (code, message)
        return True

    def events(self) -> List[Tuple[str, Dict[str, Any]]]:
        """The JSON frames written, as (type, data)."""
        out = []
        for frame in self.sent:
            if isinstance(frame, str):
                msg = json.loads(frame)
                out.append((msg["type"], msg["data"]))
        return out

    def kinds(self) -> List[str]:
        return [kind for kind, _ in self.events()]


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


async def until(predicate: Callable[[], Any], what: str) -> None:
    """Let the loop run until ``predicate`` holds (for what no event announces, such as a
    close time-out's end); the 5 s only bound a hang."""
    deadline = time.monotonic() + 5.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every writer task write what it can."""
    for _ in range(200):
        await asyncio.sleep(0)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro(), 8.0)  # only rules out a hang (the work is in memory)

    asyncio.run(bounded())


def first(sid: str = "c1") -> Dict[str, Any]:
    return {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}}


def sized(kind: str, size: int, **data: Any) -> Tuple[str, Dict[str, Any]]:
    """An event whose JSON frame is exactly ``size`` bytes long."""
    body = dict(data, pad="")
    base = len(json.dumps({"type": kind, "data": body}))
    assert size >= base
    body["pad"] = "x" * (size - base)
    assert len(json.dumps({"type": kind, "data": body})) == size
    return kind, body


def preview(size: int, fill: bytes = b"p") -> bytes:
    """ComfyUI's PREVIEW_IMAGE frame (type 1, PNG) of ``size`` bytes."""
    return (1).to_bytes(4, "big") + (2).to_bytes(4, "big") + fill * (size - 8)


# ---------------------------------------------------------------------------------------------
# A user's events are theirs.


def test_a_clients_events_reach_that_users_socket_only():
    async def main() -> None:
        relay = Relay()
        alice, bob, alice2 = FakeSocket(), FakeSocket(), FakeSocket()
        relay.attach(ALICE, alice, first())
        relay.attach(BOB, bob, first())
        relay.attach(("alice", "c2"), alice2, first("c2"))
        assert relay.is_connected(ALICE) and relay.is_connected(BOB) and not relay.is_connected(("carol", "c1"))
        relay.send(ALICE, "progress", {"value": 1, "max": 5, "prompt_id": PID, "node": "2"})
        relay.send_bytes(BOB, preview(64, b"b"))
        relay.send_preview(("alice", "c2"), preview(64, b"a"), PID, "2")
        relay.send(("carol", "c1"), "progress", {"value": 2, "max": 5, "prompt_id": PID, "node": "2"})
        relay.broadcast(*STATUS)
        await settle()
        assert alice.events() == [("status", first()["data"]), ("progress", {"value": 1, "max": 5, "prompt_id": PID, "node": "2"}),
                                  STATUS]
        assert bob.sent[1:] == [preview(64, b"b"), json.dumps({"type": STATUS[0], "data": STATUS[1]})]
        assert alice2.sent[1:] == [preview(64, b"a"), json.dumps({"type": STATUS[0], "data": STATUS[1]})]
        assert relay.connected == 3

    run(main)


@pytest.mark.parametrize("sid", ["c1", "default"])
def test_an_anonymous_page_sees_a_named_users_events_only_on_a_trusted_network_and_only_without_its_own_socket(sid):
    async def main() -> None:
        named, anonymous = ("alice", sid), ("default", sid)
        relay = Relay()
        page = FakeSocket()
        relay.attach(anonymous, page, first(sid))
        relay.send(named, "progress", {"value": 1, "max": 5, "prompt_id": PID})
        relay.send_bytes(named, preview(16))
        await settle()
        assert page.kinds() == ["status"] and len(page.sent) == 1  # not trusted: nothing crosses

        relay.anonymous_sees_named = True
        relay.send(named, "progress", {"value": 2, "max": 5, "prompt_id": PID})
        relay.send_bytes(named, preview(16))
        relay.send(anonymous, "progress", {"value": 3, "max": 5, "prompt_id": "own"})
        await settle()
        assert page.events()[1:] == [("progress", {"value": 2, "max": 5, "prompt_id": PID}),
                                     ("progress", {"value": 3, "max": 5, "prompt_id": "own"})]
        assert page.sent[2] == preview(16)
        assert relay.is_connected(named)

        own = FakeSocket()
        relay.attach(named, own, first(sid))  # Alice's own socket: hers, not the page's
        relay.send(named, "progress", {"value": 4, "max": 5, "prompt_id": PID})
        await settle()
        assert own.events()[1:] == [("progress", {"value": 4, "max": 5, "prompt_id": PID})]
        assert len(page.sent) == 4

        relay.anonymous_name = "guest"  # the name the gateway gives an anonymous socket
        relay.send(("alice", "other"), "progress", {"value": 5, "max": 5, "prompt_id": PID})
        guest = FakeSocket()
        relay.attach(("guest", "other"), guest, first("other"))
        relay.send(("alice", "other"), "progress", {"value": 6, "max": 5, "prompt_id": PID})
        await settle()
        assert guest.events()[1:] == [("progress", {"value": 6, "max": 5, "prompt_id": PID})]

    run(main)


# ---------------------------------------------------------------------------------------------
# Each prompt's end reaches its client exactly once.


@pytest.mark.parametrize("end", sorted(ENDS))
def test_each_prompts_end_reaches_its_client_exactly_once_however_often_it_is_relayed(end):
    """A failover or a second replica relays a prompt's frames again: the client gets the
    first run of them, its end once and the executing null once; nothing of the prompt after.
    A prompt_id the client posts again after its end is a new run with an end of its own."""

    async def main() -> None:
        relay = Relay()
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        script = SUCCESS + [(end, ENDS[end]), CLOSING]
        for kind, data in script:
            relay.send(ALICE, kind, data)
        # The same frames again (all but execution_start, which would begin a new run), as
        # from another replica, then once more through the local path.
        for kind, data in script[1:]:
            relay.deliver(ALICE, json.dumps({"type": kind, "data": data}), False, data.get("prompt_id"),
                          relay_module.role_of(kind, data))
        for kind, data in script[1:]:
            relay.send(ALICE, kind, data)
        relay.send(ALICE, *STATUS)  # frames of no prompt always pass
        await settle()
        assert ws.events()[1:] == script + [STATUS]

        rerun = SUCCESS[:2] + [(end, ENDS[end]), CLOSING]
        for kind, data in rerun + rerun[1:]:
            relay.send(ALICE, kind, data)
        await settle()
        assert ws.events()[1 + len(script) + 1:] == rerun

        # The end went to Alice's socket; Bob's clientId is the same, his run is his own.
        bob = FakeSocket()
        relay.attach(BOB, bob, first())
        for kind, data in script:
            relay.send(BOB, kind, data)
        await settle()
        assert bob.events()[1:] == script

    run(main)


def test_after_a_prompts_end_its_late_frames_are_dropped_but_its_executing_null_passes_once():
    async def main() -> None:
        relay = Relay()
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        relay.send(ALICE, "execution_success", ENDS["execution_success"])
        relay.send(ALICE, "execution_cached", {"nodes": [], "prompt_id": PID})  # late, no node
        relay.send(ALICE, "executing", {"node": "3", "prompt_id": PID})  # late, a node
        relay.send(ALICE, "progress_state", {"prompt_id": PID, "nodes": {}})
        relay.send(ALICE, *CLOSING)
        relay.send(ALICE, "executing", {"node": None, "prompt_id": PID})
        relay.send(ALICE, "execution_error", ENDS["execution_error"])
        relay.send(ALICE, "execution_start", {"prompt_id": "other"})
        relay.send(ALICE, "executing", {"node": None, "prompt_id": "other"})  # not after an end: passes
        await settle()
        assert ws.events()[1:] == [("execution_success", ENDS["execution_success"]), CLOSING,
                                   ("execution_start", {"prompt_id": "other"}),
                                   ("executing", {"node": None, "prompt_id": "other"})]

    run(main)


def test_the_ends_of_the_newest_prompts_are_remembered_within_the_bound(monkeypatch):
    """At most MAX_ENDS prompts' ends are remembered per relay; the oldest are forgotten first
    (ends come twice only around a reconnect, so the newest ones matter)."""
    monkeypatch.setattr(relay_module, "MAX_ENDS", 3)

    async def main() -> None:
        relay = Relay()
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        for pid in ("p1", "p2", "p3"):
            relay.send(ALICE, "execution_success", {"prompt_id": pid})
        relay.send(ALICE, "execution_success", {"prompt_id": "p1"})  # within the bound: a copy
        relay.told_elsewhere(ALICE, "p1")  # told on another replica: p1 is now the newest
        relay.send(ALICE, "execution_success", {"prompt_id": "p2"})  # still within the bound: a copy
        relay.send(ALICE, "execution_success", {"prompt_id": "p4"})  # forgets p2, the oldest
        for pid in ("p4", "p1", "p3", "p2"):
            relay.send(ALICE, "execution_success", {"prompt_id": pid})
        relay.told_elsewhere(ALICE, "p5")  # told elsewhere, past the bound: the oldest is forgotten, not p5
        relay.send(ALICE, "execution_success", {"prompt_id": "p5"})
        await settle()
        assert [d["prompt_id"] for _, d in ws.events()[1:]] == ["p1", "p2", "p3", "p4", "p2"]

    run(main)


# ---------------------------------------------------------------------------------------------
# Frames kept for a client whose socket is not open yet.


def test_events_of_a_prompt_posted_before_the_socket_opened_are_given_to_the_next_socket_once():
    async def main() -> None:
        relay = Relay()
        script = SUCCESS + [("execution_success", ENDS["execution_success"]), CLOSING]
        for kind, data in script:
            relay.send(ALICE, kind, data, keep=True)
        relay.send(ALICE, "progress", {"value": 9, "prompt_id": "live-only"})  # keep=False: live only
        relay.send(("alice", ""), "progress", {"value": 9, "prompt_id": PID}, keep=True)  # no clientId: nobody to keep for
        relay.send_bytes(ALICE, preview(32))  # previews are never kept
        relay.send_preview(ALICE, preview(32), PID, "2")
        assert relay.kept_frames == len(script)
        ws = FakeSocket()
        client = relay.attach(ALICE, ws, first())
        assert relay.kept_frames == 0
        await settle()
        assert ws.events() == [("status", first()["data"])] + script
        assert all(isinstance(f, str) for f in ws.sent)
        relay.detach(client)
        again = FakeSocket()
        relay.attach(ALICE, again, first())
        await settle()
        assert again.events() == [("status", first()["data"])]  # given once
        bob = FakeSocket()
        relay.attach(BOB, bob, first())
        await settle()
        assert bob.kinds() == ["status"]

    run(main)


def test_a_prompt_whose_frames_reached_a_socket_is_live_only_once_that_socket_closes():
    """ComfyUI-for-Nuke posts before its socket connects (its prompts' frames are to be kept),
    and after a cancel closes that socket and opens a new one for its next run: the cancelled
    run's end must not be kept for the new socket. When the socket closes, the prompts it got
    live that were to be kept are told to the other replicas, once."""

    async def main() -> None:
        relay = Relay()
        live: List[Tuple[Key, List[str]]] = []
        published: List[Tuple[Key, str, bool, Optional[str], str]] = []
        relay.publish_live = lambda key, pids: live.append((key, pids))
        relay.publish = lambda *args: published.append(args)
        relay.send(ALICE, "execution_start", {"prompt_id": "kept-first"}, keep=True)
        older = relay.attach(ALICE, FakeSocket(), first())  # takes the kept frame: live from now on
        client = relay.attach(ALICE, FakeSocket(), first())  # a newer socket of the client, here
        relay.detach(older)  # the older one's close: the client still has a socket here
        relay.send(ALICE, "execution_start", {"prompt_id": "sent-live"}, keep=True)
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": "sent-live"}, keep=True)
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": "not-kept-anyway"})
        relay.send(("alice", ""), "progress", {"value": 1, "prompt_id": "no-client-id"}, keep=True)
        relay.send(ALICE, "progress", {"value": 1}, keep=True)  # of no prompt: nothing to say
        assert relay.is_live(ALICE, "kept-first") and relay.is_live(ALICE, "sent-live")
        assert not relay.is_live(ALICE, "not-kept-anyway") and not relay.is_live(("alice", ""), "no-client-id")
        assert not relay.is_live(BOB, "sent-live") and not relay.is_live(ALICE, None)
        assert live == []  # said when the socket closes
        relay.detach(client)
        relay.detach(client)  # twice: said once
        assert live == [(ALICE, ["kept-first", "sent-live"])]
        published.clear()
        for pid in ("kept-first", "sent-live", "never-seen"):
            relay.send(ALICE, "execution_interrupted", {"prompt_id": pid}, keep=True)
        assert [(json.loads(p[1])["data"]["prompt_id"], p[2]) for p in published] == [
            ("kept-first", False), ("sent-live", False), ("never-seen", True)]  # the others keep none of them either
        assert relay.kept_frames == 1
        class HandledSocket(FakeSocket):
            """Its handler detaches it as soon as the close is under way (before close() ends)."""

            async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
                relay.detach(last)
                return await super().close(code=code, message=message)

        again = HandledSocket()
        last = relay.attach(ALICE, again, first())
        await settle()
        assert again.events()[1:] == [("execution_interrupted", {"prompt_id": "never-seen"})]
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": "at-stop"}, keep=True)
        await relay.close()  # the gateway stops: its sockets die as in a crash, nothing is said
        assert again.closed_with is not None and live == [(ALICE, ["kept-first", "sent-live"])]

    run(main)


def test_a_prompt_live_on_another_replica_is_no_longer_kept_here_but_still_reaches_a_socket_here():
    async def main() -> None:
        relay = Relay()
        live: List[Tuple[Key, List[str]]] = []
        relay.publish_live = lambda key, pids: live.append((key, pids))
        for pid in ("p1", "p2"):
            relay.deliver(ALICE, json.dumps({"type": "progress", "data": {"value": 1, "prompt_id": pid}}), True, pid, "")
        relay.deliver(BOB, json.dumps({"type": "progress", "data": {"value": 1, "prompt_id": "p1"}}), True, "p1", "")
        relay.live_elsewhere(ALICE, ["p1", "p9"])  # Alice's socket on another replica got p1 (and p9) and closed
        relay.live_elsewhere(ALICE, ["p1"])  # told twice: harmless
        assert relay.kept_frames == 2 and relay.is_live(ALICE, "p1") and not relay.is_live(BOB, "p1")
        relay.deliver(ALICE, json.dumps({"type": "progress", "data": {"value": 2, "prompt_id": "p1"}}), True, "p1", "")
        relay.send(ALICE, "progress", {"value": 3, "prompt_id": "p1"}, keep=True)
        assert relay.kept_frames == 2  # p1 is not kept any more
        ws = FakeSocket()
        client = relay.attach(ALICE, ws, first())  # the client opens a socket here: p2 kept, p1's frames live
        relay.deliver(ALICE, json.dumps({"type": "progress", "data": {"value": 4, "prompt_id": "p1"}}), True, "p1", "")
        relay.deliver(ALICE, json.dumps({"type": "progress", "data": {"value": 5, "prompt_id": "p3"}}), True, "p3", "")
        await settle()
        assert [(d["prompt_id"], d["value"]) for _, d in ws.events()[1:]] == [("p2", 1), ("p1", 4), ("p3", 5)]
        relay.detach(client)
        assert live == [(ALICE, ["p2", "p1", "p3"])]  # what this socket got of what was to be kept

    run(main)


def test_a_socket_that_opens_after_a_live_prompt_ended_gets_nothing_more_of_it():
    """Replicas: a prompt that went live on an earlier socket of the client (here or on another
    replica) and ended before the client's next socket opens: its end, arriving late (another
    replica's notice, or this one's commit callback), must not reach the new socket. Prompts
    still running go on to it, as on one gateway; the store is asked once per prompt."""
    async def main() -> None:
        relay = Relay()
        ended = {"p1", "p3", "p4"}
        asked: List[List[str]] = []

        async def check_ended(pids: List[str]) -> List[str]:
            asked.append(list(pids))
            return [p for p in pids if p in ended]

        older = relay.attach(ALICE, FakeSocket(), first())
        for pid in ("p1", "p2", "p3"):
            relay.send(ALICE, "progress", {"value": 1, "prompt_id": pid}, keep=True)  # posted through another replica
        relay.send(ALICE, "execution_success", {"prompt_id": "p3"}, keep=True)
        relay.send(ALICE, "executing", {"node": None, "prompt_id": "p3"}, keep=True)  # p3's end reached the socket
        relay.live_elsewhere(ALICE, ["p4"])  # p4 reached the client's socket on another replica
        relay.detach(older)
        await relay.settle(ALICE)  # one gateway: no store to ask, nothing to do
        assert asked == []
        relay.check_ended = check_ended
        await relay.settle(BOB)  # nothing live for Bob: the store is not asked
        assert asked == []
        await relay.settle(ALICE)
        assert asked == [["p1", "p2", "p4"]]  # not p3: its end came here
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        relay.send(ALICE, "execution_interrupted", {"prompt_id": "p1"}, keep=True)  # p1's end, late
        relay.send(ALICE, "executing", {"node": None, "prompt_id": "p1"}, keep=True)
        relay.deliver(ALICE, json.dumps({"type": "execution_success", "data": {"prompt_id": "p4"}}), False, "p4", END)
        relay.send(ALICE, "progress", {"value": 2, "prompt_id": "p2"}, keep=True)  # still running: live frames go on
        relay.send(ALICE, "execution_success", {"prompt_id": "p2"}, keep=True)
        await settle()
        assert [(k, d["prompt_id"]) for k, d in ws.events()[1:]] == [("progress", "p2"), ("execution_success", "p2")]
        await relay.settle(ALICE)
        assert asked[1:] == []  # p1 and p4 settled, p2's end came: nothing left to ask
        relay.send(ALICE, "execution_start", {"prompt_id": "p1"})  # the client posts p1's id again: a new run
        relay.send(ALICE, "execution_success", {"prompt_id": "p1"})
        await settle()
        assert [(k, d["prompt_id"]) for k, d in ws.events()[3:]] == [("execution_start", "p1"), ("execution_success", "p1")]

    run(main)


def test_live_prompts_are_remembered_within_their_bounds_oldest_forgotten_first(monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_ENDS", 2)
    monkeypatch.setattr(relay_module, "MAX_SEEN", 2)
    relay = Relay()
    relay.live_elsewhere(ALICE, ["p1", "p2"])
    relay.live_elsewhere(ALICE, ["p1"])  # seen again: now the newest
    relay.live_elsewhere(ALICE, ["p3"])
    assert [relay.is_live(ALICE, p) for p in ("p1", "p2", "p3")] == [True, False, True]

    async def main() -> None:
        asked: List[List[str]] = []

        async def check_ended(pids: List[str]) -> List[str]:
            asked.append(list(pids))
            return []

        relay.check_ended = check_ended
        await relay.settle(ALICE)
        assert asked == [["p1", "p3"]]  # the forgotten mark is gone from the client's list too
        live: List[Tuple[Key, List[str]]] = []
        relay.publish_live = lambda key, pids: live.append((key, pids))
        client = relay.attach(BOB, FakeSocket(), first())
        for pid in ("b1", "b2", "b3"):
            relay.send(BOB, "progress", {"value": 1, "prompt_id": pid}, keep=True)
        relay.detach(client)
        assert live == [(BOB, ["b2", "b3"])]
        await relay.settle(ALICE)  # Alice's marks went with Bob's newer ones: nothing to ask
        assert asked == [["p1", "p3"]]

    run(main)


def test_frames_kept_for_one_client_are_bounded_in_frames_and_in_bytes_newest_kept(monkeypatch):
    monkeypatch.setattr(relay_module, "MAX_KEPT_FRAMES", 3)

    async def main() -> None:
        relay = Relay(queue_bytes=64 * 1024)  # one client keeps at most half of it: 32768 bytes
        for i in range(5):
            relay.send(ALICE, "progress", {"value": i, "prompt_id": PID}, keep=True)
        assert relay.kept_frames == 3
        for i in range(4):  # 4 x 8192 = exactly half the queue: all four fit
            relay.send(BOB, *sized("progress", 8192, value=i, prompt_id=PID), keep=True)
        assert relay.kept_frames == 3 + 3  # Bob too keeps 3 frames at most
        monkeypatch.setattr(relay_module, "MAX_KEPT_FRAMES", 10)
        carol = ("carol", "c1")
        for i in range(4):
            relay.send(carol, *sized("progress", 8192, value=i, prompt_id=PID), keep=True)
        assert relay.kept_frames == 3 + 3 + 4
        relay.send(carol, *sized("progress", 200, value=4, prompt_id=PID), keep=True)  # over half: the oldest goes
        assert relay.kept_frames == 3 + 3 + 4
        relay.send(carol, *sized("progress", 8192, value=5, prompt_id=PID), keep=True)  # and again
        assert relay.kept_frames == 3 + 3 + 4
        # The frames dropped above no longer count in all: with the bound in all set to what
        # is kept now, one byte more from a new client drops the oldest client's (Alice's) only.
        alice_bytes = sum(len(json.dumps({"type": "progress", "data": {"value": i, "prompt_id": PID}})) for i in (2, 3, 4))
        monkeypatch.setattr(relay_module, "MAX_KEPT_BYTES", alice_bytes + 3 * 8192 + 3 * 8192 + 200)
        dave = ("dave", "c1")
        relay.send(dave, *sized("progress", 200, value=0, prompt_id="p"), keep=True)
        assert relay.kept_frames == 3 + 4 + 1
        sockets = {key: FakeSocket() for key in (ALICE, BOB, carol)}
        for key, ws in sockets.items():
            relay.attach(key, ws, first())
        await settle()
        assert sockets[ALICE].kinds() == ["status"]
        assert [d["value"] for _, d in sockets[BOB].events()[1:]] == [1, 2, 3]
        assert [d["value"] for _, d in sockets[carol].events()[1:]] == [2, 3, 4, 5]
        assert relay.kept_frames == 1  # Dave's

    run(main)


@pytest.mark.parametrize("bound", ["clients", "frames", "bytes"])
def test_frames_kept_in_all_are_bounded_the_oldest_clients_going_first(monkeypatch, bound):
    """A script that posts without ever opening a socket costs bounded memory: past the bound
    (clients, frames or bytes kept in all), the frames of the client kept longest go first;
    frames given to a socket no longer count; one client alone is bounded by its own limits."""
    if bound == "clients":
        monkeypatch.setattr(relay_module, "MAX_KEPT_CLIENTS", 2)
    elif bound == "frames":
        monkeypatch.setattr(relay_module, "MAX_KEPT_TOTAL", 4)
    else:
        monkeypatch.setattr(relay_module, "MAX_KEPT_BYTES", 4 * 1000)

    async def main() -> None:
        relay = Relay()
        keys = [("u", f"c{i}") for i in range(4)]

        def keep(on: Relay, key: Key, n: int) -> None:
            for i in range(n):
                on.send(key, *sized("progress", 1000, value=i, prompt_id=PID), keep=True)

        keep(relay, keys[0], 1)
        keep(relay, keys[1], 3)  # 2 clients, 4 frames, 4000 bytes: within every bound
        assert relay.kept_frames == 4
        taken = FakeSocket()
        relay.attach(keys[1], taken, first())  # its frames are given: no longer counted
        assert relay.kept_frames == 1
        keep(relay, keys[2], 3)
        assert relay.kept_frames == 4  # keys[0] and keys[2]: within every bound again
        keep(relay, keys[3], 1)  # over the bound: keys[0], kept longest, goes
        assert relay.kept_frames == 4
        keep(relay, keys[3], 1)  # over again, but for the clients' bound (2 clients): keys[2] goes
        assert relay.kept_frames == (5 if bound == "clients" else 2)
        sockets = {key: FakeSocket() for key in keys}
        for key in (keys[0], keys[2], keys[3]):
            relay.attach(key, sockets[key], first())
        await settle()
        assert sockets[keys[0]].kinds() == ["status"]
        assert [d["value"] for _, d in sockets[keys[2]].events()[1:]] == ([0, 1, 2] if bound == "clients" else [])
        assert [d["value"] for _, d in sockets[keys[3]].events()[1:]] == [0, 0]
        assert [d["value"] for _, d in taken.events()[1:]] == [0, 1, 2]

        monkeypatch.setattr(relay_module, "MAX_KEPT_CLIENTS", 1)
        monkeypatch.setattr(relay_module, "MAX_KEPT_TOTAL", 1)
        monkeypatch.setattr(relay_module, "MAX_KEPT_BYTES", 1)
        lone = Relay()
        keep(lone, ALICE, 1)
        keep(lone, BOB, 1)  # two clients over the bound: Alice's go
        assert lone.kept_frames == 1
        keep(lone, BOB, 2)  # Bob alone is never dropped whole
        assert lone.kept_frames == 3

    run(main)


def test_a_prompt_told_on_another_replica_is_not_replayed_to_its_client(monkeypatch):
    """Replicas: a client that got a prompt's end through another replica must not get it (or
    anything of that prompt) again from the frames kept here; other prompts' and other users'
    frames stay, and the bytes of the frames dropped no longer count against the bound."""
    monkeypatch.setattr(relay_module, "MAX_KEPT_BYTES", 4400)
    carol, dave = ("carol", "c1"), ("dave", "c1")

    async def main() -> None:
        relay = Relay()
        asked: List[Tuple[Key, List[str]]] = []

        async def check_told(key: Key, ends: List[str]) -> List[str]:
            asked.append((key, list(ends)))
            return [p for p in ends if p == "p1"]

        def keep(key: Key, kind: str, size: int, pid: str) -> None:
            relay.send(key, *sized(kind, size, value=1, prompt_id=pid), keep=True)

        await relay.settle(ALICE)  # nothing kept and no store: nothing to do
        keep(dave, "progress", 1000, "d")  # the client kept longest
        for pid in ("p1", "p2"):
            keep(ALICE, "progress", 1000, pid)
            keep(ALICE, "execution_success", 100, pid)
        keep(ALICE, "progress", 100, "p3")  # no end yet
        keep(BOB, "progress", 1000, "p1")
        keep(BOB, "execution_success", 100, "p1")  # 4400 bytes in all: exactly the bound
        await relay.settle(ALICE)  # no store set: everything stays
        assert relay.kept_frames == 8
        relay.check_told = check_told
        await relay.settle(carol)  # nothing kept for Carol: the store is not asked
        assert asked == []
        await relay.settle(ALICE)
        assert asked == [(ALICE, ["p1", "p2"])]
        relay.told_elsewhere(BOB, "p4")  # a prompt with nothing kept: harmless
        relay.told_elsewhere(("erin", "c1"), "p1")  # nothing kept for Erin at all
        assert relay.kept_frames == 6
        keep(carol, "progress", 1000, "p9")  # p1's 1100 bytes are no longer counted: this fits
        keep(carol, "progress", 100, "p9")
        assert relay.kept_frames == 8
        keep(carol, "progress", 100, "p9")  # 100 bytes over: Dave's frames, kept longest, go
        assert relay.kept_frames == 8
        sockets = {key: FakeSocket() for key in (ALICE, BOB, carol, dave)}
        for key, ws in sockets.items():
            relay.attach(key, ws, first())
        relay.send(ALICE, "execution_success", {"prompt_id": "p1"})  # a late copy of the told end
        relay.send(ALICE, "executing", {"node": None, "prompt_id": "p1"})
        await settle()
        assert [(k, d["prompt_id"]) for k, d in sockets[ALICE].events()[1:]] == [
            ("progress", "p2"), ("execution_success", "p2"), ("progress", "p3")]
        assert [(k, d["prompt_id"]) for k, d in sockets[BOB].events()[1:]] == [("progress", "p1"), ("execution_success", "p1")]
        assert len(sockets[carol].events()) == 4
        assert sockets[dave].kinds() == ["status"]

    run(main)


def test_a_frame_for_a_client_connected_to_another_replica_is_published_and_delivered_there():
    async def main() -> None:
        here, there = Relay(), Relay()
        published: List[Tuple[Key, str, bool, Optional[str], str]] = []
        here.publish = lambda *args: published.append(args)
        ws = FakeSocket()
        there.attach(ALICE, ws, first())
        here.send(ALICE, "progress", {"value": 1, "prompt_id": PID})
        here.send(ALICE, "execution_success", {"prompt_id": PID}, keep=True)
        here.send(("alice", ""), "progress", {"value": 2, "prompt_id": PID})  # no clientId: no stream anywhere
        local = FakeSocket()
        here.attach(BOB, local, first())
        here.send(BOB, "progress", {"value": 3, "prompt_id": PID})  # connected here: not published
        assert [(p[0], json.loads(p[1])["type"], p[2], p[3], p[4]) for p in published] == [
            (ALICE, "progress", False, PID, ""), (ALICE, "execution_success", True, PID, END)]
        assert here.kept_frames == 1  # the end is kept here too (its socket may open here)
        for args in published + published:  # delivered there, twice (a second replica's copy)
            there.deliver(*args)
        there.deliver(BOB, published[0][1], False, PID, "")  # Bob has no socket there, not kept: dropped
        assert there.kept_frames == 0
        there.deliver(BOB, published[1][1], True, PID, END)  # kept for Bob's socket there
        assert there.kept_frames == 1
        await settle()
        assert ws.events()[1:] == [("progress", {"value": 1, "prompt_id": PID}), ("execution_success", {"prompt_id": PID})]

        # What was kept there is Bob's, an end of PID: the store is asked about it, and the
        # record is made before Bob's socket gets it.
        asked: List[Tuple[Key, List[str]]] = []
        records: List[Tuple[Key, str]] = []

        async def check_told(key: Key, ends: List[str]) -> List[str]:
            asked.append((key, list(ends)))
            return []

        async def record_told(key: Key, pid: str) -> None:
            records.append((key, pid))

        there.check_told, there.record_told = check_told, record_told
        await there.settle(BOB)
        assert asked == [(BOB, [PID])]
        bob = FakeSocket()
        there.attach(BOB, bob, first())
        await until(lambda: len(bob.sent) == 2, "Bob's kept end written")
        assert records == [(BOB, PID)] and bob.kinds() == ["status", "execution_success"]

    run(main)


# ---------------------------------------------------------------------------------------------
# Replicas: an end other replicas kept a copy of waits for its record (not for ever).


def test_an_end_other_replicas_kept_is_written_once_recorded_as_told():
    async def main() -> None:
        relay = Relay()
        records: List[Tuple[Key, str]] = []
        pending: List["asyncio.Future[None]"] = []

        async def record_told(key: Key, pid: str) -> None:
            records.append((key, pid))
            fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
            pending.append(fut)
            await fut

        relay.record_told = record_told
        relay.send(ALICE, "execution_success", {"prompt_id": "kept"}, keep=True)  # kept here and elsewhere
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": "after"})
        await until(lambda: len(pending) == 1, "the kept end's record asked")
        await settle()
        assert ws.kinds() == ["status"]  # the end (and what follows it) waits for the record
        pending[0].set_result(None)
        await until(lambda: len(ws.sent) == 3, "the end written once recorded")
        assert [(k, d["prompt_id"]) for k, d in ws.events()[1:]] == [("execution_success", "kept"), ("progress", "after")]

        # A copy another replica published and kept: the same wait.
        relay.deliver(ALICE, json.dumps({"type": "execution_error", "data": {"prompt_id": "copied"}}), True, "copied", END)
        await until(lambda: len(pending) == 2, "the copied end's record asked")
        assert records == [(ALICE, "kept"), (ALICE, "copied")]
        await settle()
        assert len(ws.sent) == 3
        pending[1].set_result(None)
        await until(lambda: len(ws.sent) == 4, "the copied end written")

        # Not copied anywhere, or not an end: written at once, nothing recorded.
        relay.send(ALICE, "execution_success", {"prompt_id": "local"})
        relay.deliver(ALICE, json.dumps({"type": "execution_success", "data": {"prompt_id": "live"}}), False, "live", END)
        relay.deliver(ALICE, json.dumps({"type": "progress", "data": {"prompt_id": "p"}}), True, "p", "")
        relay.deliver(ALICE, json.dumps({"type": "execution_success", "data": {}}), True, None, END)
        await until(lambda: len(ws.sent) == 8, "the rest written")
        assert records == [(ALICE, "kept"), (ALICE, "copied")]
        assert ws.kinds()[4:] == ["execution_success", "execution_success", "progress", "execution_success"]

    run(main)


@pytest.mark.parametrize("failure", ["raises", "raises-without-message", "never-answers"])
def test_an_end_is_written_anyway_when_its_record_fails_or_never_answers(monkeypatch, caplog, failure):
    """A store that fails or does not answer must not stop a client's events (the end may then,
    rarely, come twice: never lost). The operator is told why."""
    monkeypatch.setattr(outbox_module, "GATE_WAIT", 0.05)
    caplog.set_level(logging.WARNING, logger="comfy_cluster.gateway.relay")

    async def main() -> None:
        relay = Relay()

        async def record_told(key: Key, pid: str) -> None:
            if failure == "raises":
                raise OSError("database is down")
            if failure == "raises-without-message":
                raise OSError()
            await asyncio.Event().wait()

        relay.record_told = record_told
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        relay.deliver(ALICE, json.dumps({"type": "execution_success", "data": {"prompt_id": PID}}), True, PID, END)
        await until(lambda: len(ws.sent) == 2, "the end written although its record failed")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        expected = {"raises": "database is down", "raises-without-message": "OSError", "never-answers": "TimeoutError"}[failure]
        assert warnings == [f"could not record a prompt's end as told ({expected}); sending it anyway"], warnings

    run(main)


@pytest.mark.parametrize("failure", ["raises", "never-answers"])
def test_a_socket_opens_anyway_when_the_store_fails_or_does_not_answer_before_it(monkeypatch, caplog, failure):
    """Replicas ask the store before a socket opens (kept ends told elsewhere, live prompts that
    ended): a store that fails or hangs must not keep the client from its socket. It opens
    without the answers (what they would have dropped goes to it), and the operator is told."""
    monkeypatch.setattr(outbox_module, "GATE_WAIT", 0.05)
    caplog.set_level(logging.WARNING, logger="comfy_cluster.gateway.relay")

    async def main() -> None:
        relay = Relay()

        async def broken(*_: Any) -> List[str]:
            if failure == "raises":
                raise OSError("database is down")
            await asyncio.Event().wait()
            return []

        relay.send(ALICE, "execution_success", {"prompt_id": "kept"}, keep=True)
        relay.live_elsewhere(ALICE, ["live"])
        relay.check_told, relay.check_ended = broken, broken
        await relay.settle(ALICE)
        ws = FakeSocket()
        relay.attach(ALICE, ws, first())
        relay.deliver(ALICE, json.dumps({"type": "execution_success", "data": {"prompt_id": "live"}}), False, "live", END)
        await settle()
        assert [(k, d["prompt_id"]) for k, d in ws.events()[1:]] == [("execution_success", "kept"), ("execution_success", "live")]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        expected = {"raises": "database is down", "never-answers": "TimeoutError"}[failure]
        assert warnings == [f"could not ask the store {what} before a socket opened ({expected}); opening it without the answer"
                            for what in ("which kept ends were told", "which live prompts ended")]

    run(main)


# ---------------------------------------------------------------------------------------------
# Bounded memory: a client that does not read.


def test_the_queue_bound_must_be_at_least_64_kib():
    with pytest.raises(ValueError, match="ws_queue_bytes=65535"):
        Relay(queue_bytes=65535)
    assert Relay(queue_bytes=65536).queue_bytes == 65536


def test_a_client_that_does_not_read_loses_previews_beyond_half_its_queue():
    async def main() -> None:
        relay = Relay(queue_bytes=64 * 1024)
        ws = FakeSocket(stalled=True)
        relay.attach(ALICE, ws, first())
        await until(lambda: ws.sending == 1, "the first frame on its way")
        assert relay.queued_bytes == 0
        for i in range(4):  # 4 x 8192 bytes: exactly half the queue
            relay.send_bytes(ALICE, preview(8192, bytes([65 + i])))
        assert relay.queued_bytes == 32768 and relay.dropped_previews(ALICE) == 0
        relay.send_bytes(ALICE, preview(8))  # the smallest more: dropped
        relay.send_preview(ALICE, preview(8), PID, "2")
        assert relay.dropped_previews(ALICE) == 2 and relay.queued_bytes == 32768
        relay.send(ALICE, *sized("progress", 1000, value=1, prompt_id=PID))  # JSON still goes
        assert relay.queued_bytes == 33768
        assert relay.dropped_previews(BOB) is None
        ws.resume()
        await until(lambda: relay.queued_bytes == 0 and len(ws.sent) == 6, "the queue written")
        assert ws.sent[1:5] == [preview(8192, bytes([65 + i])) for i in range(4)]
        assert ws.kinds() == ["status", "progress"]

    run(main)


async def _stalled_with_two_previews() -> Tuple[Relay, FakeSocket]:
    """A 64 KiB relay whose client reads nothing: two 10,000-byte previews and two progress
    frames queued behind its first frame (55,536 bytes)."""
    relay = Relay(queue_bytes=64 * 1024)
    ws = FakeSocket(stalled=True)
    relay.attach(ALICE, ws, first())
    await until(lambda: ws.sending == 1, "the first frame on its way")
    relay.send_bytes(ALICE, preview(10_000, b"1"))
    relay.send_bytes(ALICE, preview(10_000, b"2"))
    relay.send(ALICE, *sized("progress", 20_000, value=1, prompt_id=PID))
    relay.send(ALICE, *sized("progress", 15_536, value=2, prompt_id=PID))
    return relay, ws


def test_a_lagging_clients_json_frames_push_out_only_as_many_previews_as_needed_oldest_first():
    async def main() -> None:
        relay, ws = await _stalled_with_two_previews()
        assert relay.queued_bytes == 55_536
        relay.send(ALICE, *sized("progress", 20_000, value=3, prompt_id=PID))  # needs exactly one preview's room
        assert relay.dropped_previews(ALICE) == 1 and relay.queued_bytes == 65_536  # exactly full: no close
        assert ws.closed_with is None
        ws.resume()
        await until(lambda: relay.queued_bytes == 0 and len(ws.sent) == 5, "the queue written")
        assert ws.sent[1] == preview(10_000, b"2")
        assert [d["value"] for _, d in ws.events()[1:]] == [1, 2, 3]

        # One byte more needed than a preview frees: the next preview goes too, not the client.
        relay, ws = await _stalled_with_two_previews()
        relay.send(ALICE, *sized("progress", 20_001, value=3, prompt_id=PID))
        assert relay.dropped_previews(ALICE) == 2 and relay.queued_bytes == 55_537 and ws.closed_with is None

    run(main)


def test_a_client_too_slow_for_its_json_frames_is_closed_with_1013_and_told_why(caplog):
    caplog.set_level(logging.WARNING, logger="comfy_cluster.gateway.relay")

    async def main() -> None:
        relay = Relay(queue_bytes=64 * 1024)
        sid = "slow-client-" + "x" * 100  # a client chooses its id: the log line keeps 80 characters of it
        key = ("bob", sid)
        ws, transport = FakeSocket(stalled=True), FakeTransport()
        client = relay.attach(key, ws, first(), transport)
        await until(lambda: ws.sending == 1, "the first frame on its way")
        relay.send_bytes(key, preview(20_000))
        relay.send(key, *sized("progress", 40_000, value=1, prompt_id=PID))
        relay.send(key, *sized("progress", 30_000, value=2, prompt_id=PID))  # does not fit
        await until(lambda: transport.aborted, "the slow client cut")
        assert ws.closed_with is not None and ws.closed_with[0] == CLOSE_TOO_SLOW == 1013
        assert b"/history" in ws.closed_with[1]
        assert client.writer is not None and client.writer.done()
        relay.send(key, "progress", {"value": 3, "prompt_id": PID})  # after the close: not queued
        relay.send_bytes(key, preview(16))
        assert relay.queued_bytes == 40_000
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert sid[:80] in warnings[0] and sid[:81] not in warnings[0]
        assert "(user bob)" in warnings[0] and "65536" in warnings[0] and "1013" in warnings[0]
        assert ws.sent == []

    run(main)


def test_a_slow_client_that_never_answers_the_close_is_cut(monkeypatch):
    monkeypatch.setattr(outbox_module, "CLOSE_WAIT", 0.05)

    async def main() -> None:
        relay = Relay(queue_bytes=64 * 1024)
        ws, transport = FakeSocket(stalled=True, close_hangs=True), FakeTransport()
        relay.attach(ALICE, ws, first(), transport)
        await until(lambda: ws.sending == 1, "the first frame on its way")
        relay.send(ALICE, *sized("progress", 70_000, value=1, prompt_id=PID))
        await until(lambda: transport.aborted, "the slow client cut")

    run(main)


# ---------------------------------------------------------------------------------------------
# Sockets: replaced, detached, previews in the form asked for, flush and close.


def test_a_newer_socket_of_a_client_replaces_the_older_one():
    async def main() -> None:
        relay = Relay()
        old, new = FakeSocket(), FakeSocket()
        old_client = relay.attach(ALICE, old, first())
        relay.attach(ALICE, new, first())
        await until(lambda: old_client.writer is not None and old_client.writer.done(), "the old writer ended")
        relay.detach(old_client)  # the old socket's handler ends later: the new one stays
        assert relay.is_connected(ALICE) and relay.connected == 1
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": PID})
        await settle()
        assert old.kinds() == ["status"]
        assert new.kinds() == ["status", "progress"]

    run(main)


def test_a_frame_decided_for_one_socket_goes_to_that_socket_only():
    """An end is told once its history is committed: the socket it was decided for is named
    (``to``), and a socket opened meanwhile does not get it."""
    async def main() -> None:
        relay = Relay()
        assert relay.socket_of(ALICE) is None
        old = FakeSocket()
        old_client = relay.attach(ALICE, old, first())
        decided = relay.socket_of(ALICE)
        assert decided is old_client
        relay.detach(old_client)  # the client closed it after its cancel
        new = FakeSocket()
        relay.attach(ALICE, new, first())  # and opened one for its next run
        relay.send(ALICE, "execution_interrupted", ENDS["execution_interrupted"], to=decided)
        relay.send(ALICE, *CLOSING, to=decided)
        relay.send(ALICE, "execution_interrupted", ENDS["execution_interrupted"], to=None)  # none was open then
        relay.send(ALICE, "progress", {"value": 1, "prompt_id": "next"}, to=relay.socket_of(ALICE))
        await settle()
        assert old.kinds() == ["status"] and new.kinds() == ["status", "progress"]
        # Not admitted either: the client may still get that prompt's end once, where it is decided for.
        relay.send(ALICE, "execution_interrupted", ENDS["execution_interrupted"])
        await settle()
        assert new.kinds() == ["status", "progress", "execution_interrupted"]

    run(main)


def test_previews_come_with_metadata_to_a_socket_that_asked_until_it_closes():
    async def main() -> None:
        relay = Relay()
        plain = preview(40)
        relay.want_metadata(ALICE)  # no socket yet: nothing to remember
        page = FakeSocket()
        client = relay.attach(ALICE, page, first())
        relay.send_preview(ALICE, plain, PID, "7")
        relay.want_metadata(ALICE)
        relay.send_preview(ALICE, plain, PID, "7")
        await settle()
        assert page.sent[1] == plain
        frame = page.sent[2]
        assert isinstance(frame, bytes) and int.from_bytes(frame[:4], "big") == PREVIEW_IMAGE_WITH_METADATA
        size = int.from_bytes(frame[4:8], "big")
        meta = json.loads(frame[8:8 + size])
        assert meta["prompt_id"] == PID and meta["node_id"] == "7" and frame[8 + size:] == plain[8:]
        relay.detach(client)
        assert not relay.is_connected(ALICE)
        script = FakeSocket()
        relay.attach(ALICE, script, first())  # a script's socket that did not ask
        relay.send_preview(ALICE, plain, PID, "7")
        await settle()
        assert script.sent[1] == plain

    run(main)


def test_flush_writes_every_queue_and_close_ends_every_socket(monkeypatch):
    monkeypatch.setattr(outbox_module, "CLOSE_WAIT", 0.05)

    async def main() -> None:
        relay = Relay()
        fine, hangs, fails = FakeSocket(), FakeSocket(close_hangs=True), FakeSocket(close_fails=True)
        transports = {name: FakeTransport() for name in ("fine", "hangs", "fails")}
        relay.attach(ALICE, fine, first(), transports["fine"])
        relay.attach(BOB, hangs, first(), transports["hangs"])
        relay.attach(("carol", "c1"), fails, first(), transports["fails"])
        stuck = FakeSocket(stalled=True)
        stuck_client = relay.attach(("erin", "c1"), stuck, first())
        relay.send(("dave", "c1"), "progress", {"prompt_id": PID}, keep=True)
        for key in (ALICE, BOB, ("carol", "c1")):
            relay.send(key, "execution_success", {"prompt_id": PID})
        await relay.flush(timeout=0.05)  # a client that does not read does not hold it up
        assert [ws.kinds() for ws in (fine, hangs, fails)] == [["status", "execution_success"]] * 3
        await relay.close()
        assert fine.closed_with is not None and not transports["fine"].aborted
        assert transports["hangs"].aborted and transports["fails"].aborted
        assert relay.connected == 0 and relay.kept_frames == 0 and relay.queued_bytes == 0
        await settle()
        assert stuck_client.writer is not None and stuck_client.writer.done()  # no writer left waiting
        relay.send(("dave", "c1"), "progress", {"prompt_id": PID}, keep=True)
        assert relay.kept_frames == 1  # counted afresh after close

    run(main)


def test_a_client_gone_while_its_frames_are_written_ends_its_writer_quietly():
    async def main() -> None:
        relay = Relay()
        gone, other = FakeSocket(send_fails=True), FakeSocket()
        client = relay.attach(ALICE, gone, first())
        relay.attach(BOB, other, first())
        relay.send(ALICE, "progress", {"prompt_id": PID})
        relay.send(BOB, "progress", {"prompt_id": PID})
        await until(lambda: client.writer is not None and client.writer.done(), "the writer ended")
        assert client.writer.exception() is None
        await settle()
        assert other.kinds() == ["status", "progress"]

    run(main)
