"""The CUDA device policy (half precision, CPU offload past the budget); skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from assetbox.pipelines.diffusion import RunParams, load_checkpoint, run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_half_precision_on_cuda_and_offload_past_the_budget(tiny_models: Path) -> None:
    resident = load_checkpoint("sdxl", folder=tiny_models / "tiny-sdxl")
    assert resident.pipe.unet.dtype == torch.float16 and not resident.offloaded
    offloaded = load_checkpoint("sdxl", folder=tiny_models / "tiny-sdxl", budget_bytes=1)
    assert offloaded.offloaded
    params = RunParams(
        prompt="a cat",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=5.0,
        seeds=[1],
        sampler="euler",
    )
    assert run(offloaded, params)[0].shape == (64, 64, 3)
    flux = load_checkpoint("flux1", folder=tiny_models / "tiny-flux1")
    assert flux.pipe.transformer.dtype == torch.bfloat16
