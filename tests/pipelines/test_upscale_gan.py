from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from assetbox.errors import Cancelled, InvalidInput, OutOfMemory
from assetbox.pipelines.upscale_gan import (
    TileSettings,
    choose_engine,
    plan_windows,
    upscale_image,
    upscale_pixels,
)
from tests.utils.images import photo


class FakeBackend:
    """A model with a known reach: a box blur of `radius` px, then nearest-neighbour x2.

    Its output near a window's edge depends on pixels outside the window (zero padded there,
    like a real convolution), so tiling shows unless windows carry `radius` px of context.
    """

    name = "fake"
    network_scale = 2
    post_resize = None
    preferred_tile = 64

    def __init__(self, radius: int = 3, max_batch: int | None = None, oom_above: int = 0):
        self.radius = radius
        self.max_batch = max_batch
        self.oom_above = oom_above
        self.calls: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        if self.oom_above and batch.shape[1] * batch.shape[2] * len(batch) > self.oom_above:
            raise OutOfMemory("fake device is full")
        size = 2 * self.radius + 1
        blurred = uniform_filter(batch, size=(1, size, size, 1), mode="constant")
        return np.clip(blurred, 0, 1).repeat(2, axis=1).repeat(2, axis=2)


@pytest.fixture
def image() -> np.ndarray:
    return np.ascontiguousarray(photo("astronaut")[:170, :230])


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b).max())


def test_tiling_with_enough_context_is_invisible(image: np.ndarray) -> None:
    backend = FakeBackend(radius=3)
    untiled = upscale_pixels(backend, image, TileSettings(tile=0))
    assert untiled.shape == (340, 460, 3) and untiled.dtype == np.uint8
    tiled = upscale_pixels(backend, image, TileSettings(tile=48, overlap=4, context=4))
    assert len(backend.calls) > 2  # really tiled
    assert max_diff(tiled, untiled) <= 1


def test_tiling_without_context_shows(image: np.ndarray) -> None:
    # The control for the test above: the same tiles with no context differ at the seams.
    backend = FakeBackend(radius=3)
    untiled = upscale_pixels(backend, image, TileSettings(tile=0))
    tiled = upscale_pixels(backend, image, TileSettings(tile=48, overlap=4, context=0))
    assert max_diff(tiled, untiled) > 10


def test_windows_are_equal_and_inside_the_image() -> None:
    plan, margin = plan_windows(1024, 1000, TileSettings(tile=224, overlap=4, context=8))
    assert margin == 8
    assert {(t.width, t.height) for t in plan} == {(plan.tile_width, plan.tile_height)}
    assert plan.xs[-1] + plan.tile_width == 1024 and plan.ys[-1] + plan.tile_height == 1000
    assert len(plan) == 25  # five cores of <= 224 px per axis


def test_batches_hold_several_windows(image: np.ndarray) -> None:
    backend = FakeBackend()
    upscale_pixels(backend, image, TileSettings(tile=48, overlap=4, context=4, batch=3))
    assert max(shape[0] for shape in backend.calls) == 3
    one_at_a_time = FakeBackend(max_batch=1)
    upscale_pixels(one_at_a_time, image, TileSettings(tile=48, overlap=4, context=4, batch=3))
    assert {shape[0] for shape in one_at_a_time.calls} == {1}


def test_out_of_memory_halves_the_tile_and_continues(image: np.ndarray) -> None:
    expected = upscale_pixels(FakeBackend(), image, TileSettings(tile=0))
    # The device holds one window of at most 60 x 60 px: the 230 x 170 untiled pass fails,
    # the tile halves until windows fit, and the result is still the untiled one.
    backend = FakeBackend(oom_above=60 * 60)
    seen: list[tuple[int, int]] = []
    out = upscale_pixels(
        backend,
        image,
        TileSettings(tile=128, overlap=4, context=4, batch=1),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert max_diff(out, expected) <= 1
    assert any(h * w > 60 * 60 for _, h, w, _ in backend.calls)  # it did run out
    assert seen[-1][0] == seen[-1][1]  # progress reached the end


def test_out_of_memory_at_the_smallest_tile_is_raised(image: np.ndarray) -> None:
    with pytest.raises(OutOfMemory):
        upscale_pixels(FakeBackend(oom_above=1), image, TileSettings(tile=64, context=4))


def test_progress_counts_windows(image: np.ndarray) -> None:
    seen: list[tuple[int, int]] = []
    upscale_pixels(
        FakeBackend(),
        image,
        TileSettings(tile=48, overlap=4, context=4, batch=2),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_cancel_stops_between_batches(image: np.ndarray) -> None:
    backend = FakeBackend()
    with pytest.raises(Cancelled):
        upscale_pixels(
            backend,
            image,
            TileSettings(tile=48, overlap=4, context=4, batch=1),
            should_stop=lambda: len(backend.calls) >= 2,
        )
    assert len(backend.calls) == 2


def test_rgba_keeps_alpha_upscaled_separately(image: np.ndarray) -> None:
    alpha = np.zeros(image.shape[:2], np.uint8)
    alpha[40:120, 50:150] = 255
    for mode in ("model", "lanczos"):
        result = upscale_image(
            FakeBackend(radius=0),
            image,
            alpha,
            settings=TileSettings(tile=48, overlap=4, context=4),
            alpha_mode=mode,  # type: ignore[arg-type]
        )
        assert result.alpha is not None and result.alpha.shape == (340, 460)
        assert result.alpha[100, 150] == 255 and result.alpha[10, 10] == 0
        assert result.rgb.shape == (340, 460, 3)


def test_16bit_input_gives_16bit_output(image: np.ndarray) -> None:
    pixels16 = image.astype(np.uint16) * 257
    out = upscale_pixels(FakeBackend(radius=0), pixels16, TileSettings(tile=48, context=4))
    assert out.dtype == np.uint16
    expected = pixels16.repeat(2, axis=0).repeat(2, axis=1)
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_scale_below_native_downsamples(image: np.ndarray) -> None:
    result = upscale_image(FakeBackend(), image, None, scale=1)
    assert result.rgb.shape == image.shape
    with pytest.raises(InvalidInput, match="`scale` must be between 1 and the model's native 2"):
        upscale_image(FakeBackend(), image, None, scale=3)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (TileSettings(tile=8), "tile"),
        (TileSettings(tile=64, overlap=64), "overlap"),
        (TileSettings(batch=0), "batch"),
        (TileSettings(context=-1), "context"),
    ],
)
def test_bad_settings_name_the_field(image: np.ndarray, settings: TileSettings, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        upscale_pixels(FakeBackend(), image, settings)
    assert info.value.field == field


def test_engine_choice() -> None:
    assert choose_engine("auto", ["torch"]) == "torch"
    assert choose_engine("ncnn", ["torch", "ncnn"]) == "ncnn"
    with pytest.raises(InvalidInput, match="runs on torch only"):
        choose_engine("ncnn", ["torch"])
    with pytest.raises(InvalidInput, match="`engine`"):
        choose_engine("tpu", ["torch"])  # type: ignore[arg-type]


def test_torch_out_of_memory_becomes_ours(builtin_store, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from assetbox.pipelines.upscale_gan import TorchBackend

    backend = TorchBackend(builtin_store.path("realesr-animevideov3-x4") / "model.safetensors")

    def full(*args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(backend.model, "forward", full)
    with pytest.raises(OutOfMemory, match="ran out of memory"):
        backend.run(np.zeros((1, 16, 16, 3), np.float32))
