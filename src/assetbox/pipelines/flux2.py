"""FLUX.2 runs (klein and dev) with weighted reference images.

diffusers' FLUX.2 pipelines take reference images (``image=``): each is VAE-encoded, packed, and
appended to the image tokens with time ids 10, 20, 30 ... (one per reference); every query of
every double- and single-stream attention then attends to all of them alike. They have no weight
per reference. Ours adds ``log(weight)`` to the attention logits of that reference's tokens (as
keys, for every query, in every attention of the transformer): its softmax mass is multiplied by
the weight before renormalising, as if its tokens were there `weight` times.

- Weight 1 adds nothing: a run whose weights are all 1 is diffusers' pipeline as it is (no bias
  is even passed), so its bytes are exactly the unweighted pipeline's.
- Weight 0 would be a bias of minus infinity; such a reference is left out of the run instead, so
  the others keep the time ids the pipeline gives them without it (10, 20, ... renumbered) and
  the result is exactly the pipeline run without that reference. (A weight just above 0 keeps the
  other references' original time ids, so the output is not continuous at 0.)

The bias reaches the attention through the transformer's ``joint_attention_kwargs``: FLUX.2's
attention processors take an ``attention_mask`` and pass it to the attention backend as an
additive float mask. It is built per transformer call from the ``img_ids`` the pipeline passes
(their time coordinate says which reference a token is), by a forward pre-hook that exists only
while a run has weights other than 1.

References shared by the prompts of a job (one unit per prompt) are VAE-encoded once: their
latents are cached per VAE, keyed by the preprocessed image tensor, for as long as the model is
loaded (`LATENT_CACHE_ENTRIES`, least recently used dropped first).

No file or network I/O here.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from assetbox.errors import InvalidInput, OutOfMemory
from assetbox.pipelines.diffusion import (
    DiffusionModel,
    RunParams,
    _scheduler,
    _use_loras,
    step_callback,
)

FLUX2_FAMILIES = ("flux2_klein", "flux2")
MAX_REFERENCES = 16
MAX_REFERENCE_WEIGHT = 4.0
# diffusers' Flux2ImageProcessor.check_image_input refuses references outside these.
MIN_REFERENCE_SIDE = 64
MAX_REFERENCE_ASPECT = 8
# The pipelines' time id step between references (`_prepare_image_ids`' `scale`): the generated
# image's tokens have time 0, reference k (from 0) has 10 * (k + 1).
REFERENCE_TIME_STEP = 10
# Reference latents kept per VAE: 16 references of a job and as many of the next (1 MP: 1 MiB each
# in bf16).
LATENT_CACHE_ENTRIES = 32

_latents: weakref.WeakKeyDictionary[Any, OrderedDict[str, Any]] = weakref.WeakKeyDictionary()


def check_reference_size(width: int, height: int, field: str) -> None:
    """Raises InvalidInput (naming `field`) for a reference the FLUX.2 pipelines refuse:
    a side under 64 px or an aspect ratio beyond 8:1."""
    if min(width, height) < MIN_REFERENCE_SIDE:
        raise InvalidInput(
            f"a reference image needs at least {MIN_REFERENCE_SIDE} px a side, this one is "
            f"{width}x{height}",
            field=field,
        )
    if max(width, height) > MAX_REFERENCE_ASPECT * min(width, height):
        raise InvalidInput(
            f"a reference image's sides may differ at most {MAX_REFERENCE_ASPECT}:1, this one "
            f"is {width}x{height}",
            field=field,
        )


def forget_reference_latents(model: DiffusionModel) -> None:
    """Drop the cached reference latents of `model`'s VAE (the next run encodes anew)."""
    _latents.pop(model.pipe.vae, None)


