"""Mock nodes whose pixel values matter: masks (core ComfyUI) and float EXR (a node pack).

* ``LoadImageMask``, ``InvertMask`` and ``MaskToImage`` as in ComfyUI 0.3.64 (``nodes.py``,
  ``comfy_extras/nodes_mask.py``): a mask from one channel of an image file (``alpha`` gives
  ``1 - alpha``, the other channels their value), ``1 - mask``, and a mask shown as a grey
  image. Offered by
  every mock server, like the other core nodes.
* ``LoadEXR`` and ``SaveEXR`` of ComfyUI-HQ-Image-Save (``nodes.py`` of that pack), offered only
  by servers started with ``node_packs=("ComfyUI-HQ-Image-Save",)``. ``LoadEXR.filepath`` is a
  path on the server (relative paths resolve against the server process's working folder);
  ``SaveEXR`` writes ``<prefix>_<counter:05>_.exr`` (relative prefix) or
  ``<prefix><_vNNN>.<frame>.exr`` (absolute) as float32 and reports no file in its output, as
  the pack does. With ``tonemap`` ``linear`` the values pass unchanged, outside 0-1 too.

The mock's images are solid colours: a file's first pixel is its colour. Real EXR files are read
and written with the ``OpenEXR`` package (the mock and test extras; never a runtime dependency).
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .nodes import MockImage, MockMask, NodeContext, NodeDef, NodeEnv, NodeResult, file_hash, image_arg, resolve_input_file, save_path
from .png import read_png_first_pixel

__all__ = ["CORE_PIXEL_NODES", "NODE_PACKS", "HQ_IMAGE_SAVE", "write_solid_exr", "read_exr_first_pixel"]

HQ_IMAGE_SAVE = "ComfyUI-HQ-Image-Save"
_TONEMAPS = ["linear", "sRGB", "Reinhard"]


def _openexr() -> Any:
    try:
        import OpenEXR  # the mock/test extras only
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("the mock's EXR nodes need the OpenEXR package: pip install 'comfy-cluster[mock]'") from None
    return OpenEXR


def write_solid_exr(path: str, width: int, height: int, channels: Dict[str, float], *, half: bool = False) -> None:
    """Write an EXR of one colour: ``channels`` maps names (``R``, ``G``, ``B``, ``A``) to values."""
    import numpy as np

    openexr = _openexr()
    dtype = np.float16 if half else np.float32
    pixels = {name: np.full((height, width), value, dtype=dtype) for name, value in channels.items()}
    header = {"compression": openexr.ZIP_COMPRESSION, "type": openexr.scanlineimage}
    with openexr.File(header, pixels) as exr:
        exr.write(path)


def read_exr_first_pixel(path: str) -> Tuple[Dict[str, float], Tuple[int, int]]:
    """``({channel: value of the first pixel}, (width, height))`` of an EXR file."""
    openexr = _openexr()
    with openexr.File(path, separate_channels=True) as exr:
        out: Dict[str, float] = {}
        size = (0, 0)
        for name, channel in exr.channels().items():
            pixels = channel.pixels
            out[str(name)] = float(pixels[0, 0])
            size = (int(pixels.shape[1]), int(pixels.shape[0]))
    return out, size


def _to_byte(value: float) -> int:
    return max(0, min(255, int(round(value * 255.0))))


def _srgb_to_linear(v: float) -> float:
    return v / 12.92 if v <= 0.0404482362771082 else ((v + 0.055) / 1.055) ** 2.4


def _linear_to_srgb(v: float) -> float:
    return v * 12.92 if v <= 0.0031308 else 1.055 * max(v, 0.0) ** (1 / 2.4) - 0.055


# --- masks (core) --------------------------------------------------------------------------


def _rgba_of(path: str) -> Tuple[int, int, int, int]:
    """The first pixel as RGBA, converted the way Pillow's ``convert("RGBA")`` does."""
    with open(path, "rb") as handle:
        first = read_png_first_pixel(handle.read())
    if first is None:
        return 0, 0, 0, 255
    values, mode = first
    if mode == "L":
        return values[0], values[0], values[0], 255
    if mode == "LA":
        return values[0], values[0], values[0], values[1]
    if mode == "RGB":
        return values[0], values[1], values[2], 255
    return values[0], values[1], values[2], values[3]


def _read_mask_file(env: NodeEnv, image: str) -> Tuple[str, Tuple[int, int, int, int]]:
    """LoadImageMask's reads (worker thread): the file's sha256 hex and first pixel as RGBA."""
    path = resolve_input_file(env, image)
    if path is None:
        raise FileNotFoundError(f"[Errno 2] No such file or directory: '{image}'")
    return file_hash(path), _rgba_of(path)


