"""Shared storage for a mixed-OS studio: one config, a local path per OS; server paths mapped
with every component checked, compared without case where the server is Windows (issue 14
item 4)."""

from __future__ import annotations

import json
import os

import pytest

from comfy_cluster import ConfigError, ServerConfig, ServerPool
from comfy_cluster.config import platform_key, servers_from_env
from comfy_cluster.errors import UnsafePathError

STUDIO = {"windows": "Z:\\ComfyUI", "macos": "/Volumes/ComfyUI", "linux": "/mnt/ComfyUI"}


@pytest.mark.parametrize("plat, key", [("win32", "windows"), ("cygwin", "windows"), ("darwin", "macos"), ("linux", "linux"), ("freebsd13", "linux")])
def test_platform_keys(plat, key):
    assert platform_key(plat) == key


def test_one_studio_config_serves_every_os():
    env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "gpu1", "host": "10.0.0.5", "dir_local": STUDIO, "dir_remote": "/opt/ComfyUI"}])}
    cfg = servers_from_env(env)[0][0]
    assert cfg.local_dir("win32") == "Z:\\ComfyUI" and cfg.local_dir("darwin") == "/Volumes/ComfyUI"
    assert cfg.local_dir("linux") == "/mnt/ComfyUI"
    assert cfg.map_remote_path("/opt/ComfyUI/output/shot/a.png", "win32") == "Z:\\ComfyUI\\output\\shot\\a.png"
    assert cfg.map_remote_path("/opt/ComfyUI/output/a.png", "darwin") == "/Volumes/ComfyUI/output/a.png"
    assert cfg.map_remote_path("/opt/ComfyUI", "linux") == "/mnt/ComfyUI"
    assert cfg.map_remote_path("/opt/comfyui/output/a.png", "linux") is None  # a Linux server compares with case
    assert cfg.map_remote_path("/opt/ComfyUI2/a.png", "linux") is None
    partial = ServerConfig(host="h", dir_local={"windows": "Z:\\ComfyUI"})
    assert partial.local_dir("darwin") is None  # no path for this OS: outputs are downloaded


def test_windows_server_paths_compare_without_case():
    cfg = ServerConfig(host="h", dir_local=STUDIO, dir_remote="D:\\ComfyUI")
    assert cfg.map_remote_path("d:\\comfyui\\output\\A.png", "darwin") == "/Volumes/ComfyUI/output/A.png"
    share = ServerConfig(host="h", dir_local="/mnt/c", dir_remote="\\\\NAS\\Comfy")
    assert share.map_remote_path("\\\\nas\\comfy\\output\\x.png", "linux") == "/mnt/c/output/x.png"


@pytest.mark.parametrize("remote", ["/opt/ComfyUI/../etc/passwd", "/opt/ComfyUI/output/../../x", "/opt/ComfyUI/a/C:evil", "/opt/ComfyUI/a\x00b"])
def test_escapes_in_a_mapped_path_are_refused(remote):
    cfg = ServerConfig(host="h", dir_local=STUDIO, dir_remote="/opt/ComfyUI")
    with pytest.raises(UnsafePathError):
        cfg.map_remote_path(remote, "linux")


@pytest.mark.parametrize("dir_local, message", [
    ({"osx": "/Volumes/x"}, "dir_local: unknown platform 'osx' (use windows, macos, linux)"),
    ({"linux": " "}, "dir_local: empty path for linux"),
])
def test_bad_per_os_dir_local(dir_local, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        servers_from_env({"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "a", "host": "h", "dir_local": dir_local}])})


def test_outputs_used_in_place_through_this_os_entry(mock_comfy, tmp_path):
    from helpers import sleep_workflow

    this_os = platform_key()
    others = {k: "/nowhere" for k in ("windows", "macos", "linux") if k != this_os}
    cfg = {"name": "m", "url": mock_comfy.url, "dir_local": dict(others, **{this_os: mock_comfy.data_dir})}
    with ServerPool([cfg], background_status=False) as pool:
        job = pool.submit(sleep_workflow())
        job.result(timeout=15)
        paths = job.download(str(tmp_path / "dl"))
    assert paths and all(p.startswith(mock_comfy.data_dir) and os.path.isfile(p) for p in paths)
    assert not (tmp_path / "dl").exists()
