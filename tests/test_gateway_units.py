"""The gateway's pieces on their own: the upload store's versions, the cluster-wide
validation, and the merge of node definitions."""

from __future__ import annotations

import os
from typing import Any, Dict

import pytest

from comfy_cluster.gateway.info import merge_object_info
from comfy_cluster.gateway.uploads import UploadError, UploadStore
from comfy_cluster.gateway.validate import validate_for_cluster
from comfy_cluster.testing.nodes import BUILTIN_NODES, NodeEnv
from comfy_cluster.testing.workflows import load_image_workflow, sleep_workflow

ENV = NodeEnv("/nonexistent/in", "/nonexistent/out", "/nonexistent/tmp", ["m.safetensors"])
INFO = {name: node.object_info(ENV) for name, node in BUILTIN_NODES.items()}


def test_a_bound_version_outlives_its_replacement_until_released(tmp_path: Any) -> None:
    store = UploadStore(str(tmp_path), max_file_bytes=100, max_total_bytes=1000)
    store.put("plate.png", b"first", overwrite=True)
    inputs, held = store.bind(load_image_workflow("plate.png"))
    store.hold(held)
    first = inputs["1"]
    store.put("plate.png", b"second", overwrite=True)  # another client, same name
    inputs2, held2 = store.bind(load_image_workflow("plate.png"))
    assert open(first, "rb").read() == b"first" and open(inputs2["1"], "rb").read() == b"second"
    store.release(held)
    assert not os.path.exists(first)  # superseded and no longer held: deleted
    assert store.total_bytes == len(b"second")
    assert store.bind(load_image_workflow("other.png")) == ({}, [])
    assert store.bind(load_image_workflow("plate.png [input]"))[0]["1"] == inputs2["1"]


def test_the_store_is_capped_and_frees_unheld_uploads_first(tmp_path: Any) -> None:
    store = UploadStore(str(tmp_path), max_file_bytes=10, max_total_bytes=20)
    with pytest.raises(UploadError) as big:
        store.put("a.png", b"x" * 11)
    assert big.value.status == 413
    store.put("a.png", b"a" * 10)
    _, held = store.bind(load_image_workflow("a.png"))
    store.hold(held)
    store.put("b.png", b"b" * 10)
    store.put("c.png", b"c" * 10)  # b (not held) makes room; a is held
    assert store.lookup(("input", "", "b.png")) is None and store.lookup(("input", "", "a.png")) is not None
    store.hold(store.bind(load_image_workflow("c.png"))[1])
    with pytest.raises(UploadError) as full:  # everything stored is held by unfinished jobs
        store.put("d.png", b"d" * 10)
    assert full.value.status == 413


@pytest.mark.parametrize(
    "name, sub, status",
    [("", "", 400), ("..", "", 400), ("a/../b.png", "", 400), ("x.png", "../up", 403), ("x.png", "C:/win", 403), ("x\x00.png", "", 400)],
)
def test_store_refuses_bad_names(tmp_path: Any, name: str, sub: str, status: int) -> None:
    with pytest.raises(UploadError) as err:
        UploadStore(str(tmp_path)).put(name, b"1", subfolder=sub)
    assert err.value.status == status