async def _load_image_mask(ctx: NodeContext, image: str, channel: str) -> NodeResult:
    digest, rgba = await ctx.run_blocking(_read_mask_file, ctx.env, str(image))
    ctx.record_input(str(image), digest)
    index = {"red": 0, "green": 1, "blue": 2, "alpha": 3}[str(channel)]
    value = rgba[index] / 255.0
    if index == 3:
        value = 1.0 - value  # ComfyUI: an alpha channel is a mask's inverse
    return (MockMask(64, 64, value),), None


def _load_mask_validate(env: NodeEnv, inputs: Dict[str, Any]) -> Any:
    image = inputs.get("image")
    if not isinstance(image, str) or resolve_input_file(env, image) is None:
        return f"Invalid image file: {image}"
    return True


def _mask_arg(mask: Any) -> MockMask:
    if not isinstance(mask, MockMask):
        raise AttributeError(f"'{type(mask).__name__}' object has no attribute 'reshape'")
    return mask


async def _invert_mask(ctx: NodeContext, mask: Any) -> NodeResult:
    m = _mask_arg(mask)
    return (MockMask(m.width, m.height, None if m.value is None else 1.0 - m.value),), None


async def _mask_to_image(ctx: NodeContext, mask: Any) -> NodeResult:
    mask = _mask_arg(mask)
    v = 0.0 if mask.value is None else float(mask.value)
    byte = _to_byte(v)
    return (MockImage(mask.width, mask.height, 1, (byte, byte, byte), (v, v, v)),), None


# --- EXR (ComfyUI-HQ-Image-Save) -------------------------------------------------------------


def _load_one(path: str, tonemap: str) -> Tuple[Tuple[float, float, float], float, Tuple[int, int]]:
    values, size = read_exr_first_pixel(path)
    grey = values.get("Y", values.get("R", 0.0))
    rgb = [values.get("R", grey), values.get("G", grey), values.get("B", grey)]
    if tonemap == "sRGB":
        rgb = [min(1.0, max(0.0, _linear_to_srgb(v))) for v in rgb]
    elif tonemap == "Reinhard":
        rgb = [min(1.0, max(0.0, _linear_to_srgb(max(v, 0.0) / (max(v, 0.0) + 1.0)))) for v in rgb]
    alpha = min(1.0, max(0.0, values["A"])) if "A" in values else 0.0  # not inverted, unlike LoadImage
    return (rgb[0], rgb[1], rgb[2]), alpha, size


async def _load_exr(
    ctx: NodeContext, filepath: str, tonemap: str, image_load_cap: int = 0, skip_first_images: int = 0, select_every_nth: int = 1
) -> NodeResult:
    p = os.path.normpath(str(filepath).replace('"', "").strip())
    digest, outputs = await ctx.run_blocking(_read_exrs, p, str(tonemap), image_load_cap, skip_first_images, select_every_nth)
    ctx.record_input(p, digest)
    return outputs, None


def _read_exrs(
    p: str, tonemap: str, image_load_cap: Any, skip_first_images: Any, select_every_nth: Any
) -> Tuple[str, Tuple[Any, ...]]:
    """LoadEXR's reads (worker thread): the sha256 hex of the first file, and the outputs."""
    if not os.path.exists(p):
        raise Exception("Path not found: " + p)
    if os.path.isfile(p) and os.path.splitext(p)[1].lower() == ".exr":
        files: Sequence[str] = [p]
    else:
        files = sorted(glob.glob(os.path.join(p, "*.exr"))) or sorted(glob.glob(os.path.join(p, "*.EXR")))
        if not files:
            raise Exception("No EXRs found in folder")
        files = files[int(skip_first_images) :: max(1, int(select_every_nth))]
        if int(image_load_cap) > 0:
            files = files[: int(image_load_cap)]
    digest = file_hash(files[0])
    rgb, alpha, (width, height) = _load_one(files[0], tonemap)
    image = MockImage(width, height, len(files), (_to_byte(rgb[0]), _to_byte(rgb[1]), _to_byte(rgb[2])), rgb)
    return digest, (image, MockMask(width, height, alpha), len(files))


