"""Configuration as Windows users write it (cmd.exe quotes, PowerShell's UTF-16 files) and
no secret in any message, whichever way the value is wrong (issue 11 item 11, issue 14 items 6-7)."""

from __future__ import annotations

import codecs
import json
import logging
import os
import subprocess
import sys

import pytest

from comfy_cluster import ConfigError, ServerConfig, WorkflowInputError, load_workflow
from comfy_cluster.config import servers_from_env, strategy_from_env, status_ttl_from_env

SECRET = "s3cr3t-t0ken-value"
SERVERS = [{"name": "gpu1", "host": "10.0.0.5", "headers": {"Authorization": f"Bearer {SECRET}"}}]
SERVERS_JSON = json.dumps(SERVERS)


@pytest.mark.parametrize("quoted", [f"'{SERVERS_JSON}'", f'"{SERVERS_JSON}"', f"  '{SERVERS_JSON}'  "])
def test_cmd_exe_quotes_around_the_servers_are_removed_and_said(quoted, caplog):
    with caplog.at_level(logging.WARNING, logger="comfy_cluster"):
        servers, source = servers_from_env({"NUKE_COMFYUI_SERVERS": quoted})
    assert [s.name for s in servers] == ["gpu1"] and source == "NUKE_COMFYUI_SERVERS"
    assert "NUKE_COMFYUI_SERVERS: removed the quotes" in caplog.text
    assert SECRET not in caplog.text


def test_quoted_path_numbered_legacy_strategy_and_ttl(tmp_path):
    f = tmp_path / "my servers.json"
    f.write_text(SERVERS_JSON)
    assert servers_from_env({"NUKE_COMFYUI_SERVERS": f'"{f}"'})[0][0].name == "gpu1"
    env = {"NUKE_COMFYUI_IP_1": '"10.0.0.1"', "NUKE_COMFYUI_PORT_1": "'9000'", "NUKE_COMFYUI_NAME_1": '"gpu a"'}
    assert [(s.name, s.url) for s in servers_from_env(env)[0]] == [("gpu a", "http://10.0.0.1:9000")]
    assert servers_from_env({"NUKE_COMFYUI_URL": '"gpu:8190"'})[0][0].url == "http://gpu:8190"
    assert servers_from_env({"NUKE_COMFYUI_IP": "'gpu'", "NUKE_COMFYUI_PORT": '"81"'})[0][0].url == "http://gpu:81"
    assert strategy_from_env({"NUKE_COMFYUI_STRATEGY": "'priority'"}) == "priority"
    assert status_ttl_from_env({"NUKE_COMFYUI_STATUS_TTL": '"5"'}) == 5.0


