"""The node types a mock ComfyUI server offers, with ComfyUI's ``/object_info`` shapes.

Values flowing between nodes are small stand-ins (a solid-colour image is its size, batch and
colour) so that a workflow runs in microseconds; only the time a node is *told* to take
(TestSleep's ``seconds``, KSampler's ``steps``) is spent, divided by the server's speed.
SaveImage and PreviewImage write real PNG files so that ``/view`` serves real images.

Every node type has a :class:`NodeDef`: its inputs as ComfyUI's ``INPUT_TYPES`` would list
them (built per server, since model lists and input files differ), its outputs, and an async
``run`` that gets a :class:`NodeContext` from the engine. ``run`` is awaited on the server's
event loop; whatever in it blocks (file I/O, image encoding or decoding, heavy computation)
goes through :meth:`NodeContext.run_blocking` to the server's worker thread, as ComfyUI runs
its nodes on a worker thread, so that the server keeps answering while a node works.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import string
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from .png import png_bytes, read_png_first_pixel, read_png_size, write_png

__all__ = [
    "MAX_RESOLUTION",
    "KSAMPLER_STEP_SECONDS",
    "InterruptProcessing",
    "NodeEnv",
    "NodeContext",
    "NodeDef",
    "NodeResult",
    "MockImage",
    "MockMask",
    "MockLatent",
    "MockModel",
    "MockConditioning",
    "BUILTIN_NODES",
    "builtin_node_names",
    "resolve_input_file",
    "file_hash",
    "image_arg",
    "save_path",
    "BINARY_PREVIEW_IMAGE",
    "PREVIEW_FORMAT_PNG",
    "preview_frame",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

MAX_RESOLUTION = 16384
#: Nominal seconds per KSampler step at speed 1 (a mock "GPU" doing 100 it/s).
KSAMPLER_STEP_SECONDS = 0.01
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "deis", "res_multistep",
    "ddim", "uni_pc", "uni_pc_bh2",
]
_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal"]


class InterruptProcessing(Exception):
    """Raised inside a node when the running prompt is interrupted (ComfyUI's
    ``InterruptProcessingException``); the engine turns it into ``execution_interrupted``."""


# --- values flowing between nodes -------------------------------------------------------


@dataclass(frozen=True)
class MockImage:
    """A batch of solid-colour RGB images: ``rgb`` as 8-bit, and ``linear`` the float colour
    when it came from a float file (an EXR: values outside 0-1 kept), else None."""

    width: int
    height: int
    batch: int
    rgb: Tuple[int, int, int]
    linear: Optional[Tuple[float, float, float]] = None

    def __repr__(self) -> str:
        # ComfyUI reports a failing node's inputs with repr(); keep it short and tensor-like.
        return f"image(batch={self.batch}, height={self.height}, width={self.width}, rgb={self.rgb})"


@dataclass(frozen=True)
class MockMask:
    """A solid mask; ``value`` is its value (ComfyUI's polarity: LoadImage's is 1 - alpha),
    None where the mock does not model it."""

    width: int
    height: int
    value: Optional[float] = None


@dataclass(frozen=True)
class MockLatent:
    width: int
    height: int
    batch: int
    seed: int = 0


@dataclass(frozen=True)
class MockModel:
    """MODEL, CLIP or VAE: just the checkpoint it came from."""

    kind: str
    ckpt_name: str


@dataclass(frozen=True)
class MockConditioning:
    text: str


# --- what a node sees --------------------------------------------------------------------


@dataclass
class ModelMemory:
    """The checkpoint a server has loaded (in VRAM), as ComfyUI keeps the last one it loaded.

    A CheckpointLoaderSimple that needs another checkpoint spends ``load_seconds`` (at speed
    1, like every node) loading it; one loaded already costs nothing. A restart unloads it.
    """

    load_seconds: float = 0.0
    loaded: Optional[str] = None
    #: VRAM a loaded checkpoint takes (what /system_stats shows as used).
    model_bytes: int = 2 * 1024**3
    #: Loads done so far (a figure for tests and benchmarks).
    loads: int = 0


@dataclass
class NodeEnv:
    """Per-server facts that input lists and validation depend on."""

    input_dir: str
    output_dir: str
    temp_dir: str
    models: Sequence[str]
    memory: ModelMemory = field(default_factory=ModelMemory)

    def input_files(self) -> List[str]:
        """Image files at the top of the input folder, sorted, like ComfyUI's LoadImage list."""
        try:
            names = os.listdir(self.input_dir)
        except OSError:
            return []
        return sorted(
            n for n in names if os.path.isfile(os.path.join(self.input_dir, n)) and n.lower().endswith(_IMAGE_EXTENSIONS)
        )

    def directory(self, kind: str) -> Optional[str]:
        """The folder for an upload/view ``type`` (input, output, temp) or None."""
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(kind)


