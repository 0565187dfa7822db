from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assetbox.errors import InvalidInput
from assetbox.imaging import (
    Tile,
    TileBlender,
    TilePlan,
    axis_weights,
    blend_tiles,
    extract_tile,
    ramp,
)
from assetbox.imaging.transfer import srgb_to_linear
from tests.utils.images import photo


def unchanged(image: np.ndarray, plan: TilePlan):
    return ((tile, extract_tile(image, tile)) for tile in plan)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("length", [1, 2, 7, 128])
def test_ramps_are_a_partition_of_unity(kind: str, length: int) -> None:
    up = ramp(length, kind)  # type: ignore[arg-type]
    np.testing.assert_allclose(up + up[::-1], 1.0, atol=1e-6)
    assert (up > 0).all() and (up < 1).all()
    assert (np.diff(up) > 0).all() or length == 1


def test_axis_weights_of_neighbours_sum_to_one_over_the_seam() -> None:
    starts = (0, 96, 192)
    left, right = axis_weights(starts, 128, 0), axis_weights(starts, 128, 1)
    seam = slice(96, 128)  # tile 0's columns 96..127 are tile 1's columns 0..31
    np.testing.assert_allclose(left[seam] + right[: 128 - 96], 1.0, atol=1e-6)
    assert (left[:96] == 1).all()


@st.composite
def cases(draw: st.DrawFn):
    width = draw(st.integers(1, 300))
    height = draw(st.integers(1, 300))
    tile = draw(st.integers(2, 128))
    overlap = draw(st.integers(0, tile - 1))
    kind = draw(st.sampled_from(["cosine", "linear"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return width, height, tile, overlap, kind, seed


@given(cases())
@settings(max_examples=150, deadline=None)
def test_unchanged_tiles_reproduce_the_input(case) -> None:
    width, height, tile, overlap, kind, seed = case
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    plan = TilePlan.for_image(width, height, tile, overlap)
    out = blend_tiles(plan, unchanged(image, plan), ramp=kind)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).max() <= 1


@given(cases())
@settings(max_examples=50, deadline=None)
def test_unchanged_16bit_and_float_tiles_reproduce_the_input(case) -> None:
    width, height, tile, overlap, kind, seed = case
    rng = np.random.default_rng(seed)
    image16 = rng.integers(0, 65536, (height, width, 3), dtype=np.uint16)
    plan = TilePlan.for_image(width, height, tile, overlap)
    out16 = blend_tiles(plan, unchanged(image16, plan), ramp=kind, dtype=np.uint16)
    assert np.abs(out16.astype(int) - image16).max() <= 257  # 1/255 in 16-bit units
    imagef = rng.random((height, width, 1), dtype=np.float32)
    outf = blend_tiles(
        plan, unchanged(imagef, plan), channels=1, transfer="linear", dtype=np.float32
    )
    np.testing.assert_allclose(outf, imagef, atol=1e-5)


def test_real_photo_round_trip_is_exact() -> None:
    image = photo("coffee")  # 400 x 600
    plan = TilePlan.for_image(image.shape[1], image.shape[0], 128, 24)
    np.testing.assert_array_equal(blend_tiles(plan, unchanged(image, plan)), image)


def test_scaled_tiles_blend_at_the_output_scale() -> None:
    image = photo("chelsea")[:150, :200]
    plan = TilePlan.for_image(200, 150, 64, 16)
    nearest = lambda a: a.repeat(3, axis=0).repeat(3, axis=1)  # noqa: E731
    out = blend_tiles(plan, ((t, nearest(p)) for t, p in unchanged(image, plan)), scale=3)
    np.testing.assert_array_equal(out, nearest(image))


def test_seam_is_a_smooth_ramp_in_linear_light() -> None:
    # Two tiles that disagree (0 vs 255): across the seam the output moves monotonically between
    # them, and in the middle it is the average of the two in linear light, not in sRGB.
    plan = TilePlan.for_image(192, 64, 128, 64)
    assert plan.xs == (0, 64)
    tiles = [(t, np.full((128, 128, 3), 255 * t.col, np.uint8)) for t in plan]
    out = blend_tiles(plan, tiles, ramp="linear")[0, :, 0].astype(int)
    assert (out[:64] == 0).all() and (out[128:] == 255).all()
    assert (np.diff(out[64:128]) >= 0).all()
    middle = (out[95] + out[96]) / 2 / 255
    assert abs(float(srgb_to_linear(np.float32(middle))) - 0.5) < 0.02


def test_bands_stay_within_one_tile_row() -> None:
    image = np.random.default_rng(0).integers(0, 256, (1000, 300, 3), dtype=np.uint8)
    plan = TilePlan.for_image(300, 1000, 128, 32)
    blender = TileBlender(plan)
    bands = []
    for tile, pixels in unchanged(image, plan):
        bands += blender.add(tile, pixels)
        assert blender.accumulator_rows <= 128
    assert blender.done and blender.missing() == []
    assert [b.y for b in bands] == sorted(b.y for b in bands)
    np.testing.assert_array_equal(np.concatenate([b.pixels for b in bands]), image)


def test_tiles_in_any_order_give_the_same_result() -> None:
    image = photo("astronaut")[:300, :260]
    plan = TilePlan.for_image(260, 300, 96, 20)
    reverse = list(unchanged(image, plan))[::-1]
    np.testing.assert_array_equal(blend_tiles(plan, reverse), image)


def test_blender_refuses_bad_tiles() -> None:
    plan = TilePlan.for_image(100, 100, 64, 8)
    blender = TileBlender(plan)
    tile = plan.tile("0_0")
    with pytest.raises(InvalidInput, match="shape"):
        blender.add(tile, np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(InvalidInput, match="not part of this plan"):
        blender.add(Tile(0, 1, 30, 0, 64, 64), np.zeros((64, 64, 3), np.uint8))
    blender.add(tile, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(InvalidInput, match="added twice"):
        blender.add(tile, np.zeros((64, 64, 3), np.uint8))


def test_missing_tiles_are_reported() -> None:
    plan = TilePlan.for_image(100, 100, 64, 8)
    tiles = list(unchanged(np.zeros((100, 100, 3), np.uint8), plan))[:-1]
    with pytest.raises(InvalidInput, match="1 tile\\(s\\) never arrived: 1_1"):
        blend_tiles(plan, tiles)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"scale": 0}, "scale"), ({"channels": 0}, "channels"), ({"ramp": "gauss"}, "ramp")],
)
def test_blender_refuses_bad_options(options: dict, field: str) -> None:
    with pytest.raises(InvalidInput, match=f"`{field}`"):
        TileBlender(TilePlan.for_image(10, 10, 8, 2), **options)