def run_flux2(
    model: DiffusionModel,
    params: RunParams,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    report_step: Callable[[int, int], None] = lambda step, steps: None,
) -> list[np.ndarray]:
    """Generate ``len(params.seeds)`` images (H x W x 3 uint8) with `params.references`.

    Exactly the request's LoRAs are active (see `pipelines.diffusion._use_loras`). Cancellation
    is checked after every denoising step.

    Raises:
        Cancelled: `should_stop()` turned true.
        OutOfMemory: the device ran out of memory.
        InvalidInput: an unknown sampler, an img2img input (FLUX.2 takes references), a
            reference weight outside [0, MAX_REFERENCE_WEIGHT].
    """
    import torch
    from PIL import Image

    if params.image is not None:
        raise InvalidInput("FLUX.2 takes `references`, not an img2img `image`", field="image")
    for n, (_, weight) in enumerate(params.references):
        if not 0 <= weight <= MAX_REFERENCE_WEIGHT:
            raise InvalidInput(
                f"a reference weight must lie in [0, {MAX_REFERENCE_WEIGHT}], not {weight}",
                field=f"references.{n}.weight",
            )
    pipe = model.pipe
    pipe.scheduler = _scheduler(model, params.sampler)
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in params.seeds]
    kept = [(image, weight) for image, weight in params.references if weight > 0]

    on_step_end = step_callback(params.steps, should_stop, report_step)
    kwargs: dict[str, Any] = {
        "prompt": params.prompt,
        "num_images_per_prompt": len(params.seeds),
        "num_inference_steps": params.steps,
        "width": params.width,
        "height": params.height,
        "generator": generators,
        "output_type": "np",
        "callback_on_step_end": on_step_end,
    }
    if params.guidance is not None:
        kwargs["guidance_scale"] = params.guidance
    if kept:
        kwargs["image"] = [Image.fromarray(image).convert("RGB") for image, _ in kept]
    try:
        _use_loras(model, pipe, params.loras)
        with (
            torch.inference_mode(),
            _reference_weights(pipe.transformer, [weight for _, weight in kept]),
            _cached_reference_latents(pipe),
        ):
            if params.negative_prompt and _takes_negative_prompt(model, params.guidance):
                # The klein pipeline has no `negative_prompt`: its CFG runs against "", or
                # against the embeddings given (one prompt's; it repeats them per image).
                kwargs["negative_prompt_embeds"] = pipe.encode_prompt(
                    prompt=params.negative_prompt, device=pipe._execution_device
                )[0]
            images = pipe(**kwargs).images
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(f"the device ran out of memory: {exc}") from exc
    return [np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8) for image in images]


def _takes_negative_prompt(model: DiffusionModel, guidance: float | None) -> bool:
    """Base klein runs CFG above guidance 1; distilled klein and FLUX.2 [dev] run none."""
    return (
        model.family == "flux2_klein"
        and not model.pipe.config.is_distilled
        and guidance is not None
        and guidance > 1
    )


@contextmanager
def _reference_weights(transformer: Any, weights: Sequence[float]) -> Iterator[None]:
    """While open, every call of `transformer` adds log(weights[k]) to the attention logits of
    reference k's tokens; weights all 1 (or none): nothing is added, nothing is hooked."""
    import torch

    if all(weight == 1 for weight in weights):
        yield
        return
    # Index 0: the text and the generated image's tokens; k + 1: reference k.
    logs = torch.tensor([0.0] + [math.log(weight) for weight in weights], dtype=torch.float32)

    def add_bias(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        img_ids, txt_ids = kwargs["img_ids"], kwargs["txt_ids"]
        image_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        text_tokens = txt_ids.shape[-2]
        which = torch.div(image_ids[:, 0], REFERENCE_TIME_STEP, rounding_mode="floor").long()
        if int(which.max()) >= len(logs):
            raise RuntimeError(  # the pipeline's time ids are no longer what this assumes
                f"{int(which.max())} references in the transformer's input, {len(weights)} weighted"
            )
        bias = torch.cat([logs.new_zeros(text_tokens), logs[which.cpu()]])
        # In the attention's dtype (the backends take a float mask of the query's dtype);
        # (1, 1, 1, keys) broadcasts over batch, heads and queries.
        dtype = kwargs["hidden_states"].dtype
        mask = bias.to(device=image_ids.device, dtype=dtype).view(1, 1, 1, -1)
        attention = dict(kwargs.get("joint_attention_kwargs") or {})
        attention["attention_mask"] = mask
        return args, kwargs | {"joint_attention_kwargs": attention}

    handle = transformer.register_forward_pre_hook(add_bias, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _cached_reference_latents(pipe: Any) -> Iterator[None]:
    """While open, `pipe` VAE-encodes each distinct preprocessed reference once per VAE (see the
    module's docstring). The pipelines take no precomputed reference latents, so their own
    ``_encode_vae_image`` is wrapped on the instance; it encodes with ``argmax`` (the
    distribution's mode, no noise), so a cached latent is exactly what a new encode would give."""
    import torch

    cache = _latents.setdefault(pipe.vae, OrderedDict())
    encode = pipe._encode_vae_image

    def cached(image: Any, generator: Any) -> Any:
        raw = image.detach().contiguous().flatten().view(dtype=torch.uint8).cpu().numpy()
        key = hashlib.blake2b(raw.tobytes(), digest_size=16)
        key.update(repr((tuple(image.shape), str(image.dtype), str(image.device))).encode())
        digest = key.hexdigest()
        if digest in cache:
            cache.move_to_end(digest)
            return cache[digest]
        latents = encode(image=image, generator=generator)
        cache[digest] = latents
        while len(cache) > LATENT_CACHE_ENTRIES:
            cache.popitem(last=False)
        return latents

    pipe._encode_vae_image = cached
    try:
        yield
    finally:
        del pipe._encode_vae_image  # the class's method again
