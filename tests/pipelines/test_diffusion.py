"""pipelines/diffusion.py directly: every sampler, refusals, the quantization setting."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from assetbox.errors import InvalidInput
from assetbox.pipelines.diffusion import (
    SAMPLERS,
    RunParams,
    check_quantization,
    load_checkpoint,
    run,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd15(tiny_models: Path):
    return load_checkpoint("sd15", folder=tiny_models / "tiny-sd15")


def params(**changes) -> RunParams:
    base = {
        "prompt": "a photo of a cat",
        "negative_prompt": "blurry",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 6.0,
        "seeds": [11],
        "sampler": "euler",
    }
    return RunParams(**(base | changes))


def test_every_sampler_runs_deterministically_and_differently(sd15) -> None:
    outputs = {}
    for name in SAMPLERS:
        first = run(sd15, params(sampler=name))[0]
        assert np.array_equal(first, run(sd15, params(sampler=name))[0]), name
        outputs[name] = first.tobytes()
    # dpmpp_2m and dpmpp_2m_karras may coincide at 2 steps; the rest are different samplers.
    assert len(set(outputs.values())) >= len(SAMPLERS) - 1


def test_flux_samplers_are_its_own(tiny_models: Path) -> None:
    flux = load_checkpoint("flux1", folder=tiny_models / "tiny-flux1")
    with pytest.raises(InvalidInput) as info:
        run(flux, params(sampler="ddim"))
    assert info.value.field == "sampler"
    assert run(flux, params(sampler="flow_euler"))[0].shape == (64, 64, 3)


def test_steps_are_reported_and_a_stop_cancels(sd15) -> None:
    from assetbox.errors import Cancelled

    steps: list[tuple[int, int]] = []
    run(sd15, params(steps=3), report_step=lambda s, n: steps.append((s, n)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    seen: list[int] = []
    with pytest.raises(Cancelled):
        run(
            sd15,
            params(steps=20),
            report_step=lambda s, n: seen.append(s),
            should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [1, 2]  # no step after the one that saw the stop


@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao present")
def test_quantization_is_refused_without_torchao() -> None:
    check_quantization("none", "cpu")
    for mode in ("int8", "fp8"):
        with pytest.raises(InvalidInput) as info:
            check_quantization(mode, "cpu")
        assert info.value.field == "quantization" and "torchao" in info.value.message


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="needs torchao")
def test_int8_quantization_runs_and_shrinks_the_model(tiny_models: Path, sd15) -> None:
    import torch

    quantized = load_checkpoint("sd15", folder=tiny_models / "tiny-sd15", quantization="int8")
    assert quantized.nbytes < sd15.nbytes  # the cache counts the int8 weights as such
    exact, approx = run(sd15, params())[0], run(quantized, params())[0]
    assert exact.shape == approx.shape
    # int8 weights change the numbers a little, not the picture
    assert np.abs(exact.astype(int) - approx.astype(int)).mean() < 8
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput) as info:  # fp8 needs a recent GPU
            load_checkpoint("sd15", folder=tiny_models / "tiny-sd15", quantization="fp8")
        assert info.value.field == "quantization" and "CUDA" in info.value.message


def test_resident_adapters_are_bounded_and_switch_exactly(
    tiny_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from assetbox.errors import ModelError
    from assetbox.pipelines import diffusion

    monkeypatch.setattr(diffusion, "MAX_RESIDENT_ADAPTERS", 1)
    model = load_checkpoint("sdxl", folder=tiny_models / "tiny-sdxl")

    def lora(name: str, weight: float = 1.0) -> diffusion.LoraUse:
        return diffusion.LoraUse(
            tiny_models / f"{name}.safetensors", name.replace("-", "_"), weight
        )

    before = run(model, params())[0]
    with_a = run(model, params(loras=[lora("sdxl-a")]))[0]
    with_b = run(model, params(loras=[lora("sdxl-b")]))[0]
    assert list(model.adapters) == ["sdxl_b"]  # a was dropped to stay within the bound
    assert np.array_equal(run(model, params(loras=[lora("sdxl-a")]))[0], with_a)
    assert not np.array_equal(with_a, with_b)
    half = run(model, params(loras=[lora("sdxl-a", 0.5)]))[0]
    assert not np.array_equal(half, with_a)  # the weight is the request's, not the last one's
    with pytest.raises(ModelError):  # an SD 1.5 LoRA does not fit SDXL's layers
        run(model, params(loras=[lora("sd15-a")]))
    assert np.array_equal(run(model, params())[0], before)  # nothing left active
