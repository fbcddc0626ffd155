"""Ready-made API-format workflows for the mock server's node types.

Each function returns a fresh ``{node_id: {"class_type", "inputs"}}`` dict, the format
``POST /prompt`` takes, so tests can say *what* should run instead of spelling out nodes.
Give different ``seed`` values to get jobs that are not served from the cache.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = [
    "sleep_workflow",
    "fail_workflow",
    "image_workflow",
    "load_image_workflow",
    "txt2img_workflow",
]

Workflow = Dict[str, Dict[str, Any]]


def _empty_image(color: int = 0, width: int = 64, height: int = 64, batch_size: int = 1) -> Dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch_size, "color": color}}


def _save(source: str, prefix: str) -> Dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def sleep_workflow(seconds: float = 0.1, steps: int = 5, seed: int = 0, prefix: str = "mock", color: int = 0) -> Workflow:
    """EmptyImage -> TestSleep(seconds, steps, seed) -> SaveImage (node ids 1, 2, 3)."""
    return {
        "1": _empty_image(color),
        "2": {"class_type": "TestSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": steps, "seed": seed}},
        "3": _save("2", prefix),
    }


def fail_workflow(message: str = "boom", color: int = 0, prefix: str = "mock") -> Workflow:
    """EmptyImage -> TestFail(message) -> SaveImage: fails at run time with execution_error."""
    return {
        "1": _empty_image(color),
        "2": {"class_type": "TestFail", "inputs": {"image": ["1", 0], "message": message}},
        "3": _save("2", prefix),
    }


def image_workflow(color: int = 0, width: int = 64, height: int = 64, batch_size: int = 1, prefix: str = "mock") -> Workflow:
    """EmptyImage -> ImageInvert -> SaveImage: runs instantly, writes ``batch_size`` PNGs."""
    return {
        "1": _empty_image(color, width, height, batch_size),
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": _save("2", prefix),
    }


def load_image_workflow(image: str, prefix: str = "loaded") -> Workflow:
    """LoadImage(image) -> ImageBlur -> SaveImage; ``image`` must be uploaded first."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": _save("2", prefix),
    }


def txt2img_workflow(
    ckpt_name: str = "v1-5-pruned-emaonly.safetensors",
    steps: int = 4,
    seed: int = 0,
    text: str = "a photo of a cat",
    width: int = 64,
    height: int = 64,
    prefix: str = "txt2img",
) -> Workflow:
    """ComfyUI's default text-to-image graph (ids as in its default workflow)."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 8.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": _save("8", prefix),
    }