class NodeContext:
    """What the engine gives a running node; subclassed by the engine."""

    node_id: str = ""
    prompt_id: str = ""
    prompt: Dict[str, Any] = {}
    extra_data: Dict[str, Any] = {}
    env: NodeEnv

    async def sleep(self, seconds: float) -> None:
        """Spend ``seconds`` of nominal time (divided by the server speed); raises
        :class:`InterruptProcessing` as soon as the prompt is interrupted."""
        raise NotImplementedError

    async def run_blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the server's worker thread; its result or exception.

        For a node's blocking work (file I/O, image encoding or decoding): the event loop
        answers HTTP and the websocket meanwhile. ``fn`` must not touch the context (it runs
        on another thread): pass it the values it needs, and send events after it returns."""
        raise NotImplementedError

    def progress(self, value: int, maximum: int) -> None:
        """Report progress (sends ``progress_state`` and ``progress``); raises
        :class:`InterruptProcessing` if the prompt was interrupted."""
        raise NotImplementedError

    def check_interrupted(self) -> None:
        """Raise :class:`InterruptProcessing` if the prompt was interrupted."""
        raise NotImplementedError

    def record_input(self, name: str, digest: str) -> None:
        """Note that this node read input file ``name`` with these bytes (sha256 hex), for tests."""

    def send_binary(self, frame: bytes) -> None:
        """Send a binary websocket frame to the prompt's client (dropped without one)."""
        raise NotImplementedError


# ComfyUI's BinaryEventTypes.PREVIEW_IMAGE and its PNG format code.
BINARY_PREVIEW_IMAGE = 1
PREVIEW_FORMAT_PNG = 2
#: Side of the latent preview a sampling node sends each step (real previews are small too).
PREVIEW_SIZE = 8


def preview_frame(image_bytes: bytes, image_format: int = PREVIEW_FORMAT_PNG) -> bytes:
    """A binary preview frame as ComfyUI sends it: 4-byte type 1, 4-byte format, then the image."""
    return struct.pack(">II", BINARY_PREVIEW_IMAGE, image_format) + image_bytes


#: A node's return: its outputs (one per RETURN_TYPE) and its UI dict (output nodes) or None.
NodeResult = Tuple[Tuple[Any, ...], Optional[Dict[str, Any]]]
RunFn = Callable[..., Awaitable[NodeResult]]
InputsFn = Callable[[NodeEnv], Dict[str, Dict[str, Any]]]