async def _save_exr(
    ctx: NodeContext, images: Any, filename_prefix: str, tonemap: str, version: int, start_frame: int, frame_pad: int,
    save_workflow: str = "none",
) -> NodeResult:
    img = image_arg(images, "images")
    colour: List[float] = list(img.linear) if img.linear is not None else [c / 255.0 for c in img.rgb]
    if tonemap != "linear":
        colour = [_srgb_to_linear(v) for v in colour]
    if tonemap == "Reinhard":
        colour = [min(max(v, 0.0), 0.999999) for v in colour]
        colour = [-v / (v - 1.0) for v in colour]
    ver = "" if int(version) < 0 else f"_v{int(version):03}"
    await ctx.run_blocking(_write_exrs, ctx.env.output_dir, img, colour, str(filename_prefix), ver, start_frame, frame_pad)
    return (), {"images": []}  # the pack reports no file: a client must know the name


def _write_exrs(
    output_dir: str, img: MockImage, colour: List[float], prefix: str, ver: str, start_frame: Any, frame_pad: Any
) -> None:
    """SaveEXR's writes (worker thread): one file per image of the batch."""
    for i in range(img.batch):
        if os.path.isabs(prefix):
            basepath = prefix
            os.makedirs(os.path.dirname(basepath), exist_ok=True)
            path = basepath + ver + f".{str(int(start_frame) + i).zfill(int(frame_pad))}.exr"
        else:
            folder, filename, counter, _ = save_path(output_dir, prefix)
            path = os.path.join(folder, f"{filename}_{counter:05}_.exr")
        if os.path.exists(path):
            raise Exception("File exists already, stopping to avoid overwriting")
        write_solid_exr(path, img.width, img.height, {"R": colour[0], "G": colour[1], "B": colour[2]})


def _spec(required: Dict[str, Any], optional: Optional[Dict[str, Any]] = None) -> Any:
    spec = {"required": required}
    if optional:
        spec["optional"] = optional
    return lambda env: spec


CORE_PIXEL_NODES: Dict[str, NodeDef] = {
    node.name: node
    for node in [
        NodeDef(
            name="LoadImageMask",
            display_name="Load Image (as Mask)",
            category="mask",
            inputs=lambda env: {"required": {"image": [env.input_files(), {"image_upload": True}], "channel": [["alpha", "red", "green", "blue"]]}},
            outputs=("MASK",),
            run=_load_image_mask,
            validate=_load_mask_validate,
            validate_inputs=("image",),
            is_changed=lambda env, inputs: file_hash(resolve_input_file(env, str(inputs.get("image", ""))) or os.devnull),
        ),
        NodeDef(
            name="InvertMask",
            display_name="InvertMask",
            category="mask",
            python_module="comfy_extras.nodes_mask",
            inputs=_spec({"mask": ["MASK"]}),
            outputs=("MASK",),
            run=_invert_mask,
        ),
        NodeDef(
            name="MaskToImage",
            display_name="Convert Mask to Image",
            category="mask",
            python_module="comfy_extras.nodes_mask",
            inputs=_spec({"mask": ["MASK"]}),
            outputs=("IMAGE",),
            run=_mask_to_image,
        ),
    ]
}

_PACK_MODULE = "custom_nodes." + HQ_IMAGE_SAVE
NODE_PACKS: Dict[str, Dict[str, NodeDef]] = {
    HQ_IMAGE_SAVE: {
        node.name: node
        for node in [
            NodeDef(
                name="LoadEXR",
                display_name="Load EXR",
                category="HQ-Image-Save",
                python_module=_PACK_MODULE,
                inputs=_spec(
                    {"filepath": ["STRING", {"default": "path to directory or .exr file"}], "tonemap": [_TONEMAPS, {"default": "sRGB"}]},
                    {
                        "image_load_cap": ["INT", {"default": 0, "min": 0, "step": 1}],
                        "skip_first_images": ["INT", {"default": 0, "min": 0, "step": 1}],
                        "select_every_nth": ["INT", {"default": 1, "min": 1, "step": 1}],
                    },
                ),
                outputs=("IMAGE", "MASK", "INT"),
                output_names=("RGB", "alpha", "batch_size"),
                run=_load_exr,
            ),
            NodeDef(
                name="SaveEXR",
                display_name="Save EXR",
                category="HQ-Image-Save",
                python_module=_PACK_MODULE,
                inputs=_spec(
                    {
                        "images": ["IMAGE"],
                        "filename_prefix": ["STRING", {"default": "ComfyUI"}],
                        "tonemap": [_TONEMAPS, {"default": "sRGB"}],
                        "version": ["INT", {"default": 1, "min": -1, "max": 999}],
                        "start_frame": ["INT", {"default": 1001, "min": 0, "max": 99999999}],
                        "frame_pad": ["INT", {"default": 4, "min": 1, "max": 8}],
                        "save_workflow": [["ui", "api", "ui + api", "none"]],
                    }
                ),
                hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
                outputs=(),
                output_node=True,
                run=_save_exr,
            ),
        ]
    }
}
