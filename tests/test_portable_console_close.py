"""Closing the Windows console while ``submit`` runs, with a slow server (issue 21 item 11).

Windows calls the console handler on a thread of its own and ends the process as soon as the
handler returns, or 5 s after the event. A driver runs the real command in its main thread
and plays Windows: it calls the handler once a job runs, and ends the process (``os._exit``)
when the handler returns or 5 s have passed. Before, the handler gave up after 4.5 s while the
command still waited up to 15 s for a slow ``/interrupt``: the process was ended before the
command had printed anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import sleep_workflow

DRIVER = textwrap.dedent('''
    import os, sys, threading, time
    import requests
    from comfy_cluster import cli, stopping

    url = os.environ["MOCK_URL"]
    active = []
    enter = stopping.StopSignals.__enter__

    def remember(self):
        active.append(self)
        return enter(self)

    stopping.StopSignals.__enter__ = remember

    def end(code):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def windows():
        while not requests.get(url + "/queue", timeout=10).json()["queue_running"]:
            time.sleep(0.05)  # polls the mock, as a user looks at it
        threading.Timer(stopping.WINDOWS_CLOSE_SECONDS, end, (99,)).start()  # Windows' own limit
        active[0].on_console_event(stopping.CTRL_CLOSE_EVENT)
        end(98)  # the handler returned: Windows ends the process now

    threading.Thread(target=windows, daemon=True).start()
    code = cli.main(sys.argv[1:])
    sys.stdout.flush()
    threading.Event().wait(30)  # the process lives on until Windows ends it
''')


def test_console_close_with_a_slow_interrupt_reports_and_cancels_within_the_deadline(mock_comfy, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow(60.0, steps=60)))
    mock_comfy.fail_route("/interrupt", "hang", delay=6.0)  # answered (and run) after the 5 s limit
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=json.dumps([{"name": "slow", "url": mock_comfy.url}]), MOCK_URL=mock_comfy.url)
    out = subprocess.run([sys.executable, "-c", DRIVER, "submit", str(wf), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 99, ("Windows ended the process at its 5 s limit", out.stderr)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["status"] in ("cancelling", "interrupted", "cancelled"), (out.stdout, out.stderr)
    assert "cancelling the jobs on their servers" in out.stderr
    # The interrupt had reached the server before the process ended (what it does with a
    # request whose client is gone is the server's affair; "cancelling" tells the user so).
    (rule,) = mock_comfy.route_faults()
    assert rule.hits >= 1, "no /interrupt was sent before the process ended"
    mock_comfy.clear_route_faults()