@dataclass
class NodeDef:
    """One node type: what ``/object_info`` shows, how to validate it and how to run it."""

    name: str
    display_name: str
    category: str
    inputs: InputsFn
    outputs: Tuple[str, ...]
    run: RunFn
    output_names: Optional[Tuple[str, ...]] = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    #: ComfyUI's VALIDATE_INPUTS: gets the env and the named inputs, returns True or a reason.
    validate: Optional[Callable[[NodeEnv, Dict[str, Any]], Union[bool, str]]] = None
    validate_inputs: Tuple[str, ...] = ()
    #: ComfyUI's IS_CHANGED: part of the cache key (e.g. the hash of a loaded file).
    is_changed: Optional[Callable[[NodeEnv, Dict[str, Any]], Any]] = None
    hidden: Dict[str, str] = field(default_factory=dict)

    def input_types(self, env: NodeEnv) -> Dict[str, Dict[str, Any]]:
        """``{"required": {...}, "optional": {...}, "hidden": {...}}`` for this server."""
        spec = {k: dict(v) for k, v in self.inputs(env).items()}
        if self.hidden:
            spec["hidden"] = dict(self.hidden)
        return spec

    def object_info(self, env: NodeEnv) -> Dict[str, Any]:
        """The entry of this node type in ``GET /object_info``."""
        spec = self.input_types(env)
        names = list(self.output_names or self.outputs)
        return {
            "input": spec,
            "input_order": {section: list(values) for section, values in spec.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": names,
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }


# --- helpers -----------------------------------------------------------------------------


def _int(default: int, minimum: int, maximum: int, step: Optional[int] = 1, **extra: Any) -> List[Any]:
    opts: Dict[str, Any] = {"default": default, "min": minimum, "max": maximum}
    if step is not None:
        opts["step"] = step
    opts.update(extra)
    return ["INT", opts]


def _float(default: float, minimum: float, maximum: float, step: float, **extra: Any) -> List[Any]:
    opts: Dict[str, Any] = {"default": default, "min": minimum, "max": maximum, "step": step}
    opts.update(extra)
    return ["FLOAT", opts]


def image_arg(value: Any, name: str = "image") -> MockImage:
    """``value`` as an IMAGE input, failing as ComfyUI does at run time when it is not one."""
    if not isinstance(value, MockImage):
        # A literal where a link was expected passes ComfyUI's validation and fails at run time.
        raise AttributeError(f"'{type(value).__name__}' object has no attribute 'shape' ({name})")
    return value


_ANNOTATIONS = {" [input]": "input", " [output]": "output", " [temp]": "temp"}


def resolve_input_file(env: NodeEnv, name: str) -> Optional[str]:
    """The path of a LoadImage ``image`` value (``file.png``, ``sub/file.png`` or annotated
    ``file.png [output]``), or None when it is missing or escapes its folder."""
    kind = "input"
    for suffix, folder in _ANNOTATIONS.items():
        if name.endswith(suffix):
            name, kind = name[: -len(suffix)], folder
            break
    base = env.directory(kind)
    if not name or base is None:
        return None
    base = os.path.abspath(base)
    path = os.path.abspath(os.path.join(base, name))
    if os.path.commonpath((base, path)) != base or not os.path.isfile(path):
        return None
    return path


def file_hash(path: str) -> str:
    """The sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def save_path(output_dir: str, filename_prefix: str) -> Tuple[str, str, int, str]:
    """ComfyUI's ``get_save_image_path``: folder, base name, next counter and subfolder."""
    normalized = os.path.normpath(filename_prefix)
    subfolder = os.path.dirname(normalized)
    filename = os.path.basename(normalized)
    base = os.path.abspath(output_dir)
    folder = os.path.abspath(os.path.join(base, subfolder))
    if os.path.commonpath((base, folder)) != base:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {base}"
        )
    counter = 0
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    for existing in names:
        # Files are "<prefix>_<counter:05>_.png"; the next counter is one past the largest.
        if not existing.startswith(filename + "_"):
            continue
        rest = existing[len(filename) + 1 :].split("_")[0]
        if rest.isdigit():
            counter = max(counter, int(rest))
    return folder, filename, counter + 1, subfolder.replace(os.sep, "/") if subfolder else ""


def _save_images(
    prompt: Dict[str, Any], extra_data: Dict[str, Any], images: MockImage, directory: str, prefix: str, kind: str
) -> Dict[str, Any]:
    """Write the PNGs of SaveImage and PreviewImage (worker thread); their UI dict."""
    folder, filename, counter, subfolder = save_path(directory, prefix)
    text = {"prompt": json.dumps(prompt)}
    if "extra_pnginfo" in extra_data and isinstance(extra_data["extra_pnginfo"], dict):
        for key, value in extra_data["extra_pnginfo"].items():
            text[str(key)] = json.dumps(value)
    results = []
    for batch_number in range(images.batch):
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        size = write_png(os.path.join(folder, name), images.width, images.height, images.rgb, text)
        logger.debug("wrote %s (%d bytes) to %s", name, size, folder)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


# --- node implementations ----------------------------------------------------------------


async def _empty_image(ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0) -> NodeResult:
    rgb = ((int(color) >> 16) & 0xFF, (int(color) >> 8) & 0xFF, int(color) & 0xFF)
    return (MockImage(int(width), int(height), int(batch_size), rgb),), None


