"""The command in a real terminal (issue 21 items 2, 3 and 9): run through a pseudo-terminal of
80 columns (macOS Terminal's default) and 120 (Windows'), its output played into a terminal
emulator (pyte) to see the screen a user sees; exit statuses; consoles without escape codes."""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import pyte
import pytest

from comfy_cluster.cli_format import ansi_ok

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")  # CI is Linux


def run_in_terminal(args: Sequence[str], columns: int, env: Optional[Dict[str, str]] = None, *, stop_after: Optional[bytes] = None,
                    timeout: float = 120.0) -> Tuple[int, bytes]:
    """Run ``comfy-cluster ARGS`` with stdin, stdout and stderr on a new pseudo-terminal of
    ``columns`` x 50; returns its exit status and every byte it wrote. With ``stop_after``,
    Ctrl-C is sent (as the terminal would) once that text has been written twice."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    full_env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    full_env.update({"TERM": "xterm"}, **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "comfy_cluster", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=full_env, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    stopped = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            if stop_after is not None and not stopped and out.count(stop_after) >= 2:
                os.killpg(proc.pid, signal.SIGINT)
                stopped = True
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out


def screen_of(output: bytes, columns: int) -> List[str]:
    """The rows a terminal of ``columns`` shows after ``output``, trailing blanks removed."""
    screen = pyte.Screen(columns, 200)
    pyte.ByteStream(screen).feed(output)
    rows = [row.rstrip() for row in screen.display]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _servers(*entries: dict) -> str:
    return json.dumps(list(entries))


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: refused
    return port


# ---------------------------------------------------------------------------------------------
# item 2: one redrawn line that fits, labelled, and a summary printed once


@pytest.mark.parametrize("columns", [80, 120])
def test_demo_progress_is_one_line_that_fits_the_terminal(columns):
    code, out = run_in_terminal(["demo", "--jobs", "12", "--seconds", "0.4"], columns)
    assert code == 0, out.decode(errors="replace")
    assert b"\x1b" not in out  # \r and spaces only: a console without VT mode shows no codes
    text = out.decode()
    drawn = [seg for seg in re.split(r"[\r\n]", text) if seg.strip()]
    assert max(len(seg) for seg in drawn) < columns, max(drawn, key=len)
    # Labelled figures: jobs done/total, then each running job's server and step.
    assert any(re.match(r"jobs \d+/12 done, \d+ failed \| mock\d-x\d: job \d+ (step \d/5|started|queued)", seg) for seg in drawn), drawn
    rows = screen_of(out, columns)
    assert not any("done," in row for row in rows), rows  # the progress line is cleared at the end
    assert sum("makespan:" in row for row in rows) == 1 and sum("jobs: 12, failed: 0" in row for row in rows) == 1
    # The start line, a blank, the table (header and 3 servers), a blank, 2 summary lines.
    assert len(rows) <= 10, rows


def test_status_table_fits_80_columns():
    long_name = "render-node-with-a-long-name"
    servers = _servers({"name": long_name, "url": f"http://127.0.0.1:{_closed_port()}/a/long/path/prefix/for/comfyui"})
    code, out = run_in_terminal(["status"], 80, {"NUKE_COMFYUI_SERVERS": servers})
    assert code == 1
    rows = screen_of(out, 80)
    assert rows[0].startswith("NAME") and len(rows) == 2, rows  # one row per server: nothing wrapped
    assert rows[1].startswith(long_name + "  no") and "connection refused" in rows[1], rows


def test_status_table_keeps_every_column_when_piped(mock_comfy):
    """Not a terminal (a pipe, a file): nothing is cut, for scripts reading it."""
    error_name = "x" * 100
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=_servers({"name": error_name, "url": mock_comfy.url}))
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert error_name in out.stdout


# ---------------------------------------------------------------------------------------------
# item 3: exit statuses


def test_submit_with_no_server_able_to_take_the_job_exits_3(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=_servers({"name": "gpu1", "host": "127.0.0.1", "port": _closed_port()}))
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "submit", str(wf)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr  # 2 is for bad arguments
    assert "no server can take the job (gpu1: offline" in out.stderr
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"), encoding="utf-8").read()
    assert "| 3 | no server could take the job" in readme


def test_status_with_only_a_disabled_server_online_exits_1(mock_comfy):
    servers = _servers({"name": "off", "url": mock_comfy.url, "enabled": False},
                       {"name": "down", "host": "127.0.0.1", "port": _closed_port()})
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=servers)
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    assert "yes (disabled)" in out.stdout


# ---------------------------------------------------------------------------------------------
# item 9: escape codes only where they work


def test_status_watch_on_a_dumb_terminal_writes_no_escape_codes(mock_comfy):
    env = {"NUKE_COMFYUI_SERVERS": _servers({"name": "m", "url": mock_comfy.url}), "TERM": "dumb"}
    code, out = run_in_terminal(["status", "--watch", "--interval", "0.2"], 80, env, stop_after=b"NAME")
    assert code == 130
    assert b"\x1b" not in out and out.count(b"NAME") >= 2
    assert re.search(rb"--- \d\d:\d\d:\d\d ---", out)  # a dated rule between the tables instead


def test_status_watch_clears_the_screen_where_codes_work(mock_comfy):
    env = {"NUKE_COMFYUI_SERVERS": _servers({"name": "m", "url": mock_comfy.url})}
    code, out = run_in_terminal(["status", "--watch", "--interval", "0.2"], 80, env, stop_after=b"NAME")
    assert code == 130 and b"\x1b[2J" in out


class _Console:
    """A Windows console's GetConsoleMode/SetConsoleMode; ``vt`` says whether it accepts VT mode
    (the classic console of Windows 10 before 1511, or with the legacy console option, does not)."""

    def __init__(self, vt: bool) -> None:
        self.vt = vt
        self.modes: List[int] = []

    def GetConsoleMode(self, handle: int, ref: object) -> int:  # noqa: N802 - the Win32 name
        ref._obj.value = 0x0003  # type: ignore[attr-defined]  # processed and wrapped output
        return 1

    def SetConsoleMode(self, handle: int, mode: int) -> int:  # noqa: N802
        self.modes.append(mode)
        return 1 if self.vt else 0


def test_windows_console_without_vt_mode_gets_no_escape_codes():
    import pty

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            legacy, modern = _Console(vt=False), _Console(vt=True)
            assert ansi_ok(tty, platform="win32", kernel32=legacy) is False
            assert ansi_ok(tty, platform="win32", kernel32=modern) is True
            assert modern.modes == [0x0003 | 0x0004]  # asked for ENABLE_VIRTUAL_TERMINAL_PROCESSING
    finally:
        os.close(master)
        os.close(slave)
    assert ctypes  # ctypes' byref is what the real call is given


def test_a_job_event_delivered_after_the_summary_prints_nothing():
    """A job's callbacks may run after map() returned (they run on the callback thread): on a
    terminal, a late ``succeeded`` printed a pipe-style ``job 3 succeeded ...`` line under the
    summary (seen in the 120-column demo on a loaded machine)."""
    import io

    from comfy_cluster.cli_format import Progress
    from comfy_cluster.jobs import JobEvent

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    progress = Progress(2, out)
    progress.on_event(JobEvent("succeeded", "s1", index=0))
    progress.finish()
    shown = out.getvalue()
    progress.on_event(JobEvent("succeeded", "s1", index=1))
    assert out.getvalue() == shown
    assert progress.done == 2


def test_help_lists_the_exit_statuses_as_readme_does():
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "--help"], capture_output=True, text=True, timeout=60)
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"), encoding="utf-8").read()
    for code, words in (("2", "bad arguments"), ("3", "no server could take the job"), ("130", "Ctrl-C")):
        assert f"{code} {words}" in out.stdout and f"| {code} | " in readme
