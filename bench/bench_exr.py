"""The cost of linear EXR against 8-bit PNG: one plate through an identity workflow.

A plate of WIDTHxHEIGHT random scene-linear values (-0.5 to 4) goes through LoadImage ->
SaveImage as an 8-bit PNG (values clipped and quantised), and through ComfyUI-HQ-Image-Save's
LoadEXR -> SaveEXR (tonemap linear) as a half-float EXR, each job submitted, run and its file
downloaded, one job at a time. Prints the median seconds per job, the file sizes, and the
largest error of what came back.

    python -m bench.bench_exr --servers 127.0.0.1:8301 --runs 5        # real ComfyUI with the pack
    python -m bench.bench_exr --runs 5                                 # a mock server with the pack
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import tempfile
import time
import uuid
import zlib
from typing import Any, Dict, List, Tuple

import numpy as np
import OpenEXR

from comfy_cluster import OutputFile, ServerPool


def write_png8(path: str, rgb: "np.ndarray") -> None:
    """An 8-bit RGB PNG of ``rgb`` (floats, clipped to 0-1), rows unfiltered."""
    data = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    height, width, _ = data.shape
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_exr_half(path: str, rgb: "np.ndarray") -> None:
    channels = {c: rgb[:, :, i].astype(np.float16) for i, c in enumerate("RGB")}
    with OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}, channels) as exr:
        exr.write(path)


def read_exr(path: str) -> "np.ndarray":
    with OpenEXR.File(path, separate_channels=True) as exr:
        ch = exr.channels()
        return np.stack([ch[c].pixels.astype(np.float32) for c in "RGB"], axis=-1)


def _png_workflow(prefix: str) -> Dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def _exr_workflow(prefix: str) -> Dict[str, Any]:
    return {
        "1": {"class_type": "LoadEXR", "inputs": {"filepath": "", "tonemap": "linear", "image_load_cap": 0,
                                                  "skip_first_images": 0, "select_every_nth": 1}},
        "2": {"class_type": "SaveEXR", "inputs": {"images": ["1", 0], "filename_prefix": prefix, "tonemap": "linear",
                                                  "version": -1, "start_frame": 1, "frame_pad": 4, "save_workflow": "none"}},
    }


def run(servers: List[Dict[str, Any]], plate_png: str, plate_exr: str, runs: int, out: str) -> Dict[str, Tuple[float, str]]:
    timings: Dict[str, List[float]] = {"png": [], "exr": []}
    last: Dict[str, str] = {}
    with ServerPool(servers) as pool:
        for i in range(runs):
            for kind in ("png", "exr"):
                folder = f"bench_exr/{uuid.uuid4().hex}"
                started = time.perf_counter()
                if kind == "png":
                    job = pool.submit(_png_workflow(f"{folder}/out"), inputs={"1": plate_png})
                    (path,) = job.download(os.path.join(out, f"{kind}{i}"), types=("output",))
                else:
                    job = pool.submit(_exr_workflow(f"{folder}/out"), inputs={"1": plate_exr})
                    (path,) = job.download(os.path.join(out, f"{kind}{i}"), files=[OutputFile("out_00001_.exr", folder, "output")])
                timings[kind].append(time.perf_counter() - started)
                last[kind] = path
    return {k: (statistics.median(v), last[k]) for k, v in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="", help="host:port,... of real servers with ComfyUI-HQ-Image-Save (default: a mock)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    plate = rng.uniform(-0.5, 4.0, size=(args.height, args.width, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        plate_png, plate_exr = os.path.join(tmp, "plate.png"), os.path.join(tmp, "plate.exr")
        write_png8(plate_png, plate)
        write_exr_half(plate_exr, plate)
        mock = None
        if args.servers:
            servers = [{"name": f"s{i}", "url": f"http://{hp}"} for i, hp in enumerate(args.servers.split(","))]
        else:
            from comfy_cluster.testing import MockComfyServer
            from comfy_cluster.testing.pixels import HQ_IMAGE_SAVE

            mock = MockComfyServer(node_packs=[HQ_IMAGE_SAVE]).start()
            servers = [{"name": "mock", "url": mock.url}]
        try:
            results = run(servers, plate_png, plate_exr, args.runs, os.path.join(tmp, "out"))
        finally:
            if mock is not None:
                mock.stop()
        half = plate.astype(np.float16).astype(np.float32)
        # The mock's images are solid colours (its first pixel): only real servers give errors.
        exr_error = f"{float(np.max(np.abs(read_exr(results['exr'][1]) - half))):.1e}" if args.servers else "n/a (mock)"
        sizes = {k: os.path.getsize(v[1]) / 1e6 for k, v in results.items()}
        print(f"{args.width}x{args.height}, {args.runs} runs, {'real: ' + args.servers if args.servers else 'mock'}")
        print("| exchange | sent, MB | back, MB | median s per job | values outside 0-1 | largest error vs what was sent |")
        print("|---|---|---|---|---|---|")
        print(f"| 8-bit PNG | {os.path.getsize(plate_png) / 1e6:.1f} | {sizes['png']:.1f} | {results['png'][0]:.2f} | clipped | "
              f"{float(np.max(np.abs(np.clip(plate, 0, 1) - plate))):.2f} vs the float plate (clipping) |")
        print(f"| half EXR | {os.path.getsize(plate_exr) / 1e6:.1f} | {sizes['exr']:.1f} | {results['exr'][0]:.2f} | kept | {exr_error} |")


if __name__ == "__main__":
    main()
