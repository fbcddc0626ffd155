"""ComfyUI's model loader nodes, as ``/object_info`` of ComfyUI 0.3.64 shows them.

ComfyUI's web page expects them: its model library maps each model folder to a loader node
(``ImageOnlyCheckpointLoader``, ``LoraLoader``, ``VAELoader``, ...) and fails to build any
node of a graph when one of them is missing from ``/object_info``. Only checkpoints are
listed (the mock's model files); the other folders read as empty, as on a server without
such models. A loader that runs gives the mock's model objects.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .nodes import MockModel, NodeContext, NodeDef, NodeEnv, NodeResult

__all__ = ["LOADER_NODES"]


class _V3NodeDef(NodeDef):
    """A node written with ComfyUI's v3 node API: its ``/object_info`` entry has more fields."""

    def object_info(self, env: NodeEnv) -> Dict[str, Any]:
        info = super().object_info(env)
        info.update(output_tooltips=[None] * len(self.outputs), api_node=False, deprecated=False, experimental=False)
        return info


def _loader(name: str, display: str, category: str, module: str, outputs: Tuple[str, ...], required: Dict[str, Any], description: str = "") -> NodeDef:
    async def run(ctx: NodeContext, **inputs: Any) -> NodeResult:
        source = str(next(iter(inputs.values()), ""))
        return tuple(MockModel(kind, source) for kind in outputs), None

    def spec(env: NodeEnv) -> Dict[str, Dict[str, Any]]:
        return {"required": {k: ([list(env.models)] if v == "CHECKPOINTS" else v) for k, v in required.items()}}

    kind = _V3NodeDef if "COMBO" in str(required) else NodeDef  # the v3 API's combo spelling
    return kind(name=name, display_name=display, category=category, inputs=spec, outputs=outputs, run=run, description=description, python_module=module)


_LORA_DOC = (
    "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are denoised such as "
    "applying styles. Multiple LoRA nodes can be linked together."
)


def _strength(what: str, tooltip: bool) -> List[Any]:
    opts: Dict[str, Any] = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    if tooltip:
        opts["tooltip"] = f"How strongly to modify the {what}. This value can be negative."
    return ["FLOAT", opts]


LOADER_NODES: Dict[str, NodeDef] = {
    node.name: node
    for node in [
        _loader("ImageOnlyCheckpointLoader", "Image Only Checkpoint Loader (img2vid model)", "loaders/video_models",
                "comfy_extras.nodes_video_model", ("MODEL", "CLIP_VISION", "VAE"), {"ckpt_name": "CHECKPOINTS"}),
        _loader("LoraLoader", "Load LoRA", "loaders", "nodes", ("MODEL", "CLIP"), {
            "model": ["MODEL", {"tooltip": "The diffusion model the LoRA will be applied to."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model the LoRA will be applied to."}],
            "lora_name": [[], {"tooltip": "The name of the LoRA."}],
            "strength_model": _strength("diffusion model", True),
            "strength_clip": _strength("CLIP model", True),
        }, _LORA_DOC),
        _loader("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders", "nodes", ("MODEL",), {
            "model": ["MODEL"], "lora_name": [[]], "strength_model": _strength("", False),
        }, _LORA_DOC),
        _loader("VAELoader", "Load VAE", "loaders", "nodes", ("VAE",), {"vae_name": [["pixel_space"]]}),
        _loader("ControlNetLoader", "Load ControlNet Model", "loaders", "nodes", ("CONTROL_NET",), {"control_net_name": [[]]}),
        _loader("UNETLoader", "Load Diffusion Model", "advanced/loaders", "nodes", ("MODEL",), {
            "unet_name": [[]], "weight_dtype": [["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]],
        }),
        _loader("UpscaleModelLoader", "Load Upscale Model", "loaders", "comfy_extras.nodes_upscale_model", ("UPSCALE_MODEL",),
                {"model_name": ["COMBO", {"multiselect": False, "options": []}]}),
        _loader("StyleModelLoader", "Load Style Model", "loaders", "nodes", ("STYLE_MODEL",), {"style_model_name": [[]]}),
        _loader("GLIGENLoader", "GLIGENLoader", "loaders", "nodes", ("GLIGEN",), {"gligen_name": [[]]}),
    ]
}
