"""Diffusion pipelines (diffusers) for SD 1.5, SDXL, Flux.1, FLUX.2, Qwen-Image(-Edit, -Edit-Plus)
and Z-Image: loading, samplers, LoRAs, runs (FLUX.2's references: pipelines/flux2.py).

A loaded checkpoint (`DiffusionModel`) is one text-to-image pipeline; img2img and ControlNet
img2img pipelines are derived from it with ``from_pipe`` (the same modules, no second copy).
Loading never reaches a hub: folders and configs come from the model store, and
``HF_HUB_OFFLINE`` is set before diffusers is imported (diffusers' single-file loader otherwise
retries online when a config is missing).

No file or network I/O here beyond loading weights from the paths given.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from assetbox.errors import Cancelled, InvalidInput, ModelError, OutOfMemory
from assetbox.models.store import FAMILIES
from assetbox.models.store import DiffusionFamily as Family

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Families whose denoiser is a flow-matching transformer (bf16 on CUDA, flow samplers).
FLOW_FAMILIES: tuple[Family, ...] = tuple(f for f in FAMILIES if f not in ("sd15", "sdxl"))
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
# The families that edit by instruction (`RunParams.images`), and how many input images each takes.
INSTRUCTION_EDIT_IMAGES: dict[Family, int] = {"qwen_image_edit": 1, "qwen_image_edit_plus": 3}
QWEN_FAMILIES: tuple[Family, ...] = ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus")
# The area the Qwen edit pipelines resize their input images to (VAE and, for Edit, the vision
# encoder), as the model makers do: about 1 MP. Plus gives its vision encoder 384 x 384 of it.
DEFAULT_CONDITION_PIXELS = 1024 * 1024
_PLUS_VISION_SHARE = (384 * 384) / (1024 * 1024)
# Qwen-Image(-Edit)-Lightning's scheduler (lightx2v's model card): dynamic shifting with base
# and max shift log(3), exponential time shift, shift 1. Speed LoRAs on the Qwen families run
# with it; other families' speed LoRAs keep the model's own scheduler.
LIGHTNING_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": math.log(3),
    "max_image_seq_len": 8192,
    "max_shift": math.log(3),
    "shift": 1.0,
    "shift_terminal": None,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}
# Patching the edit pipelines' module-level resize area (see `_condition_area`) is process-wide.
_CONDITION_AREA_LOCK = threading.Lock()

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
    # Where its weights live: cpu, gpu, model_offload, group_offload, sequential_offload.
    placement: str = "cpu"
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
    transformer: Any = None,
) -> DiffusionModel:
    """Load a diffusers folder, or a single file with its config folder, offline; with
    `transformer`, that module instead of the folder's (Nunchaku's, pipelines/nunchaku.py).

    With CUDA, where it runs follows `budget_bytes` (pipelines/memory.py): all on the GPU when
    it fits, model CPU offload when its largest component fits, group offload below that.

    Raises:
        ModelError: the weights do not load.
        InvalidInput: a quantization the device or packages cannot do.
    """
    import diffusers

    from assetbox.pipelines.memory import place

    device, dtype = device_and_dtype(family)
    check_quantization(quantization, device)
    cls = getattr(diffusers, _PIPELINES[(family, "text2img", False)])
    try:
        if folder is not None:
            extra = {}
            if family in INSTRUCTION_EDIT_IMAGES:
                extra["processor"] = _image_only_processor(folder / "processor")
            if transformer is not None:
                extra["transformer"] = transformer
            pipe = cls.from_pretrained(
                str(folder), torch_dtype=dtype, local_files_only=True, **extra
            )
        else:
            assert single_file is not None and config is not None
            pipe = cls.from_single_file(
                str(single_file), config=str(config), torch_dtype=dtype, local_files_only=True
            )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the {family} checkpoint: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    if quantization != "none":
        _quantize(pipe.transformer if family in FLOW_FAMILIES else pipe.unet, quantization)
    model = DiffusionModel(family, pipe, device, scheduler_config=dict(pipe.scheduler.config))
    model.placement = place(pipe, device, budget_bytes)
    model.offloaded = model.placement not in ("cpu", "gpu")
    return model


def _image_only_processor(folder: Path) -> Any:
    """The Qwen edit pipelines' Qwen2VLProcessor without its video part: transformers builds
    video processors with torchvision, which CPU installs lack (loading the folder as diffusers
    does fails there), and the pipelines pass only images. The image part is the PIL image
    processor everywhere, so outputs do not depend on whether torchvision is installed.

    Raises:
        OSError, ValueError: the folder's files do not load (`load_checkpoint` reports them).
    """
    import transformers

    from assetbox.pipelines.caption import _image_only

    image_processor = transformers.Qwen2VLImageProcessorPil.from_pretrained(
        str(folder), local_files_only=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    cls = _image_only(transformers.Qwen2VLProcessor)
    template = folder / "chat_template.jinja"
    chat_template = template.read_text() if template.is_file() else tokenizer.chat_template
    return cls(image_processor, tokenizer, chat_template=chat_template)


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
    speed: bool = False  # a speed (step-distilled) LoRA: Qwen families run Lightning's scheduler


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
    # Instruction edit (Qwen-Image-Edit, -Plus): the input images (H x W x 3 uint8) and the area
    # in pixels the pipeline resizes each to before encoding (see `_condition_area`).
    images: Sequence[np.ndarray] = ()
    condition_pixels: int = DEFAULT_CONDITION_PIXELS
    # FLUX.2 reference images (H x W x 3 uint8) with their weights (see pipelines/flux2.py).
    references: Sequence[tuple[np.ndarray, float]] = ()
    ip_adapter: Any = None  # an assetbox.pipelines.ip_adapter.IPAdapterUse (SD 1.5, SDXL)


def _scheduler(model: DiffusionModel, sampler: str, loras: Sequence[LoraUse] = ()) -> Any:
    """The sampler's scheduler from the model's config (Lightning's settings with a speed LoRA
    on a Qwen family)."""
    import diffusers

    choices = samplers_for(model.family)
    if sampler not in choices:
        raise InvalidInput(
            f"`sampler` must be one of {', '.join(choices)} for {model.family}, not {sampler!r}",
            field="sampler",
        )
    name, extra = choices[sampler]
    if model.family in QWEN_FAMILIES and any(lora.speed for lora in loras):
        extra = extra | LIGHTNING_SCHEDULER
    return getattr(diffusers, name).from_config(model.scheduler_config, **extra)


@contextlib.contextmanager
def _condition_area(pipe: Any, pixels: int) -> Iterator[None]:
    """The Qwen edit pipelines with their input images resized to about `pixels` pixels.

    diffusers hard-codes the area in the pipeline modules (Edit: ``calculate_dimensions(1024 *
    1024, ...)`` in ``__call__``; Plus: the module constants ``VAE_IMAGE_SIZE`` and
    ``CONDITION_IMAGE_SIZE``) and offers no argument for it. The module names are rebound for
    the call, under a lock (they are process-wide), and restored after it; at the default area
    nothing is touched. The output size is the request's either way (passed as width/height).
    """
    if pixels == DEFAULT_CONDITION_PIXELS:
        yield
        return
    module = importlib.import_module(type(pipe).__module__)
    with _CONDITION_AREA_LOCK:
        saved = {name: getattr(module, name) for name in ("calculate_dimensions",)}
        if hasattr(module, "VAE_IMAGE_SIZE"):  # Plus
            saved |= {n: getattr(module, n) for n in ("VAE_IMAGE_SIZE", "CONDITION_IMAGE_SIZE")}
            module.VAE_IMAGE_SIZE = pixels
            module.CONDITION_IMAGE_SIZE = max(32 * 32, round(pixels * _PLUS_VISION_SHARE))
        else:
            original = saved["calculate_dimensions"]

            def calculate_dimensions(target_area: float, ratio: float) -> Any:
                return original(pixels if target_area == 1024 * 1024 else target_area, ratio)

            module.calculate_dimensions = calculate_dimensions
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(module, name, value)


def step_callback(
    steps: int, should_stop: Callable[[], bool], report_step: Callable[[int, int], None]
) -> Callable[..., dict]:
    """A pipeline's ``callback_on_step_end``: reports each denoising step and raises Cancelled
    after the step in which `should_stop()` turned true."""

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        total = getattr(pipeline, "num_timesteps", None) or steps
        report_step(step + 1, total)
        if should_stop():  # out at once: no further step, no decoding of a half-done image
            raise Cancelled(f"cancelled after denoising step {step + 1} of {total}")
        return tensors

    return on_step_end


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
    pipe.scheduler = _scheduler(model, params.sampler, params.loras)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in params.seeds]

    on_step_end = step_callback(params.steps, should_stop, report_step)
    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "num_images_per_prompt": len(params.seeds),
        "num_inference_steps": params.steps,
        "generator": generators,
        "output_type": "np",
        "callback_on_step_end": on_step_end,
    }
    if params.guidance is not None:
        # Qwen-Image's CFG is "true" CFG (a second pass with the negative prompt): it acts only
        # with a negative prompt; its `guidance_scale` is for guidance-distilled transformers.
        if model.family not in QWEN_FAMILIES:
            kwargs["guidance_scale"] = params.guidance
        else:  # 1 without a negative prompt: the same run, without diffusers' warning
            kwargs["true_cfg_scale"] = params.guidance if params.negative_prompt else 1.0
    if model.family == "flux1":
        kwargs["max_sequence_length"] = min(512, pipe.tokenizer_2.model_max_length)
    elif params.negative_prompt and model.family not in ("flux2_klein", "flux2"):
        kwargs["negative_prompt"] = params.negative_prompt
    edits = INSTRUCTION_EDIT_IMAGES.get(model.family)
    if edits is not None:
        if not 1 <= len(params.images) <= edits:
            raise InvalidInput(
                f"{model.family} edits 1 to {edits} images, not {len(params.images)}",
                field="images",
            )
        inputs = [Image.fromarray(image).convert("RGB") for image in params.images]
        kwargs["image"] = inputs if len(inputs) > 1 else inputs[0]
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
    from assetbox.pipelines.ip_adapter import applied

    try:
        _use_loras(model, pipe, params.loras)
        area = params.condition_pixels if edits is not None else DEFAULT_CONDITION_PIXELS
        with (
            applied(pipe, params.ip_adapter) as extra,
            _condition_area(pipe, area),
            torch.inference_mode(),
        ):
            images = pipe(**kwargs, **extra).images
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
