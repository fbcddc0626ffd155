"""The gateway on a network: the Origin check, tokens that stay secret, bad tokens refused at
start, cmd.exe quotes, the exposure warning, and no cluster that contains the gateway."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from typing import Any, Callable

import pytest
import requests
import websocket
from gateway_util import ScriptClient, gateway_over

from comfy_cluster import ServerPool
from comfy_cluster.gateway import Gateway
from comfy_cluster.config import ServerConfig
from comfy_cluster.gateway.cli import run_gateway
from comfy_cluster.gateway.network import self_loop_servers
from comfy_cluster.testing import MockCluster
from comfy_cluster.testing.workflows import image_workflow

pytestmark = pytest.mark.timeout(60)
Factory = Callable[..., MockCluster]


def _ws_status(url: str, origin: str) -> int:
    try:
        ws = websocket.create_connection("ws" + url[4:] + "/ws?clientId=page", origin=origin, timeout=5)
    except websocket.WebSocketBadStatusException as exc:
        return int(exc.status_code)
    ws.close()
    return 101


def test_a_page_on_another_origin_is_refused_on_post_and_websocket(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster) as gw:
        evil = {"Origin": "http://evil.example"}
        for path, body in (("/prompt", {"prompt": image_workflow()}), ("/api/interrupt", {}), ("/queue", {"clear": True})):
            r = requests.post(gw.url + path, json=body, headers=evil, timeout=5)
            assert r.status_code == 403, path
        assert cluster[0].received_prompts == []
        assert _ws_status(gw.url, "http://evil.example") == 403
        assert _ws_status(gw.url, gw.url) == 101  # the gateway's own page
        assert requests.post(gw.url + "/interrupt", json={}, headers={"Origin": gw.url}, timeout=5).status_code == 200
        # Another port on the same host is another origin too.
        other_port = gw.url.rsplit(":", 1)[0] + ":1"
        assert requests.post(gw.url + "/interrupt", json={}, headers={"Origin": other_port}, timeout=5).status_code == 403


def test_an_allowed_origin_passes_with_cors_headers(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, token="s3cret", gateway_kwargs={"allow_origins": ["http://tools.studio:3000"]}) as gw:
        pre = requests.options(gw.url + "/api/prompt", headers={"Origin": "http://tools.studio:3000", "Access-Control-Request-Method": "POST"}, timeout=5)
        assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == "http://tools.studio:3000"
        r = requests.get(gw.url + "/queue", headers={"Origin": "http://tools.studio:3000", "Authorization": "Bearer s3cret"}, timeout=5)
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://tools.studio:3000"
        assert requests.get(gw.url + "/queue", headers={"Origin": "http://other.studio"}, timeout=5).status_code == 403


def test_the_token_never_reaches_a_server_nor_a_log(mock_cluster_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cluster = mock_cluster_factory(speeds=(1.0,))
    with gateway_over(cluster, token="s3cret-t0ken") as gw:
        client = ScriptClient(gw.url, token="s3cret-t0ken")
        try:
            pid = client.run(image_workflow(color=3))
            client.follow(pid)
            image = client.history(pid)["outputs"]["3"]["images"][0]
            r = requests.get(gw.url + "/api/view", params=dict(image, token="s3cret-t0ken"), timeout=5)
            assert r.status_code == 200
            # and the routes the web page reads from a server, query and all
            requests.get(gw.url + "/api/view_metadata/checkpoints", params={"filename": "x.safetensors", "token": "s3cret-t0ken"}, timeout=5)
        finally:
            client.close()
    queries = cluster[0].request_queries
    assert any(path == "/view" for path, _ in queries) and any(path.startswith("/view_metadata") for path, _ in queries)
    assert all("token" not in q and "s3cret-t0ken" not in str(q) for _, q in queries)
    # (the test's own requests log its URLs; the gateway, the library and aiohttp never do)
    assert not [r for r in caplog.records if r.name.split(".")[0] in ("comfy_cluster", "aiohttp") and "s3cret-t0ken" in r.getMessage()]


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["--token", ""], {}, "--token is empty"),
        (["--token", '""'], {}, "--token is empty (only quotes)"),
        ([], {"COMFY_CLUSTER_GATEWAY_TOKEN": ""}, "COMFY_CLUSTER_GATEWAY_TOKEN is empty"),
        ([], {"COMFY_CLUSTER_GATEWAY_TOKEN": "''"}, "COMFY_CLUSTER_GATEWAY_TOKEN is empty"),
    ],
)
def test_an_empty_or_quote_only_token_is_refused_at_start(
    mock_cluster_factory: Factory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: Any, env: Any, expected: str
) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", cluster.servers_json())
    monkeypatch.delenv("COMFY_CLUSTER_GATEWAY_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run_gateway(["--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and "is the variable you passed set?" in err
    with pytest.raises(ValueError, match="empty"):
        Gateway(ServerPool([{"url": cluster[0].url}], background_status=False), token="  ")


def test_cmd_quotes_are_removed_from_the_gateway_variables(mock_cluster_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    cluster = mock_cluster_factory(speeds=(1.0,))
    users = tmp_path / "users.json"
    monkeypatch.setenv("NUKE_COMFYUI_SERVERS", cluster.servers_json())
    monkeypatch.setenv("COMFY_CLUSTER_GATEWAY_TOKEN", '"adm1n"')  # cmd.exe: set VAR="adm1n"
    monkeypatch.setenv("COMFY_CLUSTER_GATEWAY_USERS", f'"{users}"')
    assert run_gateway(["add-user", "alice"]) == 0
    alice = capsys.readouterr().out.strip()
    assert users.exists() and alice not in users.read_text()  # only its hash is stored
    stop = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(run_gateway(["--port", "0"], stop=stop)))
    thread.start()
    try:
        url = _wait_for_start_line(capsys)
        assert "admin token, users from" in url[1]
        for token in ("adm1n", alice):
            assert requests.get(url[0] + "/queue", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200
        assert requests.get(url[0] + "/queue", headers={"Authorization": 'Bearer "adm1n"'}, timeout=5).status_code == 401
    finally:
        stop.set()
        thread.join(30)
    assert result == [0]


def _wait_for_start_line(capsys: pytest.CaptureFixture[str]) -> Any:
    import re

    from comfy_cluster.testing import wait_until

    seen = []

    def line() -> Any:
        seen.append(capsys.readouterr().out)
        match = re.search(r"gateway on (http://127\.0\.0\.1:\d+) -> .*", "".join(seen))
        return (match.group(1), match.group(0)) if match else None

    return wait_until(line, timeout=30, message="the start-up line")


def test_listening_beyond_loopback_without_auth_warns(mock_cluster_factory: Factory) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    pool = ServerPool([{"url": cluster[0].url}], background_status=False)
    try:
        warning = Gateway(pool, host="0.0.0.0").exposure_warning
        assert warning is not None and "0.0.0.0" in warning and "--token or --users" in warning
        assert Gateway(pool, host="0.0.0.0", token="t").exposure_warning is None
        assert Gateway(pool, host="127.0.0.1").exposure_warning is None
    finally:
        pool.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "0.0.0.0", "LOOPBACK_HOSTNAME"])
def test_a_cluster_containing_the_gateway_itself_is_refused(mock_cluster_factory: Factory, name: str) -> None:
    cluster = mock_cluster_factory(speeds=(1.0,))
    port = _free_port()
    host = name
    if name == "LOOPBACK_HOSTNAME":  # this machine's name, when it means a loopback address
        mine = socket.gethostname()
        host = mine if all(ipaddress.ip_address(i[4][0]).is_loopback for i in socket.getaddrinfo(mine, None)) else "ip6-localhost"
    pool = ServerPool([{"url": cluster[0].url, "name": "gpu1"}, {"url": f"http://{host}:{port}", "name": "me"}], background_status=False)
    try:
        gateway = Gateway(pool, host="127.0.0.1", port=port)
        with pytest.raises(ValueError, match=r"the cluster contains the gateway itself \(me is .*NUKE_COMFYUI_SERVERS"):
            gateway.start()  # refused before it listens: nothing is bound
        assert not gateway.running
    finally:
        pool.close()


def test_listening_on_every_address_every_local_name_is_the_gateway() -> None:
    # (checked without listening: tests bind 127.0.0.1 only)
    local = [socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "0.0.0.0", "[::1]"]
    servers = [ServerConfig(url=f"http://{h}:8188", name=f"s{i}") for i, h in enumerate(local)]
    servers += [ServerConfig(url="http://gpu1.invalid:8188", name="gpu1"), ServerConfig(url="http://127.0.0.1:8189", name="other-port")]
    assert self_loop_servers("0.0.0.0", 8188, servers) == [f"s{i}" for i in range(len(local))]
    assert self_loop_servers("0.0.0.0", 0, servers) == []  # a free port: never one of theirs


def test_the_gateway_command_refuses_itself_as_its_server(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # README's old shared-mode block: no NUKE_COMFYUI_SERVERS, the gateway's own URL as the server.
    port = _free_port()
    monkeypatch.delenv("NUKE_COMFYUI_SERVERS", raising=False)
    monkeypatch.setenv("NUKE_COMFYUI_URL", f"http://127.0.0.1:{port}")
    for k in [k for k in os.environ if k.startswith("NUKE_COMFYUI_IP") or k.startswith("COMFY_CLUSTER_GATEWAY")]:
        monkeypatch.delenv(k)
    assert run_gateway(["--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "the cluster contains the gateway itself" in err
