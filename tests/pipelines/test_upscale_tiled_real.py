"""A real SDXL checkpoint with xinsir's tile ControlNet takes a 1024² photo to 2048² through the
diffusion upscale (the engine, the kind, the pipeline). Needs a CUDA GPU and
ASSETBOX_REAL_WEIGHTS holding an SDXL diffusers folder (`sdxl*`, e.g. stable-diffusion-xl-base-1.0)
and a tile ControlNet folder (`*tile*`, e.g. xinsir/controlnet-tile-sdxl-1.0)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus
from assetbox.imaging import encode_image
from assetbox.imaging.seams import seam_energy_ratio
from assetbox.kinds import PLANNERS
from assetbox.kinds.upscale_tiled import plan_for
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from tests.utils.images import photo

ROOT = Path(os.environ.get("ASSETBOX_REAL_WEIGHTS", "/nonexistent"))

pytestmark = [
    pytest.mark.weights,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def find(pattern: str) -> Path:
    found = sorted(p for p in ROOT.glob(pattern) if p.is_dir()) if ROOT.is_dir() else []
    if not found:
        pytest.skip(f"needs a folder {pattern} under ASSETBOX_REAL_WEIGHTS")
    return found[0]


def test_sdxl_with_a_tile_controlnet_takes_a_photo_to_2048(tmp_path: Path) -> None:
    checkpoint, controlnet = find("sdxl*"), find("*tile*")
    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    import_model(store, checkpoint, model_id="sdxl")
    import_model(store, controlnet, model_id="sdxl-tile")
    source = np.asarray(Image.fromarray(photo("astronaut")).resize((1024, 1024), Image.LANCZOS))
    engine = Engine(planners=PLANNERS, settings=Settings(data_dir=data_dir, workers=1))
    try:
        job = engine.submit(
            "upscale",
            {
                "image": engine.put_blob(encode_image(source)),
                "mode": "diffusion",
                "model": "sdxl",
                "controlnet": {"model": "sdxl-tile", "conditioning_scale": 0.8},
                "scale": 2,
                "prompt": "a photo of an astronaut, sharp, detailed",
                "strength": 0.35,
                "steps": 20,
                "seed": 1,
                "pre_upscale": "lanczos",
            },
        )
        done = engine.wait(job.id, timeout=1800)
        assert done.status == JobStatus.SUCCEEDED, done.error
        out = np.asarray(Image.open(engine.output_path(done, 0)).convert("RGB"))
    finally:
        engine.close()
    assert out.shape == (2048, 2048, 3)
    pre = np.asarray(Image.fromarray(source).resize((2048, 2048), Image.LANCZOS))
    # Detail added, colours kept (the wavelet fix), no seams.
    assert np.abs(out.astype(int) - pre).mean() > 1.0
    assert abs(out.mean() - pre.mean()) < 3
    request = PLANNERS["upscale"].request_model.model_validate(done.request)
    assert seam_energy_ratio(out, plan_for(request, 1024, 1024)) < 1.1
