"""The gateway from inside Nuke, with the real ``comfy_cluster.gateway.Gateway``: started by
``NUKE_COMFYUI_GATEWAY`` at start-up or from the menu, shown in the Servers panel, stopped at exit."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import requests
from nuke_fake.support import PLUGIN_DIR, cluster_env, fake_nuke  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_atexit(monkeypatch):
    import atexit

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn) or fn)
    return registered


def _refused(url: str) -> bool:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return True
    return False


def test_env_starts_the_gateway_at_startup_panel_shows_it_exit_stops_it(fake_nuke, cluster_env, monkeypatch, no_atexit):
    import nuke

    from comfy_cluster_nuke import gateway, lifecycle, panel

    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", "127.0.0.1:0")
    with open(os.path.join(PLUGIN_DIR, "menu.py"), encoding="utf-8") as fh:
        exec(compile(fh.read(), "menu.py", "exec"), {"__name__": "__main__", "nuke": nuke})
    url = gateway.url()
    try:
        assert url is not None and url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        stats = requests.get(f"{url}/system_stats", timeout=10)
        assert stats.status_code == 200 and "system" in stats.json()
        shown = panel.show()
        assert url in shown.gateway_knob.value()
        fake_nuke.pump_until(lambda: not shown.refreshing, what="the panel's refresh")
        assert lifecycle.at_exit in no_atexit
        lifecycle.at_exit()  # Nuke quits
        assert gateway.url() is None and _refused(url)
    finally:
        gateway.stop()


def test_menu_entry_starts_it_once_and_says_where(fake_nuke, cluster_env, monkeypatch):
    from comfy_cluster_nuke import gateway

    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", "127.0.0.1:0")
    try:
        first = gateway.start_from_menu()
        assert first is not None and first in fake_nuke.messages()[-1]
        assert gateway.start_from_menu() == first  # already running: the same one
    finally:
        assert gateway.stop() is True
    assert gateway.stop() is False


def test_bad_address_and_missing_aiohttp_are_explained(fake_nuke, cluster_env, monkeypatch, capsys):
    from comfy_cluster_nuke import gateway

    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", "localhost:http")
    assert gateway.start_from_env() is None
    assert "expected host:port" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "comfy_cluster.gateway", None)  # import fails as without aiohttp
    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", "127.0.0.1:0")
    assert gateway.start_from_menu() is None
    assert "nuke_setup.py --gateway" in fake_nuke.messages()[-1]
    assert gateway.url() is None


@pytest.mark.parametrize("text, expected", [("127.0.0.1:8189", ("127.0.0.1", 8189)), (":8190", ("127.0.0.1", 8190)), ("8191", ("127.0.0.1", 8191)), ("[::1]:8192", ("::1", 8192))])
def test_addresses(fake_nuke, text, expected):
    from comfy_cluster_nuke.gateway import parse_address

    assert parse_address(text) == expected


def test_a_second_nuke_on_the_same_gateway_port_says_so_in_one_line(fake_nuke, cluster_env, monkeypatch, capsys):
    """Issue 19 item 16: a second Nuke GUI auto-starting the gateway clashed on the port."""
    import socket

    from comfy_cluster_nuke import gateway

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", f"127.0.0.1:{taken.getsockname()[1]}")
        assert gateway.start_from_env() is None
    finally:
        taken.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is taken (another Nuke's gateway?)" in err
    assert gateway.url() is None


def test_cmd_quotes_are_removed_and_an_empty_token_refused(fake_nuke, cluster_env, monkeypatch, capsys):
    # cmd.exe: set NUKE_COMFYUI_GATEWAY="127.0.0.1:0" keeps the quotes in the value.
    from comfy_cluster_nuke import gateway

    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY", '"127.0.0.1:0"')
    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY_TOKEN", '"s3cret"')
    try:
        url = gateway.start_from_env()
        assert url is not None, capsys.readouterr().err
        assert requests.get(url + "/queue", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200
        assert requests.get(url + "/queue", timeout=10).status_code == 401
    finally:
        gateway.stop()
    monkeypatch.setenv("NUKE_COMFYUI_GATEWAY_TOKEN", '""')
    assert gateway.start_from_env() is None
    assert "NUKE_COMFYUI_GATEWAY_TOKEN is empty" in capsys.readouterr().err
    assert gateway.url() is None