async def _image_invert(ctx: NodeContext, image: Any) -> NodeResult:
    img = image_arg(image)
    r, g, b = img.rgb
    linear = tuple(1.0 - v for v in img.linear) if img.linear is not None else None
    return (MockImage(img.width, img.height, img.batch, (255 - r, 255 - g, 255 - b), linear),), None  # type: ignore[arg-type]


async def _image_blur(ctx: NodeContext, image: Any, blur_radius: int = 1, sigma: float = 1.0) -> NodeResult:
    return (image_arg(image),), None  # blurring a solid colour changes nothing


async def _image_scale(
    ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int, crop: str = "disabled"
) -> NodeResult:
    img = image_arg(image)
    width, height = int(width), int(height)
    if width == 0 and height == 0:
        width, height = img.width, img.height
    elif width == 0:
        width = max(1, round(img.width * height / img.height))
    elif height == 0:
        height = max(1, round(img.height * width / img.width))
    return (MockImage(width, height, img.batch, img.rgb),), None


def _read_image_file(
    env: NodeEnv, image: str
) -> Tuple[Optional[Tuple[int, int]], Optional[Tuple[Tuple[int, ...], str]], str]:
    """LoadImage's reads (worker thread): the file's size, first pixel and sha256 hex."""
    path = resolve_input_file(env, image)
    if path is None:
        raise FileNotFoundError(f"[Errno 2] No such file or directory: '{image}'")
    with open(path, "rb") as handle:
        size = read_png_size(handle)
        handle.seek(0)
        first = read_png_first_pixel(handle.read())
    return size, first, file_hash(path)


async def _load_image(ctx: NodeContext, image: str) -> NodeResult:
    size, first, hexdigest = await ctx.run_blocking(_read_image_file, ctx.env, str(image))
    width, height = size if size else (64, 64)
    ctx.record_input(str(image), hexdigest)
    digest = bytes.fromhex(hexdigest)
    # ComfyUI's LoadImage: mask = 1 - alpha; an image without alpha gives an empty mask.
    mask = 1.0 - first[0][-1] / 255.0 if first is not None and first[1] in ("LA", "RGBA") else 0.0
    return (MockImage(width, height, 1, (digest[0], digest[1], digest[2])), MockMask(width, height, mask)), None


def _load_image_validate(env: NodeEnv, inputs: Dict[str, Any]) -> Union[bool, str]:
    image = inputs.get("image")
    if not isinstance(image, str) or resolve_input_file(env, image) is None:
        return f"Invalid image file: {image}"
    return True


def _load_image_changed(env: NodeEnv, inputs: Dict[str, Any]) -> Any:
    path = resolve_input_file(env, str(inputs.get("image", "")))
    return file_hash(path) if path else None


