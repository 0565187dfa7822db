"""Diffusion pipelines (diffusers) for SD 1.5, SDXL and Flux.1: loading, samplers, LoRAs, runs.

A loaded checkpoint (`DiffusionModel`) is one text-to-image pipeline; img2img and ControlNet
img2img pipelines are derived from it with ``from_pipe`` (the same modules, no second copy).
Loading never reaches a hub: folders and configs come from the model store, and
``HF_HUB_OFFLINE`` is set before diffusers is imported (diffusers' single-file loader otherwise
retries online when a config is missing).

No file or network I/O here beyond loading weights from the paths given.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from assetbox.errors import Cancelled, InvalidInput, ModelError, OutOfMemory

os.environ.setdefault("HF_HUB_OFFLINE", "1")

Family = Literal[
    "sd15",
    "sdxl",
    "flux1",
    "flux2_klein",
    "flux2",
    "qwen_image",
    "qwen_image_edit",
    "qwen_image_edit_plus",
    "z_image",
]
# Families whose denoiser is a flow-matching transformer (bf16 on CUDA, flow samplers).
FLOW_FAMILIES: tuple[Family, ...] = (
    "flux1",
    "flux2_klein",
    "flux2",
    "qwen_image",
    "qwen_image_edit",
    "qwen_image_edit_plus",
    "z_image",
)
# Families with an img2img (strength) pipeline: what edit's `image` form and the tiled upscale run.
IMG2IMG_FAMILIES: tuple[Family, ...] = ("sd15", "sdxl", "flux1")
Task = Literal["text2img", "img2img"]
Quantization = Literal["none", "int8", "fp8"]

# Sampler names → diffusers scheduler class and settings (built from the checkpoint's own
# scheduler config, so betas and timestep spacing stay the model's).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
FLOW_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),  # Euler, in Flux's flow-matching form
}
DEFAULT_SAMPLER: dict[Family, str] = {family: "flow_euler" for family in FLOW_FAMILIES} | {
    "sd15": "euler_a",
    "sdxl": "euler",
}
# Output sizes must be multiples of this (VAE x8; the flow transformers also pack 2x2 latents).
SIZE_MULTIPLE: dict[Family, int] = {family: 16 for family in FLOW_FAMILIES} | {"sd15": 8, "sdxl": 8}
MAX_RESIDENT_ADAPTERS = 8

_PIPELINES: dict[tuple[Family, str, bool], str] = {
    ("sd15", "text2img", False): "StableDiffusionPipeline",
    ("sd15", "img2img", False): "StableDiffusionImg2ImgPipeline",
    ("sd15", "img2img", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("sdxl", "text2img", False): "StableDiffusionXLPipeline",
    ("sdxl", "img2img", False): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "img2img", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("flux1", "text2img", False): "FluxPipeline",
    ("flux1", "img2img", False): "FluxImg2ImgPipeline",
    ("flux1", "img2img", True): "FluxControlNetImg2ImgPipeline",
    ("flux2_klein", "text2img", False): "Flux2KleinPipeline",
    ("flux2", "text2img", False): "Flux2Pipeline",
    ("qwen_image", "text2img", False): "QwenImagePipeline",
    # The edit pipelines are their checkpoints' one pipeline (they take no text-only run).
    ("qwen_image_edit", "text2img", False): "QwenImageEditPipeline",
    ("qwen_image_edit_plus", "text2img", False): "QwenImageEditPlusPipeline",
    ("z_image", "text2img", False): "ZImagePipeline",
}


def samplers_for(family: Family) -> dict[str, tuple[str, dict[str, Any]]]:
    return FLOW_SAMPLERS if family in FLOW_FAMILIES else SAMPLERS


def device_and_dtype(family: Family) -> tuple[str, Any]:
    """fp16 (SD) or bf16 (the flow transformers) on CUDA; float32 on a CPU (half precision is
    slow or missing)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if family in FLOW_FAMILIES else torch.float16
    return "cpu", torch.float32


def check_quantization(quantization: Quantization, device: str) -> None:
    """Raises InvalidInput (field ``quantization``) where the device or packages cannot do it."""
    if quantization == "none":
        return
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        raise InvalidInput(
            f"`quantization` {quantization!r} needs torchao: pip install torchao",
            field="quantization",
        )
    if quantization == "fp8":
        import torch

        if not device.startswith("cuda") or torch.cuda.get_device_capability() < (8, 9):
            raise InvalidInput(
                "`quantization` 'fp8' needs a CUDA GPU with compute capability 8.9 or newer "
                f"(this worker runs on {device})",
                field="quantization",
            )