def test_validation_accepts_when_any_server_can_and_skips_bound_uploads() -> None:
    lacking: Dict[str, Any] = {k: v for k, v in INFO.items() if k != "TestSleep"}
    ok, error, outputs, node_errors = validate_for_cluster(sleep_workflow(), [lacking, INFO], {})
    assert (ok, error, outputs, node_errors) == (True, None, ["3"], {})
    ok, error, _, _ = validate_for_cluster(sleep_workflow(), [lacking], {})
    assert not ok and error is not None and error["message"] == "Cannot execute because node TestSleep does not exist."
    # LoadImage's file list is the server's; an upload the gateway keeps is not in it yet.
    ok, _, _, node_errors = validate_for_cluster(load_image_workflow("up.png"), [INFO], {})
    assert not ok and node_errors["1"]["errors"][0]["type"] == "value_not_in_list"
    assert validate_for_cluster(load_image_workflow("up.png"), [INFO], {"1": {"image"}})[0]
    # A cycle is reported, not a crash.
    cyc = {"1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}, "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
           "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    ok, error, _, _ = validate_for_cluster(cyc, [INFO], {})
    assert not ok and error is not None and error["type"] == "prompt_outputs_failed_validation"
    assert validate_for_cluster([1, 2], [INFO], {})[0] is False


def test_merged_node_definitions_join_choice_lists() -> None:
    a = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.ckpt", "b.ckpt"], {}]}}}}
    b = {"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["b.ckpt", "c.ckpt"], {}]}}}, "Only": {"input": {}}}
    merged = merge_object_info([a, b])
    assert merged["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.ckpt", "b.ckpt", "c.ckpt"]
    assert "Only" in merged
    assert a["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["a.ckpt", "b.ckpt"]  # inputs untouched


def test_the_gateway_reaches_https_servers_with_the_librarys_trust(tmp_path: Any) -> None:
    # object_info, system_stats and /view go over aiohttp: the same verify_tls as the pool.
    import ssl

    import requests

    from comfy_cluster import ServerPool
    from comfy_cluster.gateway import Gateway
    from comfy_cluster.testing import MockComfyServer, wait_until
    from comfy_cluster.testing.workflows import image_workflow

    tls_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tls")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key"))
    with MockComfyServer(name="tls", ssl_context=ctx) as server:
        for verify, reachable in ((os.path.join(tls_dir, "ca.pem"), True), (True, False)):
            pool = ServerPool([{"name": "tls", "url": server.url, "verify_tls": verify}], background_status=False)
            gw = Gateway(pool, port=0).start()
            try:
                devices = requests.get(gw.url + "/system_stats", timeout=10).json()["devices"]
                assert (devices != []) is reachable
                if reachable:
                    r = requests.post(gw.url + "/prompt", json={"prompt": image_workflow(color=3)}, timeout=10)
                    pid = r.json()["prompt_id"]
                    done = wait_until(lambda: requests.get(f"{gw.url}/history/{pid}", timeout=5).json(), 20, message="the job done")
                    image = done[pid]["outputs"]["3"]["images"][0]
                    assert requests.get(gw.url + "/view", params=image, timeout=10).content[:4] == b"\x89PNG"
            finally:
                gw.stop()
                pool.close()


def test_folder_references_are_paths_into_an_input_folder(tmp_path: Any) -> None:
    from comfy_cluster.gateway.folders import find_folder_refs, folder_name

    store = UploadStore(str(tmp_path))
    store.put("f_00001.png", b"1", subfolder="plates")
    store.put("f_00002.png", b"2", subfolder="plates")
    prompt = {
        "Read1": {"class_type": "VHS_LoadImagesPath", "inputs": {"directory": "/opt/ComfyUI/input/plates"}},
        "Read2": {"class_type": "LoadEXR", "inputs": {"filepath": "input\\plates\\"}},
        "Text": {"class_type": "CLIPTextEncode", "inputs": {"text": "plates"}},  # a word, not a path
        "Other": {"class_type": "X", "inputs": {"directory": "/data/plates"}},  # not an input folder
    }
    assert find_folder_refs(prompt, store) == [
        ("Read1", "directory", "/opt/ComfyUI/input/", "plates"),
        ("Read2", "filepath", "input/", "plates"),
    ]
    files = store.files_in("plates")
    assert [n for n, _ in files] == ["f_00001.png", "f_00002.png"]
    name = folder_name(files)
    store.put("f_00002.png", b"changed", subfolder="plates", overwrite=True)
    assert folder_name(store.files_in("plates")) != name  # new content, new folder on the servers
