"""Tiling with the real built-in models, where the image really is cut into several windows."""

from __future__ import annotations

import numpy as np
import pytest

from assetbox.pipelines.upscale_gan import TileSettings, open_backend, plan_windows, upscale_pixels
from tests.utils.images import photo


@pytest.mark.parametrize(
    ("model_id", "crop", "tile", "engine", "max_err", "mean_err", "p999_err"),
    [
        ("realesr-animevideov3-x4", (256, 256), 64, "ncnn", 3, 0.1, 2),
        ("realesr-animevideov3-x3", (150, 130), 48, "torch", 3, 0.1, 2),
        ("realesrgan-x4plus", (96, 160), 96, "ncnn", 255, 0.5, 8),
    ],
)
def test_real_models_tile_invisibly(
    builtin_store, model_id, crop, tile, engine, max_err, mean_err, p999_err
) -> None:
    manifest = builtin_store.get(model_id)
    backend = open_backend(
        builtin_store.path(model_id),
        engine=engine,
        network_scale=manifest.network_scale,
        post_resize=manifest.post_resize,
    )
    height, width = crop
    pixels = np.ascontiguousarray(photo("astronaut")[60 : 60 + height, 150 : 150 + width])
    settings = TileSettings(tile=tile, context=manifest.context)
    assert len(plan_windows(width, height, settings)[0]) >= 2
    untiled = upscale_pixels(backend, pixels, TileSettings(tile=0))
    tiled = upscale_pixels(backend, pixels, settings)
    assert tiled.shape == (height * manifest.scale, width * manifest.scale, 3)
    diff = np.abs(tiled.astype(int) - untiled)
    assert diff.max() <= max_err
    assert diff.mean() <= mean_err
    assert np.percentile(diff, 99.9) <= p999_err