def _quantize(module: Any, quantization: Quantization) -> None:
    from torchao.quantization import (  # type: ignore[import-not-found]
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    config = Int8WeightOnlyConfig() if quantization == "int8" else Float8WeightOnlyConfig()
    quantize_(module, config)


@dataclass
class DiffusionModel:
    """A loaded checkpoint: its text-to-image pipeline and what derived pipelines need."""

    family: Family
    pipe: Any
    device: str
    offloaded: bool = False
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    # LoRA adapters loaded into the modules, least recently used first.
    adapters: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @property
    def nbytes(self) -> int:
        """Parameters and buffers of its modules (what the model cache counts)."""
        from assetbox.models.cache import estimate_bytes

        return estimate_bytes(self.pipe)

    def pipeline(self, task: Task, controlnet: Any = None) -> Any:
        """The pipeline for `task`, sharing this model's modules."""
        import diffusers

        name = _PIPELINES[(self.family, task, controlnet is not None)]
        if task == "text2img":
            return self.pipe
        cls = getattr(diffusers, name)
        extra = {"controlnet": controlnet} if controlnet is not None else {}
        derived = cls.from_pipe(self.pipe, **extra)
        # from_pipe does not carry the progress-bar setting: without this, every img2img run
        # would draw a tqdm bar on the service's (or the CLI's) stderr.
        derived.set_progress_bar_config(disable=True)
        return derived


def load_checkpoint(
    family: Family,
    *,
    folder: Path | None = None,
    single_file: Path | None = None,
    config: Path | None = None,
    budget_bytes: int | None = None,
    quantization: Quantization = "none",
) -> DiffusionModel:
    """Load a diffusers folder, or a single file with its config folder, offline.

    With CUDA, a model larger than `budget_bytes` runs with ``enable_model_cpu_offload``.

    Raises:
        ModelError: the weights do not load.
        InvalidInput: a quantization the device or packages cannot do.
    """
    import diffusers

    device, dtype = device_and_dtype(family)
    check_quantization(quantization, device)
    cls = getattr(diffusers, _PIPELINES[(family, "text2img", False)])
    try:
        if folder is not None:
            pipe = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
        else:
            assert single_file is not None and config is not None
            pipe = cls.from_single_file(
                str(single_file), config=str(config), torch_dtype=dtype, local_files_only=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the {family} checkpoint: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if quantization != "none":
        _quantize(pipe.transformer if family == "flux1" else pipe.unet, quantization)
    model = DiffusionModel(family, pipe, device, scheduler_config=dict(pipe.scheduler.config))
    if device == "cuda":
        if budget_bytes is not None and model.nbytes > budget_bytes:
            pipe.enable_model_cpu_offload()
            model.offloaded = True
        else:
            pipe.to(device)
    return model


def load_controlnet(family: Family, folder: Path) -> Any:
    """A diffusers ControlNet folder, on the device and in the dtype of `family`'s checkpoints."""
    import diffusers

    device, dtype = device_and_dtype(family)
    cls = diffusers.FluxControlNetModel if family == "flux1" else diffusers.ControlNetModel
    try:
        net = cls.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the {family} ControlNet: {exc}") from exc
    return net.to(device)


@dataclass(frozen=True)
class LoraUse:
    path: Path
    name: str  # adapter name: stands for these weights (store id and hash), [A-Za-z0-9_]
    weight: float


@dataclass
class RunParams:
    """One batch: `count` images of one prompt, seeds ``seeds[i]`` for image i."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float | None
    seeds: Sequence[int]
    sampler: str
    loras: Sequence[LoraUse] = ()
    image: np.ndarray | None = None  # img2img input (H x W x 3 uint8)
    strength: float = 0.6
    control_image: np.ndarray | None = None
    conditioning_scale: float = 1.0


def _scheduler(model: DiffusionModel, sampler: str) -> Any:
    import diffusers

    choices = samplers_for(model.family)
    if sampler not in choices:
        raise InvalidInput(
            f"`sampler` must be one of {', '.join(choices)} for {model.family}, not {sampler!r}",
            field="sampler",
        )
    name, extra = choices[sampler]
    return getattr(diffusers, name).from_config(model.scheduler_config, **extra)


def run(
    model: DiffusionModel,
    params: RunParams,
    *,
    controlnet: Any = None,
    should_stop: Callable[[], bool] = lambda: False,
    report_step: Callable[[int, int], None] = lambda step, steps: None,
) -> list[np.ndarray]:
    """Generate ``len(params.seeds)`` images (H x W x 3 uint8).

    Exactly the request's LoRAs are active, with its weights; adapters of earlier requests stay
    loaded but inactive (see `_use_loras`). Cancellation is checked after every denoising step.

    Raises:
        Cancelled: `should_stop()` turned true.
        OutOfMemory: the device ran out of memory.
        InvalidInput: an unknown sampler.
    """
    import torch
    from PIL import Image

    task: Task = "img2img" if params.image is not None else "text2img"
    pipe = model.pipeline(task, controlnet)
    pipe.scheduler = _scheduler(model, params.sampler)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in params.seeds]

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        total = getattr(pipeline, "num_timesteps", None) or params.steps
        report_step(step + 1, total)
        if should_stop():  # out at once: no further step, no decoding of a half-done image
            raise Cancelled(f"cancelled after denoising step {step + 1} of {total}")
        return tensors

    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "num_images_per_prompt": len(params.seeds),
        "num_inference_steps": params.steps,
        "generator": generators,
        "output_type": "np",
        "callback_on_step_end": on_step_end,
    }
    if params.guidance is not None:
        kwargs["guidance_scale"] = params.guidance
    if model.family == "flux1":
        kwargs["max_sequence_length"] = min(512, pipe.tokenizer_2.model_max_length)
    elif params.negative_prompt:
        kwargs["negative_prompt"] = params.negative_prompt
    if task == "text2img":
        kwargs |= {"width": params.width, "height": params.height}
    else:
        assert params.image is not None
        size = (params.width, params.height)
        init = Image.fromarray(params.image).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        kwargs |= {"image": init, "strength": params.strength}
        kwargs |= {"width": params.width, "height": params.height}
        if model.family != "flux1":
            kwargs.pop("width"), kwargs.pop("height")  # SD img2img takes the image's size
        if controlnet is not None:
            control = params.control_image if params.control_image is not None else params.image
            control_image = Image.fromarray(control).convert("RGB").resize(size)
            kwargs |= {
                "control_image": control_image,
                "controlnet_conditioning_scale": params.conditioning_scale,
            }
    try:
        _use_loras(model, pipe, params.loras)
        with torch.inference_mode():
            images = pipe(**kwargs).images
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"the device ran out of memory: {exc}") from exc
    return [np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in images]


def _use_loras(model: DiffusionModel, pipe: Any, loras: Sequence[LoraUse]) -> None:
    """Make exactly `loras` active with their weights (none: adapters disabled).

    Adapters stay loaded between runs (loading one costs far more than a denoising step; see
    bench/diffusion_cache.py), at most `MAX_RESIDENT_ADAPTERS`, least recently used deleted
    first. A disabled adapter leaves the output bit-identical to a model that never had one.
    """
    if not loras:
        if model.adapters:
            pipe.disable_lora()
        return
    wanted = [lora.name for lora in loras]
    for lora in loras:
        if lora.name in model.adapters:
            model.adapters.move_to_end(lora.name)
            continue
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=lora.name)
            loaded = {n for names in pipe.get_list_adapters().values() for n in names}
            if lora.name not in loaded:  # diffusers skips keys it does not know, silently
                raise ValueError(f"no layer of the model matched the LoRA {lora.path.name}")
        except Exception as exc:  # whatever it was, no half-applied adapter may stay active
            loaded = {n for names in pipe.get_list_adapters().values() for n in names}
            if lora.name in loaded:
                pipe.delete_adapters([lora.name])
            if model.adapters:
                pipe.disable_lora()
            raise ModelError(f"cannot apply the LoRA {lora.path.name}: {exc}") from exc
        model.adapters[lora.name] = None
    stale = [name for name in model.adapters if name not in wanted]
    excess = len(model.adapters) - MAX_RESIDENT_ADAPTERS
    if excess > 0:
        drop = stale[:excess]
        pipe.delete_adapters(drop)
        for name in drop:
            del model.adapters[name]
    pipe.set_adapters(wanted, adapter_weights=[lora.weight for lora in loras])
    pipe.enable_lora()
