"""Tiled diffusion: img2img of a batch of equal tiles of a pre-upscaled image, each with its own
prompt, at its own place, from one global noise field.

A tile is a pure function of (its crop, its prompt, the seed, its place): its initial noise is cut
from `assetbox.imaging.noise` at its latent box, so tiles that overlap start from the same noise
there whichever worker runs them and in whatever batch; the sampler's own randomness (ancestral
samplers) comes from a generator seeded per tile. SDXL's size conditioning says where the tile
sits: ``original_size`` is the whole output, ``target_size`` the tile, and each tile's own
``crops_coords_top_left`` is its place (set per batch item; the pipelines take one for a batch).

No file or network I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from assetbox.errors import Cancelled, InvalidInput, OutOfMemory
from assetbox.imaging.noise import batch_noise
from assetbox.pipelines.diffusion import DiffusionModel, LoraUse, _scheduler, _use_loras
from assetbox.pipelines.ip_adapter import IPAdapterUse, applied


@dataclass(frozen=True)
class TileInput:
    """One tile: its crop of the pre-upscaled image (H x W x 3 uint8), its prompt, its place in
    the output (x, y in pixels) and the seed of its sampler's own randomness."""

    pixels: np.ndarray
    prompt: str
    x: int
    y: int
    seed: int


@dataclass(frozen=True)
class TiledParams:
    """What a batch of tiles shares."""

    canvas: tuple[int, int]  # the output's (width, height)
    steps: int
    strength: float
    sampler: str
    noise_seed: int
    guidance: float | None = None
    negative_prompt: str | None = None
    loras: Sequence[LoraUse] = ()
    conditioning_scale: float = 1.0
    ip_adapter: IPAdapterUse | None = None  # one image for every tile (SD 1.5, SDXL)


def diffuse_tiles(
    model: DiffusionModel,
    tiles: Sequence[TileInput],
    params: TiledParams,
    *,
    controlnet: Any = None,
    should_stop: Callable[[], bool] = lambda: False,
    report_step: Callable[[int, int], None] = lambda step, steps: None,
) -> list[np.ndarray]:
    """img2img of `tiles` in one batch (each its own crop as ControlNet image when one is
    given); the results in order, H x W x 3 uint8.

    Raises:
        InvalidInput: tiles of different sizes, or an unknown sampler.
        Cancelled: `should_stop()` turned true (checked after every denoising step).
        OutOfMemory: the device ran out of memory.
    """
    import torch
    from PIL import Image

    shapes = {t.pixels.shape for t in tiles}
    if len(shapes) != 1:
        raise InvalidInput(
            f"a batch of tiles must have one size, not {sorted(shapes)}", field="tiles"
        )
    height, width = tiles[0].pixels.shape[:2]
    pipe = model.pipeline("img2img", controlnet)
    pipe.scheduler = _scheduler(model, params.sampler)
    _inject_noise(pipe.scheduler, tiles, params.noise_seed, width)

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        total = getattr(pipeline, "num_timesteps", None) or params.steps
        report_step(step + 1, total)
        if should_stop():
            raise Cancelled(f"cancelled after denoising step {step + 1} of {total}")
        return tensors

    images = [Image.fromarray(t.pixels).convert("RGB") for t in tiles]
    kwargs: dict[str, Any] = {
        "prompt": [t.prompt for t in tiles],
        "image": images,
        "strength": params.strength,
        "num_inference_steps": params.steps,
        "generator": [torch.Generator("cpu").manual_seed(int(t.seed)) for t in tiles],
        "output_type": "np",
        "callback_on_step_end": on_step_end,
    }
    if params.guidance is not None:
        kwargs["guidance_scale"] = params.guidance
    if model.family == "flux1":
        kwargs |= {"width": width, "height": height}
        kwargs["max_sequence_length"] = min(512, pipe.tokenizer_2.model_max_length)
    elif params.negative_prompt:
        kwargs["negative_prompt"] = [params.negative_prompt] * len(tiles)
    if model.family == "sdxl":
        canvas_w, canvas_h = params.canvas
        kwargs |= {"original_size": (canvas_h, canvas_w), "target_size": (height, width)}
    if controlnet is not None:
        kwargs |= {
            "control_image": images,
            "controlnet_conditioning_scale": params.conditioning_scale,
        }
    hooks = []
    if model.family == "sdxl":
        places = torch.tensor([[t.y, t.x] for t in tiles], dtype=torch.float32)
        for module in (pipe.unet, controlnet):
            if module is not None:
                hooks.append(
                    module.register_forward_pre_hook(_crops_hook(places), with_kwargs=True)
                )
    try:
        _use_loras(model, pipe, params.loras)
        with (
            applied(pipe, params.ip_adapter) as extra,
            torch.inference_mode(),
            _one_thread_on_cpu(model.device),
        ):
            out = pipe(**kwargs, **extra).images
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"the device ran out of memory: {exc}") from exc
    finally:
        for hook in hooks:
            hook.remove()
    return [np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in out]


@contextmanager
def _one_thread_on_cpu(device: str) -> Iterator[None]:
    """On a CPU, one intra-op thread while tiles run: torch's CPU kernels split their sums by
    thread count, so a tile's bytes would depend on how many workers share the cores (measured:
    1 against 2 threads changed 3 pixels of a tiny SDXL tile by 1/255). GPUs are unaffected."""
    import torch

    if device != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inject_noise(scheduler: Any, tiles: Sequence[TileInput], seed: int, width: int) -> None:
    """Make this (fresh, per-run) scheduler noise the encoded tiles with the global field.

    img2img pipelines draw their initial noise from the generators and hand it to the
    scheduler (`add_noise`; `scale_noise` for flow matching); the noise is swapped there, in the
    shape the pipeline drew (its latent channels and size), which is every family's own.
    """
    import torch

    name, position = ("scale_noise", 2) if hasattr(scheduler, "scale_noise") else ("add_noise", 1)
    original = getattr(scheduler, name)

    def noised(*args: Any, **kwargs: Any) -> Any:
        args_list = list(args)
        drawn = kwargs["noise"] if "noise" in kwargs else args_list[position]
        count, channels, lat_h, lat_w = drawn.shape
        if count != len(tiles):
            raise InvalidInput(f"{count} noise maps for {len(tiles)} tiles", field="tiles")
        factor = width // lat_w  # pixels per latent
        boxes = [(t.x // factor, t.y // factor, lat_w, lat_h) for t in tiles]
        field = torch.from_numpy(batch_noise(seed, boxes, channels))
        field = field.to(device=drawn.device, dtype=drawn.dtype)
        if "noise" in kwargs:
            kwargs["noise"] = field
        else:
            args_list[position] = field
        return original(*args_list, **kwargs)

    setattr(scheduler, name, noised)


def _crops_hook(places: Any) -> Callable[..., Any]:
    """A forward pre-hook setting each batch item's SDXL crop coordinates (``time_ids`` columns
    2 and 3) to its tile's place; with guidance the batch is [negatives, positives]."""

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        added = kwargs.get("added_cond_kwargs")
        if not added or "time_ids" not in added:
            return None
        ids = added["time_ids"].clone()
        repeats = ids.shape[0] // places.shape[0]
        ids[:, 2:4] = places.repeat(repeats, 1).to(ids)
        kwargs["added_cond_kwargs"] = {**added, "time_ids": ids}
        return args, kwargs

    return hook
