"""The gateway's mailbox from library threads to its loop (issue 20, latency): every call
runs on the loop, in the order posted, and a burst costs one wake-up of the loop."""

from __future__ import annotations

import asyncio
import threading
from typing import List

from comfy_cluster.gateway.mailbox import LoopMail


def test_a_burst_of_calls_runs_in_order_on_the_loop_with_one_wake_up() -> None:
    loop = asyncio.new_event_loop()
    try:
        mail = LoopMail(loop)
        ran: List[int] = []
        threads: List[str] = []

        def note(i: int) -> None:
            ran.append(i)
            threads.append(threading.current_thread().name)
            if i == 2:
                raise RuntimeError("a failing call must not drop the others")

        done = threading.Event()
        poster = threading.Thread(target=lambda: ([mail.post(note, i) for i in range(50)], mail.post(done.set)), name="poster")
        poster.start()
        poster.join()  # the loop does not run yet: everything posted waits for one wake-up
        loop.run_until_complete(asyncio.wait_for(loop.run_in_executor(None, done.wait), 30))
        assert ran == list(range(50))
        assert set(threads) == {"MainThread"}  # the loop's thread
        assert mail.wakeups == 1
        mail.post(note, 50)  # the drain stood down: the next call wakes the loop again
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.sleep(0))
        assert ran[-1] == 50 and mail.wakeups == 2
    finally:
        loop.close()
    mail.post(note, 51)  # after the loop closed: dropped, no error
    assert ran[-1] == 50