async def _save_image(ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI") -> NodeResult:
    img = image_arg(images, "images")
    ui = await ctx.run_blocking(_save_images, ctx.prompt, ctx.extra_data, img, ctx.env.output_dir, str(filename_prefix), "output")
    return (), ui


async def _preview_image(ctx: NodeContext, images: Any) -> NodeResult:
    img = image_arg(images, "images")
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    ui = await ctx.run_blocking(_save_images, ctx.prompt, ctx.extra_data, img, ctx.env.temp_dir, "ComfyUI_temp_" + suffix, "temp")
    return (), ui


async def _checkpoint_loader(ctx: NodeContext, ckpt_name: str) -> NodeResult:
    if ckpt_name not in ctx.env.models:
        raise FileNotFoundError(f"Model in folder 'checkpoints' with filename '{ckpt_name}' not found.")
    memory = ctx.env.memory
    if memory.loaded != ckpt_name:
        memory.loaded = None  # the old one leaves VRAM first; an interrupted load leaves none
        if memory.load_seconds > 0:
            await ctx.sleep(memory.load_seconds)
        memory.loaded = ckpt_name
        memory.loads += 1
    return (MockModel("MODEL", ckpt_name), MockModel("CLIP", ckpt_name), MockModel("VAE", ckpt_name)), None


async def _clip_text_encode(ctx: NodeContext, text: str, clip: Any) -> NodeResult:
    if not isinstance(clip, MockModel):
        raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint does not contain a valid clip or text encoder model.")
    return (MockConditioning(str(text)),), None


async def _empty_latent(ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> NodeResult:
    return (MockLatent(int(width), int(height), int(batch_size)),), None


async def _ksampler(
    ctx: NodeContext,
    model: Any,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent_image: Any,
    denoise: float = 1.0,
) -> NodeResult:
    if not isinstance(latent_image, MockLatent):
        raise TypeError("'NoneType' object is not subscriptable")
    steps = int(steps)
    for step in range(1, steps + 1):
        await ctx.sleep(KSAMPLER_STEP_SECONDS)
        ctx.progress(step, steps)
        # A latent preview after each step, as a server started with --preview-method sends.
        ctx.send_binary(_latent_preview((int(seed) + step) & 0xFF))
    return (MockLatent(latent_image.width, latent_image.height, latent_image.batch, int(seed)),), None


@functools.lru_cache(maxsize=256)
def _latent_preview(shade: int) -> bytes:
    """The preview frame of a sampling step, grey ``shade``. Cached, and so encoded at most once
    per shade: a handoff to the worker thread on every step would cost more than this tiny
    encode, and the step's timing is the simulated sampling time."""
    return preview_frame(png_bytes(PREVIEW_SIZE, PREVIEW_SIZE, (shade, shade, shade)))


async def _vae_decode(ctx: NodeContext, samples: Any, vae: Any) -> NodeResult:
    if not isinstance(samples, MockLatent):
        raise TypeError("'NoneType' object is not subscriptable")
    digest = hashlib.sha256(str(samples.seed).encode()).digest()
    return (MockImage(samples.width, samples.height, samples.batch, (digest[0], digest[1], digest[2])),), None


async def _test_sleep(ctx: NodeContext, image: Any, seconds: float, steps: int, seed: int = 0) -> NodeResult:
    steps = max(1, int(steps))
    slice_seconds = float(seconds) / steps
    for step in range(1, steps + 1):
        await ctx.sleep(slice_seconds)
        ctx.progress(step, steps)
    return (image,), None


async def _save_image_websocket(ctx: NodeContext, images: Any) -> NodeResult:
    """ComfyUI's SaveImageWebsocket: each image goes to the client as a binary PNG frame,
    after a ``progress`` update (its progress bar carries the image); nothing is written and
    no ``executed`` event is sent (its UI dict is empty)."""
    img = image_arg(images, "images")
    data = await ctx.run_blocking(png_bytes, img.width, img.height, img.rgb)  # a large image takes a while
    for step in range(img.batch):
        ctx.progress(step, img.batch)
        ctx.send_binary(preview_frame(data))
    return (), None


def _folder_state(env: NodeEnv, directory: str) -> str:
    folder = _sequence_dir(env, directory)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return ""
    return ",".join(f"{n}:{os.path.getmtime(os.path.join(folder, n))}" for n in names)


def _sequence_dir(env: NodeEnv, directory: str) -> str:
    """A folder loader's ``directory``: absolute, or relative to the ComfyUI folder (the
    server's working directory, the parent of its input folder)."""
    path = directory if os.path.isabs(directory) else os.path.join(os.path.dirname(env.input_dir), directory)
    return os.path.normpath(path)


async def _load_images_path(
    ctx: NodeContext, directory: str, image_load_cap: int = 0, skip_first_images: int = 0, select_every_nth: int = 1
) -> NodeResult:
    """VideoHelperSuite's VHS_LoadImagesPath: every image of a folder, in name order, as one
    batch. The mock's image is the size of the first file and a colour from the hash of all
    the files' bytes (so a test can tell which files were loaded)."""
    outputs = await ctx.run_blocking(_read_images_path, ctx.env, directory, image_load_cap, skip_first_images, select_every_nth)
    return outputs, None


def _read_images_path(
    env: NodeEnv, directory: str, image_load_cap: int, skip_first_images: int, select_every_nth: int
) -> Tuple[Any, ...]:
    """VHS_LoadImagesPath's reads (worker thread); its outputs."""
    folder = _sequence_dir(env, str(directory))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Directory '{directory}' cannot be found.")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_IMAGE_EXTENSIONS))
    names = names[int(skip_first_images) :: max(1, int(select_every_nth))]
    if int(image_load_cap) > 0:
        names = names[: int(image_load_cap)]
    if not names:
        raise FileNotFoundError(f"No files in directory '{directory}'.")
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(folder, name), "rb") as handle:
            digest.update(handle.read())
    with open(os.path.join(folder, names[0]), "rb") as handle:
        size = read_png_size(handle)
    width, height = size if size else (64, 64)
    d = digest.digest()
    return MockImage(width, height, len(names), (d[0], d[1], d[2])), MockMask(width, height), len(names)


async def _test_fail(ctx: NodeContext, image: Any, message: str) -> NodeResult:
    raise RuntimeError(message)


# --- input specs (as ComfyUI 0.3.64 lists them) ------------------------------------------

_IMAGE_TOOLTIP = "The images to save."
_PREFIX_TOOLTIP = (
    "The prefix for the file to save. This may include formatting information such as "
    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."
)
_PNG_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _spec(required: Dict[str, List[Any]]) -> InputsFn:
    return lambda env: {"required": required}


BUILTIN_NODES: Dict[str, NodeDef] = {
    node.name: node
    for node in [
        NodeDef(
            name="EmptyImage",
            display_name="EmptyImage",
            category="image",
            inputs=_spec(
                {
                    "width": _int(512, 1, MAX_RESOLUTION),
                    "height": _int(512, 1, MAX_RESOLUTION),
                    "batch_size": _int(1, 1, 4096, step=None),
                    "color": _int(0, 0, 0xFFFFFF, display="color"),
                }
            ),
            outputs=("IMAGE",),
            run=_empty_image,
        ),
        NodeDef(
            name="ImageInvert",
            display_name="Invert Image",
            category="image",
            inputs=_spec({"image": ["IMAGE"]}),
            outputs=("IMAGE",),
            run=_image_invert,
        ),
        NodeDef(
            name="ImageBlur",
            display_name="Image Blur",
            category="image/postprocessing",
            python_module="comfy_extras.nodes_post_processing",
            inputs=_spec(
                {
                    "image": ["IMAGE"],
                    "blur_radius": _int(1, 1, 31),
                    "sigma": _float(1.0, 0.1, 10.0, 0.1),
                }
            ),
            outputs=("IMAGE",),
            run=_image_blur,
        ),
        NodeDef(
            name="ImageScale",
            display_name="Upscale Image",
            category="image/upscaling",
            inputs=_spec(
                {
                    "image": ["IMAGE"],
                    "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                    "width": _int(512, 0, MAX_RESOLUTION),
                    "height": _int(512, 0, MAX_RESOLUTION),
                    "crop": [["disabled", "center"]],
                }
            ),
            outputs=("IMAGE",),
            run=_image_scale,
        ),
        NodeDef(
            name="LoadImage",
            display_name="Load Image",
            category="image",
            inputs=lambda env: {"required": {"image": [env.input_files(), {"image_upload": True}]}},
            outputs=("IMAGE", "MASK"),
            run=_load_image,
            validate=_load_image_validate,
            validate_inputs=("image",),
            is_changed=_load_image_changed,
        ),
        NodeDef(
            name="SaveImage",
            display_name="Save Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory.",
            inputs=_spec(
                {
                    "images": ["IMAGE", {"tooltip": _IMAGE_TOOLTIP}],
                    "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": _PREFIX_TOOLTIP}],
                }
            ),
            hidden=_PNG_HIDDEN,
            outputs=(),
            output_node=True,
            run=_save_image,
        ),
        NodeDef(
            name="PreviewImage",
            display_name="Preview Image",
            category="image",
            description="Saves the input images to your ComfyUI output directory.",
            inputs=_spec({"images": ["IMAGE"]}),
            hidden=_PNG_HIDDEN,
            outputs=(),
            output_node=True,
            run=_preview_image,
        ),
        NodeDef(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
            inputs=lambda env: {
                "required": {"ckpt_name": [list(env.models), {"tooltip": "The name of the checkpoint (model) to load."}]}
            },
            outputs=("MODEL", "CLIP", "VAE"),
            run=_checkpoint_loader,
        ),
        NodeDef(
            name="CLIPTextEncode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
            description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images.",
            inputs=_spec(
                {
                    "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
                    "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
                }
            ),
            outputs=("CONDITIONING",),
            run=_clip_text_encode,
        ),
        NodeDef(
            name="EmptyLatentImage",
            display_name="Empty Latent Image",
            category="latent",
            description="Create a new batch of empty latent images to be denoised via sampling.",
            inputs=_spec(
                {
                    "width": _int(512, 16, MAX_RESOLUTION, 8),
                    "height": _int(512, 16, MAX_RESOLUTION, 8),
                    "batch_size": _int(1, 1, 4096, step=None),
                }
            ),
            outputs=("LATENT",),
            run=_empty_latent,
        ),
        NodeDef(
            name="KSampler",
            display_name="KSampler",
            category="sampling",
            description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
            inputs=_spec(
                {
                    "model": ["MODEL"],
                    "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, step=None, control_after_generate=True),
                    "steps": _int(20, 1, 10000, step=None),
                    "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
                    "sampler_name": [list(_SAMPLERS)],
                    "scheduler": [list(_SCHEDULERS)],
                    "positive": ["CONDITIONING"],
                    "negative": ["CONDITIONING"],
                    "latent_image": ["LATENT"],
                    "denoise": _float(1.0, 0.0, 1.0, 0.01),
                }
            ),
            outputs=("LATENT",),
            run=_ksampler,
        ),
        NodeDef(
            name="VAEDecode",
            display_name="VAE Decode",
            category="latent",
            description="Decodes latent images back into pixel space images.",
            inputs=_spec({"samples": ["LATENT"], "vae": ["VAE"]}),
            outputs=("IMAGE",),
            run=_vae_decode,
        ),
        NodeDef(
            name="SaveImageWebsocket",
            display_name="SaveImageWebsocket",
            category="api node/image/websocket",
            python_module="custom_nodes.websocket_image_save",
            inputs=_spec({"images": ["IMAGE"]}),
            outputs=(),
            output_node=True,
            run=_save_image_websocket,
            # IS_CHANGED returns the time in ComfyUI: never served from the cache.
            is_changed=lambda env, inputs: uuid.uuid4().hex,
        ),
        NodeDef(
            name="VHS_LoadImagesPath",
            display_name="Load Images (Path) 🎥🅥🅗🅢",
            category="Video Helper Suite 🎥🅥🅗🅢",
            python_module="custom_nodes.ComfyUI-VideoHelperSuite",
            inputs=lambda env: {
                "required": {"directory": ["STRING", {"placeholder": "X://path/to/images"}]},
                "optional": {
                    "image_load_cap": _int(0, 0, 16384),
                    "skip_first_images": _int(0, 0, 16384),
                    "select_every_nth": _int(1, 1, 16384),
                },
            },
            outputs=("IMAGE", "MASK", "INT"),
            output_names=("IMAGE", "MASK", "frame_count"),
            run=_load_images_path,
            # Its IS_CHANGED hashes the folder: a changed folder is loaded again.
            is_changed=lambda env, inputs: _folder_state(env, str(inputs.get("directory", ""))),
        ),
        NodeDef(
            name="TestSleep",
            display_name="TestSleep",
            category="testing",
            python_module="custom_nodes.lab_nodes",
            inputs=_spec(
                {
                    "image": ["IMAGE"],
                    "seconds": _float(1.0, 0.0, 600.0, 0.01),
                    "steps": _int(10, 1, 1000, step=None),
                    "seed": _int(0, 0, 2147483648, step=None),
                }
            ),
            outputs=("IMAGE",),
            run=_test_sleep,
        ),
        NodeDef(
            name="TestFail",
            display_name="TestFail",
            category="testing",
            python_module="custom_nodes.lab_nodes",
            inputs=_spec({"image": ["IMAGE"], "message": ["STRING", {"default": "boom"}]}),
            outputs=("IMAGE",),
            run=_test_fail,
        ),
    ]
}


def builtin_node_names() -> List[str]:
    """Names of every node type the mock can offer."""
    return list(BUILTIN_NODES)
