"""Windows text as users type and save it (issue 21 items 7, 8 and 10): paths typed in JSON with
single backslashes, files saved in Windows' "ANSI" code page (cp1252), cp1252 consoles, and
the quotes cmd.exe keeps in variables and passes on in options."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import sleep_workflow, windows_argv

from comfy_cluster import ConfigError, WorkflowInputError, load_workflow
from comfy_cluster.config import servers_from_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CA = os.path.join(ROOT, "tests", "data", "tls", "ca.pem")


def _cmd_set(line: str) -> dict:
    """``set NAME=VALUE`` as cmd.exe stores it: everything after ``=``, quotes included."""
    name, _, value = line[len("set "):].partition("=")
    return {name: value}


def _cli(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "comfy_cluster", *args], capture_output=True, env=dict(os.environ, **(env or {})),
                          timeout=120, **kw)


# ---------------------------------------------------------------------------------------------
# item 7: Windows paths in JSON


@pytest.mark.parametrize("field, typed, what", [
    ("dir_local", r'"Z:\renders"', "carriage return"),  # was accepted as Z: + CR + "enders"
    ("dir_local", r'{"windows": "Z:\temp"}', "tab"),
    ("dir_remote", r'"\\server\new"', "line break"),
    ("verify_tls", r'"C:\farm\bundle.pem"', "form feed"),
])
def test_single_backslash_paths_are_refused_naming_the_fix(field, typed, what):
    line = f'set NUKE_COMFYUI_SERVERS=[{{"name": "gpu1", "host": "10.0.0.1", "{field}": {typed}}}]'
    with pytest.raises(ConfigError) as info:
        servers_from_env(_cmd_set(line))
    message = str(info.value)
    assert message.startswith(f"NUKE_COMFYUI_SERVERS[0] (gpu1): {field}: ") and what in message
    assert "write each \\ of a Windows path as \\\\ or use /" in message and "\n" not in message


def test_invalid_escape_names_the_fix_not_only_json():
    line = r'set NUKE_COMFYUI_SERVERS=[{"name": "gpu1", "host": "10.0.0.1", "dir_local": "Z:\ComfyUI"}]'
    with pytest.raises(ConfigError) as info:
        servers_from_env(_cmd_set(line))
    assert "Invalid \\escape" in str(info.value) and '"Z:\\\\ComfyUI" or "Z:/ComfyUI"' in str(info.value)


def test_doubled_backslashes_and_slashes_work():
    for typed in (r'"Z:\\renders"', '"Z:/renders"'):
        servers, _ = servers_from_env(_cmd_set(f'set NUKE_COMFYUI_SERVERS=[{{"host": "10.0.0.1", "dir_local": {typed}}}]'))
        assert servers[0].dir_local in ("Z:\\renders", "Z:/renders")


def test_workflow_with_a_single_backslash_path_names_the_fix(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text('{"10": {"class_type": "LoadImage", "inputs": {"image": "C:\\plates\\sh010.png"}}}', encoding="utf-8")
    with pytest.raises(WorkflowInputError, match=r"not valid JSON: Invalid \\escape at character \d+: a single backslash"):
        load_workflow(str(wf))


# ---------------------------------------------------------------------------------------------
# item 8: cp1252 files and consoles


def test_cp1252_workflow_file_names_the_encoding_and_the_fix(tmp_path):
    wf = tmp_path / "wf.json"
    data = sleep_workflow()
    data["1"]["inputs"]["note"] = "plate d'été"  # what PowerShell 5.1's Set-Content writes as cp1252
    wf.write_bytes(json.dumps(data, ensure_ascii=False).encode("cp1252"))
    out = _cli(["submit", str(wf)], {"NUKE_COMFYUI_SERVERS": '[{"host": "127.0.0.1", "port": 9}]'}, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cp1252" in out.stderr and "save it as UTF-8" in out.stderr and out.stderr.count("\n") == 1


def test_cp1252_servers_file_names_the_encoding(tmp_path):
    path = tmp_path / "servers.json"
    path.write_bytes('[{"name": "Zürich", "host": "10.0.0.1"}]'.encode("cp1252"))
    with pytest.raises(ConfigError, match=r"cp1252.*save it as UTF-8"):
        servers_from_env({"NUKE_COMFYUI_SERVERS": str(path)})


def test_installer_under_a_cp1252_console_names_the_encoding(tmp_path):
    libs = tmp_path / "Łukasz" / "comfy_libs"
    env = dict(os.environ, PYTHONIOENCODING="cp1252", COMFY_CLUSTER_LIBS=str(libs))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "comfy_cluster", "nuke_setup.py"), "--nuke", "15", "--dry-run"],
                         capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr and b"UnicodeEncodeError" not in out.stderr
    assert b"(cp1252)" in out.stderr and b"PYTHONUTF8=1" in out.stderr


def test_mock_server_named_in_japanese_under_a_cp1252_console():
    env = dict(os.environ, PYTHONIOENCODING="cp1252")
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "mock-server", "--port", "0", "--name", "東京"],
                         input=b"status\nquit\n", capture_output=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr + out.stdout


def test_submit_out_under_cp1252_says_a_path_is_not_exact(mock_comfy, tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(sleep_workflow(prefix="東京")), encoding="utf-8")
    env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "m", "url": mock_comfy.url}]), "PYTHONIOENCODING": "cp1252"}
    out = _cli(["submit", str(wf), "--out", str(tmp_path / "renders")], env)
    assert out.returncode == 0, out.stderr
    assert b"Traceback" not in out.stderr
    assert b"(cp1252)" in out.stderr and b"PYTHONUTF8=1" in out.stderr
    assert any("東京" in name for name in os.listdir(tmp_path / "renders"))


# ---------------------------------------------------------------------------------------------
# item 10: cmd.exe quotes on every variable and option


def test_comfy_cluster_libs_with_cmd_quotes(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "nuke_plugin"))
    try:
        from comfy_cluster_nuke.startup import libs_root
    finally:
        sys.path.remove(os.path.join(ROOT, "nuke_plugin"))
    libs = str(tmp_path / "comfy libs")
    assert libs_root(_cmd_set(f'set COMFY_CLUSTER_LIBS="{libs}"')) == libs  # was .../"C:\studio\comfy_libs"
    env = dict(os.environ, **_cmd_set(f'set COMFY_CLUSTER_LIBS="{libs}"'))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "comfy_cluster", "nuke_setup.py"), "--nuke", "15", "--dry-run"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and f"{libs}{os.sep}py310-" in out.stdout and f'"{libs}' not in out.stdout.replace(f'"{libs}{os.sep}', "")


def test_ca_bundle_variable_with_cmd_quotes(monkeypatch):
    from comfy_cluster import tls

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", f'"{CA}"')
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(tls, "_cache", {})
    tls.ssl_context(True, "s")  # a quoted path raised "cannot load CA certificates"


@pytest.mark.parametrize("line", [
    "set NUKE_COMFYUI_SERVERS='[{\"host\": \"10.0.0.1\"}]'",
    'set NUKE_COMFYUI_URL="10.0.0.1:8188"',
    "set NUKE_COMFYUI_STRATEGY='round_robin'",
])
def test_server_variables_with_cmd_quotes(line):
    servers, _ = servers_from_env(dict(_cmd_set(line), **({"NUKE_COMFYUI_URL": "10.0.0.1"} if "STRATEGY" in line else {})))
    assert servers[0].host == "10.0.0.1"


def test_cli_file_options_with_cmd_single_quotes(mock_comfy, tmp_path):
    """cmd.exe passes single quotes on: bash's --out 'renders' arrives as 'renders'."""
    (tmp_path / "examples").mkdir()
    for name in ("invert_workflow_api.json", "plate.0001.png"):
        (tmp_path / "examples" / name).write_bytes(open(os.path.join(ROOT, "examples", name), "rb").read())
    line = "comfy-cluster submit 'examples/invert_workflow_api.json' --input '10=examples/plate.0001.png' --out 'renders2' --set '12.filename_prefix=inv'"
    argv = windows_argv(line)
    assert argv[-1] == "'12.filename_prefix=inv'"  # what cmd.exe gives the program
    out = _cli(argv[1:], {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "m", "url": mock_comfy.url}])}, cwd=tmp_path, text=True)
    assert out.returncode == 0, out.stderr
    assert "removed the quotes" in out.stderr
    assert os.listdir(tmp_path / "renders2") == ["inv_00001_.png"]