def test_margins_drop_the_context_and_still_sum_to_one() -> None:
    starts = (0, 80, 160)  # tiles of 128, seams of 48
    margin = 10
    first = axis_weights(starts, 128, 0, margin=margin)
    middle = axis_weights(starts, 128, 1, margin=margin)
    assert first[0] == 1  # the image border keeps its pixels
    assert (first[-margin:] == 0).all() and (middle[:margin] == 0).all()
    total = np.zeros(288, np.float32)
    for index, start in enumerate(starts):
        total[start : start + 128] += axis_weights(starts, 128, index, margin=margin)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_margin_needs_room_in_the_seam() -> None:
    with pytest.raises(InvalidInput, match="cannot hold two margins"):
        axis_weights((0, 100), 128, 0, margin=14)


@given(cases(), st.integers(1, 12))
@settings(max_examples=60, deadline=None)
def test_unchanged_tiles_with_margins_reproduce_the_input(case, margin: int) -> None:
    width, height, tile, _, kind, seed = case
    tile = max(tile, 2 * margin + 2)
    overlap = 2 * margin + 1
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    plan = TilePlan.for_image(width, height, tile, overlap)
    out = blend_tiles(plan, unchanged(image, plan), ramp=kind, margin=margin)
    assert np.abs(out.astype(int) - image).max() <= 1


@pytest.mark.parametrize("margin", [0, 3])
def test_pixels_only_one_tile_covers_are_kept_exactly_as_the_float_path_gives(margin: int) -> None:
    # Tiles that disagree everywhere: blending integer tiles (which pastes the parts only one
    # tile covers) must equal blending the same tiles as floats (all through the accumulator).
    rng = np.random.default_rng(5)
    plan = TilePlan.for_image(150, 110, 48, 2 * margin + 9)
    tiles = [(t, rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for t in plan]
    as_uint8 = blend_tiles(plan, tiles, margin=margin)
    as_float = blend_tiles(plan, [(t, p.astype(np.float32) / 255) for t, p in tiles], margin=margin)
    assert np.abs(as_uint8.astype(int) - as_float).max() <= 1