@pytest.mark.parametrize(
    "value",
    [
        f"'{SERVERS_JSON}",  # one quote only: not JSON, not a file
        f"{SERVERS_JSON}'",
        SERVERS_JSON[:-1],  # cut short
        json.dumps([{"name": "a", "url": f"http://h:8188/?token={SECRET}"}]),
        json.dumps([{"name": "a", "url": f"http://h:8188/#{SECRET}"}]),
        json.dumps([{"name": "a", "url": f"http://user:{SECRET}@h:8188"}]),
        json.dumps([{"name": "a", "url": f"http://h:99999/?token={SECRET}"}]),
        json.dumps([{"name": "a", "url": f"ftp://h/?token={SECRET}"}]),
        json.dumps([{"name": "a", "url": f"h:8188/?token={SECRET}"}]),
        json.dumps([{"name": "a", "url": f"http://h:8188/?t={SECRET}", "port": 81}]),
        json.dumps([{"name": "a", "host": "h", "port": "x", "headers": {"A": SECRET}}]),
        json.dumps([{"name": "a", "url": "http://h", "host": "other", "headers": {"A": SECRET}}]),
        json.dumps([{"name": "a", "host": "h", "headers": {"A": SECRET, "B": 5}}]),
        json.dumps([{"name": "a", "host": "h", "headers": {"A": SECRET + "\n"}}]),
    ],
)
def test_no_secret_in_any_config_error_or_log(value, caplog):
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ConfigError) as info:
            servers_from_env({"NUKE_COMFYUI_SERVERS": value})
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert "\n" not in str(info.value) and str(info.value).startswith("NUKE_COMFYUI_SERVERS")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(host="h", port="x", headers={"Authorization": SECRET}),
        dict(url="http://h", host="other", headers={"Authorization": SECRET}),
        dict(url="http://h", port=81, headers={"Authorization": SECRET}),
        dict(host="bad host!", headers={"Authorization": SECRET}),
        dict(url=f"http://h/?token={SECRET}"),
        dict(url=f"http://u:{SECRET}@h"),
        dict(host="h", headers={"Authorization": SECRET}, bogus=1),
    ],
)
def test_no_secret_when_serverconfig_is_built_directly(kwargs):
    """pydantic's own error showed the whole input, header values included."""
    with pytest.raises(ValueError) as info:
        ServerConfig(**kwargs)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_url_with_another_port_or_host_is_an_error_not_dropped():
    with pytest.raises(ConfigError, match=r"NUKE_COMFYUI_SERVERS\[0\] \(a\): url: give either url or host/port, not both \(port 8189"):
        servers_from_env({"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "a", "url": "http://h:8188", "port": 8189}])})
    with pytest.raises(ConfigError, match="host 'other'"):
        servers_from_env({"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "a", "url": "http://h:8188", "host": "other"}])})
    # Equal values say the same thing twice: fine, and a dumped config validates again.
    cfg = ServerConfig(url="http://h:8188", port=8188, host="h")
    assert ServerConfig.model_validate(cfg.model_dump()) == cfg


def _write(path, text, encoding, bom=b""):
    path.write_bytes(bom + text.encode(encoding))
    return str(path)


ENCODINGS = [
    ("utf-8-bom", "utf-8", codecs.BOM_UTF8),  # Notepad, Set-Content -Encoding UTF8
    ("utf-16-le", "utf-16-le", codecs.BOM_UTF16_LE),  # Windows PowerShell 5.1: > and Out-File
    ("utf-16-be", "utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-32", "utf-32-le", codecs.BOM_UTF32_LE),
    ("plain", "utf-8", b""),
]


@pytest.mark.parametrize("label, encoding, bom", ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_server_and_workflow_files_as_powershell_writes_them(tmp_path, label, encoding, bom):
    servers = _write(tmp_path / "servers.json", json.dumps([{"name": "gpu é", "host": "10.0.0.5"}]), encoding, bom)
    assert servers_from_env({"NUKE_COMFYUI_SERVERS": servers})[0][0].name == "gpu é"
    wf = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    path = _write(tmp_path / "wf.json", json.dumps(wf), encoding, bom)
    assert load_workflow(path) == wf


def test_a_file_in_another_encoding_is_one_line_error(tmp_path):
    path = tmp_path / "servers.json"
    path.write_bytes(b'[{"name": "\xff\xfe\xfd"}]'[1:])
    with pytest.raises(ConfigError, match="cannot read"):
        servers_from_env({"NUKE_COMFYUI_SERVERS": str(path)})
    wf = tmp_path / "wf.json"
    wf.write_bytes(b"{\"1\": \"\xe9\"}")
    with pytest.raises(WorkflowInputError, match="cannot read workflow file"):
        load_workflow(str(wf))


def test_a_plain_script_prints_no_library_warning():
    """The quotes warning (or any library warning) must not reach stderr of a script that
    has not configured logging."""
    code = "import comfy_cluster.config as c; print(len(c.servers_from_env()[0]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, NUKE_COMFYUI_SERVERS=f"'{SERVERS_JSON}'"))
    assert out.returncode == 0 and out.stdout.strip() == "1" and out.stderr == ""
