"""``comfy-cluster gateway``: start-up line, and SIGTERM / Ctrl-C cancel unfinished jobs on
their servers before it exits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

import pytest
from gateway_util import ScriptClient, is_done, of_prompt

from comfy_cluster.testing import MockCluster, wait_until
from comfy_cluster.testing.workflows import sleep_workflow

pytestmark = pytest.mark.timeout(60)


def _start(cluster: MockCluster, state_dir: str, *args: str) -> "subprocess.Popen[str]":
    # Never the developer's own data folder: the default state lives there.
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=cluster.servers_json(), COMFY_CLUSTER_GATEWAY_STATE=f"sqlite:///{state_dir}/gw.sqlite3")
    env.pop("COMFY_CLUSTER_GATEWAY_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "comfy_cluster", "gateway", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A test run started in the background inherits SIGINT ignored: restore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_gateway_command_tells_clients_and_cancels_on_every_stop(mock_cluster_factory: Callable[..., MockCluster], sig: int, code: int, tmp_path: Path) -> None:
    # SIGHUP (a closed terminal) used to kill it on the spot, leaving its jobs on the GPUs; the
    # stops it did handle closed the clients' sockets without a word about their prompts.
    cluster = mock_cluster_factory(speeds=(1.0, 1.0))
    proc = _start(cluster, str(tmp_path), "--strategy", "round_robin", "--token", "t0ken")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.match(r"comfy-cluster gateway on (http://127\.0\.0\.1:\d+) -> 2 server\(s\): mock1, mock2 \(strategy round_robin, (?:admin token|token required); state sqlite:///.*/gw\.sqlite3\)", line)
        assert match, line
        url = match.group(1)
        client = ScriptClient(url, token="t0ken")
        try:
            ids = [client.run(sleep_workflow(seconds=30.0, steps=30, seed=seed)) for seed in (1, 2, 3)]
            wait_until(lambda: all(s.queue_snapshot()[0] for s in cluster), timeout=20, message="a job running on each server")
            proc.send_signal(sig)
            for pid in ids:  # each prompt ends for its client, saying why, before the socket closes
                frames = of_prompt(client.socket.wait_for(is_done(pid), timeout=30), pid)
                error = [f for f in frames if f["type"] == "execution_error"]
                assert error and "gateway stopped" in error[-1]["data"]["exception_message"], frames
            _, err = proc.communicate(timeout=30)
        finally:
            client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "t0ken" not in err
    assert "cancelling unfinished jobs" in err
    for s in cluster:
        assert s.queue_snapshot() == ([], [])
        assert s.interrupt_requests and all(r.get("prompt_id") for r in s.interrupt_requests)
        assert s.executed_prompt_ids == []


def test_gateway_command_reports_bad_configuration_in_one_line(mock_cluster_factory: Callable[..., MockCluster], tmp_path: Path) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    proc = _start(cluster, str(tmp_path), "--argv", "[1]")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["comfy-cluster gateway: --argv: expected one path or a JSON list of strings"]
    proc = _start(cluster, str(tmp_path), "--session-hours", "0")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["comfy-cluster gateway: --session-hours 0: give a positive number of hours"]


@pytest.mark.parametrize("url, message", [
    ("mysql://u@h/db", "state: unknown kind 'mysql' in 'mysql://u@h/db': use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
    ("sqlite://rel.db", "state: 'sqlite://rel.db': a SQLite URL is sqlite:///PATH (three slashes)"),
    ("postgresql://u:s3cret@127.0.0.1:notaport/db", "state: 'postgresql://u:***@127.0.0.1:notaport/db': the port is not a number"),
])
def test_gateway_command_reports_a_bad_state_url_in_one_line(mock_cluster_factory: Callable[..., MockCluster], tmp_path: Path, url: str, message: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    proc = _start(cluster, str(tmp_path), "--state", url)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [f"comfy-cluster gateway: {message}"]
    assert "s3cret" not in err
