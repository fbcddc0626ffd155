"""The command line as Windows and macOS users meet it: cp1252 output, every way to stop it
(Ctrl-C, kill, a closed terminal, Ctrl-Break/console close), and its argument errors
(issue 14 items 6 and 8, issue 11 item 16)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from helpers import sleep_workflow, wait_until

from comfy_cluster import stopping
from comfy_cluster.cli_inputs import frame_path as _frame_path
from comfy_cluster.cli_format import status_json, status_table
from comfy_cluster.status import ServerStatus
from comfy_cluster.stopping import StopSignals, Stopped, wait_sliced

ON_WINDOWS = sys.platform == "win32"


def _cli(args, env=None, **kw):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "comfy_cluster", *args], capture_output=True, text=True,
                          env=full_env, timeout=120, **kw)


def _servers(*servers, **extra):
    return json.dumps([dict({"name": name, "url": s.url}, **extra) for name, s in servers])


# ---------------------------------------------------------------------------------------------
# encodings


def test_status_redirected_under_cp1252_does_not_crash(mock_comfy):
    """Windows redirects output as cp1252: a server named in Japanese must not crash `status`."""
    env = {"NUKE_COMFYUI_SERVERS": _servers(("東京-gpu", mock_comfy)), "PYTHONIOENCODING": "cp1252"}
    for args in (["status"], ["status", "--json"]):
        proc = subprocess.run([sys.executable, "-m", "comfy_cluster", *args], capture_output=True,
                              env=dict(os.environ, **env), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert b"Traceback" not in proc.stderr
        out = proc.stdout.decode("cp1252")
        assert "-gpu" in out
    assert "\\u6771" in out  # --json escapes non-ASCII: the name survives intact


# ---------------------------------------------------------------------------------------------
# arguments


@pytest.mark.parametrize("pattern, frame, expected", [
    ("plate.####.png", 7, "plate.0007.png"),
    ("plate.%04d.png", 1001, "plate.1001.png"),
    ("plate_%s.%04d.png", 7, "plate_%s.0007.png"),  # a traceback before
    ("plate%d.png", 3, "plate3.png"),
    ("100%.png", 3, "100%.png"),
    ("plate.png", 3, "plate.png"),
])
def test_frame_patterns(pattern, frame, expected):
    assert _frame_path(pattern, frame) == expected


@pytest.mark.parametrize("args, message", [
    (["--count", "0"], "--count: must be > 0"),
    (["--count", "x"], "--count: not a number"),
    (["--retries", "-1"], "--retries: must be >= 0"),
    (["--strategy", "fastest"], "--strategy: invalid choice: 'fastest'"),
])
def test_bad_arguments_are_one_line_and_name_the_option(tmp_path, args, message):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow()))
    out = _cli(["submit", str(wf), *args], {"NUKE_COMFYUI_SERVERS": '[{"host": "127.0.0.1", "port": 9}]', "NUKE_COMFYUI_STRATEGY": ""})
    assert out.returncode == 2
    assert message in out.stderr and "NUKE_COMFYUI_STRATEGY" not in out.stderr and "Traceback" not in out.stderr


def test_input_pattern_with_percent_s_is_no_traceback(mock_comfy, tmp_path):
    from helpers import load_image_workflow

    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(load_image_workflow()))
    out = _cli(["submit", str(wf), "--frames", "1-2", "--frame-input", "2.seed", "--input", f"10={tmp_path}/plate_%s.%04d.png"],
               {"NUKE_COMFYUI_SERVERS": _servers(("m", mock_comfy))})
    assert "Traceback" not in out.stderr and out.returncode in (1, 2)
    assert "plate_%s.0001.png" in out.stderr


# ---------------------------------------------------------------------------------------------
# status


def test_status_json_gives_times_and_the_table_says_disabled():
    st = ServerStatus(name="a", url="http://h:1", online=True, last_checked=100.0, next_probe_at=105.0, enabled=False)
    data = status_json(st, now_wall=1_700_000_000.0, now_mono=110.0)
    assert data["last_checked"] == "2023-11-14T22:13:10.000Z" and data["next_probe_at"] == "2023-11-14T22:13:15.000Z"
    assert json.loads(json.dumps(data))["enabled"] is False
    assert status_json(ServerStatus(name="b", url="http://h:2"))["last_checked"] is None
    assert "yes (disabled)" in status_table([st])


# ---------------------------------------------------------------------------------------------
# stopping: in this process, the handlers themselves


def test_a_signal_during_a_sliced_wait_raises_stopped_once():
    never = threading.Event()
    with StopSignals() as stop:
        with pytest.raises(Stopped) as info:
            threading.Timer(0.05, signal.raise_signal, args=(signal.SIGTERM if not ON_WINDOWS else signal.SIGBREAK,)).start()
            wait_sliced(never.wait)
        assert info.value.exit_code == 128 + int(info.value.signum)
        assert stop.stopping
        signal.raise_signal(signal.SIGINT)  # a second signal while cancelling: ignored
    assert signal.getsignal(signal.SIGINT) is not stop._on_signal  # handlers restored


def test_console_close_interrupts_the_main_thread_and_waits_for_the_cancel():
    """Windows' console close/log-off/shutdown events (not signals) stop the command too; the
    handler holds the process until the cancel is done."""
    returned = []
    never = threading.Event()
    with StopSignals() as stop:
        t = threading.Thread(target=lambda: returned.append(stop.on_console_event(stopping.CTRL_CLOSE_EVENT)))
        with pytest.raises(KeyboardInterrupt):  # Stopped (KeyboardInterrupt on 3.9)
            t.start()  # the interrupt may arrive while start() waits for the thread
            wait_sliced(never.wait)
        assert returned == []  # still held while we "cancel"
    t.join(10)
    assert returned == [True]
    assert StopSignals().on_console_event(0) is False  # Ctrl-C itself goes to Python's handler


def test_wait_sliced_honours_its_timeout():
    calls = []
    assert wait_sliced(lambda t: calls.append(t) or False, timeout=0.0) is False
    assert calls and all(c <= 0.2 for c in calls)


# ---------------------------------------------------------------------------------------------
# stopping: the real command, cancelled on its servers


def _start_submit(cluster, tmp_path, extra=()):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow(30.0, steps=30)))
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=cluster.servers_json())
    kw = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if ON_WINDOWS else {}
    proc = subprocess.Popen([sys.executable, "-m", "comfy_cluster", "submit", str(wf), "--frames", "1-6", "--frame-input", "2.seed", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)
    wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster.servers), timeout=30, what="both servers running a job")
    return proc


STOPS = [("SIGTERM", 143), ("SIGHUP", 129)] if not ON_WINDOWS else [("CTRL_BREAK_EVENT", 128 + 21)]


@pytest.mark.parametrize("how, code", STOPS)
def test_every_way_to_stop_cancels_the_jobs_on_their_servers(mock_cluster_factory, tmp_path, how, code):
    cluster = mock_cluster_factory(speeds=(1, 1))
    proc = _start_submit(cluster, tmp_path, ["--json"])
    try:
        proc.send_signal(getattr(signal, how))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "cancelling" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 6 and {r["status"] for r in rows} == {"cancelled"}  # every job reported
    assert [r["frame"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for s in cluster.servers:
        assert s.queue_snapshot() == ([], [])
        assert s.executed_prompt_ids == []
