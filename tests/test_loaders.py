"""Files given as job inputs reach every kind of loader: uploaded names (LoadImage) and paths on
the server (ComfyUI-HQ-Image-Save's LoadEXR); EXR jobs go only to servers with the EXR nodes."""

from __future__ import annotations

import os
import uuid

import pytest

from comfy_cluster import ServerPool
from comfy_cluster.jobs import OutputFile
from comfy_cluster.loaders import input_directory, server_path
from comfy_cluster.testing.pixels import HQ_IMAGE_SAVE, read_exr_first_pixel, write_solid_exr

pytestmark = pytest.mark.timeout(60)


def exr_identity(prefix: str) -> dict:
    """LoadEXR (1) -> SaveEXR (2), both with tonemap linear: the values pass unchanged."""
    return {
        "1": {"class_type": "LoadEXR", "inputs": {"filepath": "placeholder.exr", "tonemap": "linear", "image_load_cap": 0,
                                                  "skip_first_images": 0, "select_every_nth": 1}},
        "2": {"class_type": "SaveEXR", "inputs": {"images": ["1", 0], "filename_prefix": prefix, "tonemap": "linear", "version": -1,
                                                  "start_frame": 1, "frame_pad": 4, "save_workflow": "none"}},
    }


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["main.py", "--input-directory", "/srv/in"], "/srv/in"),
        (["main.py", "--input-directory=/srv/in2"], "/srv/in2"),
        (["/opt/ComfyUI/main.py", "--listen"], "/opt/ComfyUI/input"),
        (["main.py", "--base-directory", "/data/comfy"], "/data/comfy/input"),
        (["main.py"], "input"),  # relative to the server's working folder, as LoadEXR reads it
        (["C:\\ComfyUI\\main.py"], "C:\\ComfyUI\\input"),
    ],
)
def test_the_server_input_folder_comes_from_its_argv(argv, expected):
    assert input_directory({"system": {"argv": argv}}) == expected


def test_server_path_joins_with_the_folders_separator():
    assert server_path("/srv/in", "cc-ab/plate.exr") == "/srv/in/cc-ab/plate.exr"
    assert server_path("C:\\ComfyUI\\input", "cc-ab/plate.exr") == "C:\\ComfyUI\\input\\cc-ab\\plate.exr"


def test_exr_jobs_reach_loadexr_by_path_run_only_where_the_nodes_are_and_keep_values(mock_cluster_factory, tmp_path):
    cluster = mock_cluster_factory(speeds=(1.0, 1.0), per_server=[{}, {"node_packs": [HQ_IMAGE_SAVE]}])
    plain, hq = cluster[0], cluster[1]
    plate = tmp_path / "plate.exr"
    write_solid_exr(str(plate), 8, 4, {"R": 4.0, "G": -0.5, "B": 0.25, "A": 1.0}, half=True)
    servers = [{"name": s.name, "url": s.url} for s in cluster]
    with ServerPool(servers) as pool:
        caps = pool.capabilities(exr_identity("x"))
        assert caps[hq.name] is None
        assert "missing node types LoadEXR, SaveEXR" in (caps[plain.name] or "")
        prefixes = [f"cc/{uuid.uuid4().hex}/frame" for _ in range(4)]
        jobs = [pool.submit(exr_identity(p), inputs={"1": str(plate)}) for p in prefixes]
        for job, prefix in zip(jobs, prefixes):
            result = job.result(timeout=30)
            assert result.server == hq.name  # capability routing: never the server without the pack
            assert result.files == []  # SaveEXR reports nothing, as the real pack does
            folder, base = prefix.rsplit("/", 1)
            (path,) = job.download(str(tmp_path / "dl" / base / folder.replace("/", "_")),
                                   files=[OutputFile(f"{base}_00001_.exr", folder, "output")])
            values, size = read_exr_first_pixel(path)
            assert size == (8, 4)
            assert (values["R"], values["G"], values["B"]) == (4.0, -0.5, 0.25)
    assert plain.received_prompts == []
    # LoadEXR got the uploaded file's absolute path in the server's input folder.
    paths = {p["1"]["inputs"]["filepath"] for _, p, _ in hq.received_prompts}
    assert len(paths) == 1
    (filepath,) = paths
    assert os.path.isabs(filepath) and filepath.startswith(hq.input_dir) and filepath.endswith("plate.exr")
