"""Weighted FLUX.2 references (pipelines/flux2.py) on a tiny random klein, against diffusers'
own pipeline run with and without the references."""

from __future__ import annotations

import numpy as np
import pytest

from assetbox.errors import Cancelled
from assetbox.pipelines.diffusion import DiffusionModel, RunParams
from assetbox.pipelines.flux2 import run_flux2

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red cat"


@pytest.fixture(scope="module")
def klein() -> DiffusionModel:
    from assetbox.testing.tiny_flux2 import build_flux2_klein

    pipe = build_flux2_klein(distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return DiffusionModel("flux2_klein", pipe, "cpu", scheduler_config=dict(pipe.scheduler.config))


def reference(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def weighted(model: DiffusionModel, references: list, prompt: str = PROMPT, **kw) -> np.ndarray:
    params = RunParams(
        prompt=prompt,
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=None,
        seeds=[5],
        sampler="flow_euler",
        references=references,
    )
    return run_flux2(model, params, **kw)[0]


def native(model: DiffusionModel, images: list[np.ndarray]) -> np.ndarray:
    """diffusers' pipeline itself, with `images` as its references."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    pipe = model.pipe
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)
    out = pipe(
        image=[Image.fromarray(image) for image in images] or None,
        prompt=PROMPT,
        width=64,
        height=64,
        num_inference_steps=2,
        generator=[torch.Generator("cpu").manual_seed(5)],
        output_type="np",
    ).images[0]
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_weights_one_zero_and_between(klein: DiffusionModel) -> None:
    a, b, c = reference(1), reference(2, (96, 64)), reference(3)
    ones = weighted(klein, [(a, 1.0), (b, 1.0), (c, 1.0)])
    # All weights 1: exactly the bytes of the pipeline as diffusers runs it.
    assert np.array_equal(ones, native(klein, [a, b, c]))
    assert distance(ones, native(klein, [])) > 1  # the references do change the output

    # Weight 0 on the middle one: the pipeline run without it (c then has b's time id).
    without = native(klein, [a, c])
    zero = weighted(klein, [(a, 1.0), (b, 0.0), (c, 1.0)])
    assert np.abs(zero.astype(int) - without.astype(int)).max() <= 1
    assert distance(zero, ones) > 1

    # Weight 0.5 lies strictly between the two.
    half = weighted(klein, [(a, 1.0), (b, 0.5), (c, 1.0)])
    span = distance(zero, ones)
    assert 0 < distance(half, ones) < span
    assert 0 < distance(half, zero) < span
    # Above 1 the reference counts for more: farther from the run without it.
    double = weighted(klein, [(a, 1.0), (b, 2.0), (c, 1.0)])
    assert distance(double, without) > distance(ones, without)

    # Nothing stays behind: no hook on the transformer, the pipeline's own VAE encode.
    assert not klein.pipe.transformer._forward_pre_hooks
    assert "_encode_vae_image" not in vars(klein.pipe)
    assert np.array_equal(weighted(klein, [(a, 1.0), (b, 1.0), (c, 1.0)]), ones)


def test_references_shared_by_four_prompts_are_encoded_once(
    klein: DiffusionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    vae = klein.pipe.vae
    encode = vae.encode
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return encode(*args, **kwargs)

    monkeypatch.setattr(vae, "encode", counting)
    shared = [(reference(10), 1.0), (reference(11), 0.5)]
    outputs = [weighted(klein, shared, prompt) for prompt in ("a", "b", "c", "d")]
    assert len(calls) == 2  # one per reference, not one per prompt and reference
    assert len({output.tobytes() for output in outputs}) == 4


def test_cancel_stops_after_the_step(klein: DiffusionModel) -> None:
    steps = []
    with pytest.raises(Cancelled):
        weighted(
            klein,
            [(reference(20), 0.5)],
            should_stop=lambda: True,
            report_step=lambda step, total: steps.append((step, total)),
        )
    assert steps == [(1, 2)]
    assert not klein.pipe.transformer._forward_pre_hooks
