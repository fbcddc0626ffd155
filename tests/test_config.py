"""Configuration: every source, every documented error, and no secret in any message."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_cluster import ConfigError, ServerConfig, ServerPool
from comfy_cluster.config import servers_from_env

TOKEN = "Bearer s3cr3t-t0ken-value"


def names(env):
    servers, _ = servers_from_env(env)
    return [(s.name, s.url) for s in servers]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, [("127.0.0.1:8188", "http://127.0.0.1:8188")]),
        (
            {"NUKE_COMFYUI_SERVERS": '[{"name": "gpu1", "host": "10.0.0.5", "port": 8188}, {"name": "gpu2", "url": "https://gpu2.studio:8443"}]'},
            [("gpu1", "http://10.0.0.5:8188"), ("gpu2", "https://gpu2.studio:8443")],
        ),
        ({"NUKE_COMFYUI_SERVERS": '[{"ip": "10.0.0.5"}]'}, [("10.0.0.5:8188", "http://10.0.0.5:8188")]),
        ({"NUKE_COMFYUI_SERVERS": '[{"url": "http://h:81/comfy/"}]'}, [("h:81", "http://h:81/comfy")]),
        ({"NUKE_COMFYUI_SERVERS": '[{"url": "https://h/api"}]'}, [("h:443", "https://h:443/api")]),
        (
            {"NUKE_COMFYUI_IP_1": "10.0.0.1", "NUKE_COMFYUI_IP_2": "10.0.0.2", "NUKE_COMFYUI_PORT_2": "9000", "NUKE_COMFYUI_NAME_2": "b"},
            [("10.0.0.1:8188", "http://10.0.0.1:8188"), ("b", "http://10.0.0.2:9000")],
        ),
        ({"NUKE_COMFYUI_URL": "gpu:8190"}, [("gpu:8190", "http://gpu:8190")]),
        ({"NUKE_COMFYUI_URL": "gpu"}, [("gpu:8188", "http://gpu:8188")]),
        ({"NUKE_COMFYUI_URL": "https://gpu.studio/comfy"}, [("gpu.studio:443", "https://gpu.studio:443/comfy")]),
        ({"NUKE_COMFYUI_HOST": "oldhost:8188"}, [("oldhost:8188", "http://oldhost:8188")]),
        ({"NUKE_COMFYUI_URL": '["a:1", "b:2"]'}, [("a:1", "http://a:1"), ("b:2", "http://b:2")]),
        ({"NUKE_COMFYUI_IP": "10.1.1.1", "NUKE_COMFYUI_PORT": "8000"}, [("10.1.1.1:8000", "http://10.1.1.1:8000")]),
        ({"NUKE_COMFYUI_IP": "10.1.1.1"}, [("10.1.1.1:8188", "http://10.1.1.1:8188")]),
        # Precedence: the JSON array wins over numbered, numbered over legacy.
        ({"NUKE_COMFYUI_SERVERS": '[{"host": "a"}]', "NUKE_COMFYUI_IP_1": "b", "NUKE_COMFYUI_URL": "c"}, [("a:8188", "http://a:8188")]),
        ({"NUKE_COMFYUI_IP_1": "b", "NUKE_COMFYUI_URL": "c"}, [("b:8188", "http://b:8188")]),
    ],
)
def test_sources(env, expected):
    assert names(env) == expected


def test_all_fields_and_defaults():
    env = {
        "NUKE_COMFYUI_SERVERS": json.dumps(
            [
                {
                    "name": "gpu1", "host": "h", "port": 1, "priority": 2, "weight": 2.5, "enabled": False,
                    "max_queue": 4, "headers": {"Authorization": TOKEN}, "verify_tls": "/ca.pem",
                    "dir_local": "/mnt/comfy", "dir_remote": "/opt/comfy", "tags": ["a", "b"],
                },
                {"host": "h2"},
            ]
        )
    }
    a, b = servers_from_env(env)[0]
    assert (a.priority, a.weight, a.enabled, a.max_queue, a.verify_tls, a.tags) == (2, 2.5, False, 4, "/ca.pem", ("a", "b"))
    assert a.headers == {"Authorization": TOKEN}
    assert (b.port, b.priority, b.weight, b.enabled, b.max_queue, b.verify_tls, b.headers) == (8188, 0, 1.0, True, 2, True, {})
    assert a.ws_url == "ws://h:1"


def test_legacy_dir_becomes_dir_local():
    (s,), _ = servers_from_env({"NUKE_COMFYUI_URL": "gpu:8188", "NUKE_COMFYUI_DIR": "/mnt/ComfyUI"})
    assert s.dir_local == "/mnt/ComfyUI"


def test_servers_from_file(tmp_path):
    path = tmp_path / "servers.json"
    path.write_text('[{"name": "f1", "host": "filehost"}]')
    assert names({"NUKE_COMFYUI_SERVERS": str(path)}) == [("f1", "http://filehost:8188")]


def test_https_ws_url_and_hashable():
    s = ServerConfig(url="https://gpu2.studio:8443/comfy")
    assert s.ws_url == "wss://gpu2.studio:8443/comfy"
    assert {s: 1}[ServerConfig(url="https://gpu2.studio:8443/comfy")] == 1
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        s.port = 1


S = "NUKE_COMFYUI_SERVERS"


@pytest.mark.parametrize(
    "env, message",
    [
        ({S: "[{nope"}, "NUKE_COMFYUI_SERVERS: not valid JSON"),
        ({S: '{"host": "a"}'}, "NUKE_COMFYUI_SERVERS: must be a JSON array of server objects, got dict"),
        ({S: "[]"}, "NUKE_COMFYUI_SERVERS: the array is empty"),
        ({S: '[{"name": "x"}]'}, "NUKE_COMFYUI_SERVERS[0] (x): host: host or url is required"),
        ({S: '[{"host": "a"}, {"host": "b"}, {"name": "gpu3", "host": "c", "port": 99999}]'},
         "NUKE_COMFYUI_SERVERS[2] (gpu3): port: must be 1..65535, got 99999"),
        ({S: '[{"name": "a", "host": "a"}, {"name": "a", "host": "b"}]'}, "NUKE_COMFYUI_SERVERS[1] (a): name: duplicate of NUKE_COMFYUI_SERVERS[0]"),
        ({S: '[{"host": "a", "weight": -1}]'}, "NUKE_COMFYUI_SERVERS[0]: weight: must be a number > 0, got -1"),
        ({S: '[{"host": "a", "weight": 0}]'}, "NUKE_COMFYUI_SERVERS[0]: weight: must be a number > 0, got 0"),
        ({S: '[{"host": "a", "prot": 1}]'}, "NUKE_COMFYUI_SERVERS[0]: prot: unknown field"),
        ({S: '[{"url": "ftp://a"}]'}, "NUKE_COMFYUI_SERVERS[0]: url: scheme must be http or https, got 'ftp'"),
        ({S: '[{"url": "a:8188"}]'}, "NUKE_COMFYUI_SERVERS[0]: url: must start with http:// or https://"),
        ({S: '[{"host": "a", "max_queue": 0}]'}, "NUKE_COMFYUI_SERVERS[0]: max_queue: must be >= 1, got 0"),
        ({S: '[{"host": "a", "url": "http://b"}]'}, "give either url or host/port"),
        ({S: "/no/such/servers.json"}, "NUKE_COMFYUI_SERVERS: not a JSON array and no such file: '/no/such/servers.json'"),
        ({S: '[3]'}, "NUKE_COMFYUI_SERVERS[0]: must be a JSON object"),
        ({"NUKE_COMFYUI_IP_1": "a", "NUKE_COMFYUI_IP_3": "c"}, "NUKE_COMFYUI_IP_3: numbered servers must be consecutive from 1; NUKE_COMFYUI_IP_2 is missing"),
        ({"NUKE_COMFYUI_IP_1": "a", "NUKE_COMFYUI_PORT_2": "9"}, "NUKE_COMFYUI_PORT_2: set without NUKE_COMFYUI_IP_2"),
        ({"NUKE_COMFYUI_IP_1": "a", "NUKE_COMFYUI_PORT_1": "x"}, "NUKE_COMFYUI_PORT_1: port: must be a number, got 'x'"),
        ({"NUKE_COMFYUI_PORT": "8188"}, "NUKE_COMFYUI_PORT: set without NUKE_COMFYUI_IP"),
        ({"NUKE_COMFYUI_URL": "gpu:abc"}, "NUKE_COMFYUI_URL: port: must be a number, got 'abc'"),
    ],
)
def test_errors_are_one_line_and_named(env, message):
    with pytest.raises(ConfigError) as info:
        servers_from_env(env)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        ServerPool.from_env({"NUKE_COMFYUI_STRATEGY": "fastest", S: '[{"host": "127.0.0.1", "port": 1}]'}, background_status=False)
    text = str(info.value)
    assert text.startswith("NUKE_COMFYUI_STRATEGY:")
    for name in ("least_loaded", "round_robin", "priority", "fastest_completion", "warm_models"):
        assert name in text


def test_bad_ttl():
    with pytest.raises(ConfigError, match="NUKE_COMFYUI_STATUS_TTL: must be a number"):
        ServerPool.from_env({"NUKE_COMFYUI_STATUS_TTL": "soon"})


def test_pool_from_env_reads_strategy_and_ttl():
    env = {S: '[{"host": "127.0.0.1", "port": 9}]', "NUKE_COMFYUI_STRATEGY": "round_robin", "NUKE_COMFYUI_STATUS_TTL": "2.5"}
    with ServerPool.from_env(env, background_status=False) as pool:
        assert pool.strategy == "round_robin"
        assert pool._monitor.ttl == 2.5
        assert [s.name for s in pool.servers] == ["127.0.0.1:9"]


@pytest.mark.parametrize(
    "bad",
    [
        '[{"host": "a", "headers": {"Authorization": "%s\\n"}}]' % TOKEN,
        '[{"host": "a", "headers": {"Authorization": "%s"}, "port": 0}]' % TOKEN,
        '[{"host": "a", "headers": {"Authorization": 5}}]',
        '[{"host": "a", "headers": {"Authorization": "%s"}}, {"nope": 1}]' % TOKEN,
        '[{"host": "a", "headers": {"Authorization": "%s"' % TOKEN,
    ],
)
def test_token_never_in_errors_or_logs(bad, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        servers_from_env({S: bad})
    assert "s3cr3t" not in str(info.value)
    assert "s3cr3t" not in caplog.text


def test_token_not_in_repr():
    s = ServerConfig(host="a", headers={"Authorization": TOKEN})
    assert "s3cr3t" not in repr(s)
    assert "Authorization" in repr(s)
    assert "s3cr3t" not in str(s)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_gives_servers_or_config_error(text):
    try:
        servers, _ = servers_from_env({S: text})
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert servers and all(isinstance(s, ServerConfig) for s in servers)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
server_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values | st.text(max_size=30) | st.integers(-5, 70000)
        for k in ("name", "host", "ip", "port", "url", "priority", "weight", "enabled", "max_queue", "headers", "verify_tls", "tags")
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(server_like, max_size=4))
def test_any_json_array_gives_servers_or_config_error(items):
    try:
        servers, _ = servers_from_env({S: json.dumps(items)})
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert len(servers) == len(items)


@pytest.mark.parametrize("env", [{S: "~\x00"}, {S: '[{"url": "@"}]'}, {S: '[{"url": "a@b"}]'}])
def test_found_by_hypothesis(env):
    # A NUL byte in a path raised ValueError from os.path.isfile; "@" with no scheme raised
    # IndexError while hiding credentials in the message.
    with pytest.raises(ConfigError) as info:
        servers_from_env(env)
    assert "\n" not in str(info.value)
