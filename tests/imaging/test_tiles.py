from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assetbox.errors import InvalidInput
from assetbox.imaging import TilePlan, extract_tile


@st.composite
def plans(draw: st.DrawFn, max_size: int = 5000) -> tuple[int, int, int, int]:
    width = draw(st.integers(1, max_size))
    height = draw(st.integers(1, max_size))
    tile = draw(st.integers(2, 1024))
    overlap = draw(st.integers(0, tile - 1))
    return width, height, tile, overlap


@given(plans())
@settings(max_examples=400, deadline=None)
def test_plan_covers_the_image_with_equal_flush_tiles(args: tuple[int, int, int, int]) -> None:
    width, height, tile, overlap = args
    plan = TilePlan.for_image(width, height, tile, overlap)
    assert len(plan) == plan.rows * plan.cols
    tiles = list(plan) if len(plan) <= 20_000 else plan.row_tiles(plan.rows - 1)
    assert {(t.width, t.height) for t in tiles} == {(tile, tile)}  # all the same size
    assert len({t.id for t in tiles}) == len(tiles)
    stride = tile - overlap
    for length, starts in ((width, plan.xs), (height, plan.ys)):
        assert starts[0] == 0
        if length <= tile:
            assert starts == (0,)  # one padded tile
            continue
        assert starts[-1] + tile == length  # flush with the far border: no partial tile
        steps = np.diff(starts)
        assert (steps > 0).all()  # strictly increasing: no duplicate tiles
        assert (steps <= stride).all()  # overlap >= requested everywhere: covered, no gaps
        assert steps.max() - steps.min() <= 1  # slack spread evenly over the seams
        assert len(starts) == math.ceil((length - tile) / stride) + 1  # the fewest tiles


@given(plans(max_size=300))
@settings(max_examples=200, deadline=None)
def test_plan_covers_every_pixel(args: tuple[int, int, int, int]) -> None:
    width, height, tile, overlap = args
    plan = TilePlan.for_image(width, height, tile, overlap)
    covered = np.zeros((height, width), dtype=np.int32)
    for t in plan:
        assert 0 <= t.x < width and 0 <= t.y < height
        assert t.x + t.width <= width or plan.width < tile
        assert t.y + t.height <= height or plan.height < tile
        covered[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert covered.min() >= 1


@given(plans())
@settings(max_examples=200, deadline=None)
def test_seams_overlap_at_least_as_requested(args: tuple[int, int, int, int]) -> None:
    width, height, tile, overlap = args
    plan = TilePlan.for_image(width, height, tile, overlap)
    for axis in ("x", "y"):
        assert all(seam >= overlap for seam in plan.seams(axis))  # type: ignore[arg-type]


def test_8k_with_1024_tiles_is_9_by_9() -> None:
    plan = TilePlan.for_image(8192, 8192, 1024, 128)
    assert len(plan) == 81
    assert plan.xs == tuple(range(0, 7169, 896))  # exactly stride = tile - overlap
    assert plan.tile("8_8").x == 7168


def test_small_image_gets_one_padded_tile() -> None:
    plan = TilePlan.for_image(300, 200, 512, 64)
    assert len(plan) == 1 and plan.padded
    (tile,) = plan
    assert (tile.id, tile.x, tile.y, tile.width, tile.height) == ("0_0", 0, 0, 512, 512)


def test_rectangular_tiles() -> None:
    plan = TilePlan.for_image(1000, 500, (256, 128), 32)
    assert {(t.width, t.height) for t in plan} == {(256, 128)}
    assert plan.xs[-1] + 256 == 1000 and plan.ys[-1] + 128 == 500


def test_tile_ids_are_row_col() -> None:
    plan = TilePlan.for_image(300, 200, 128, 16)
    assert [t.id for t in plan.row_tiles(1)] == ["1_0", "1_1", "1_2"]
    assert plan.tile("1_2") == plan.row_tiles(1)[2]


@pytest.mark.parametrize("tile_id", ["1", "a_b", "9_0", "0_-1", "0_1_2"])
def test_bad_tile_ids_are_refused(tile_id: str) -> None:
    plan = TilePlan.for_image(300, 200, 128, 16)
    with pytest.raises(InvalidInput, match="tile"):
        plan.tile(tile_id)


@pytest.mark.parametrize(
    ("width", "height", "tile", "overlap", "field"),
    [
        (0, 10, 8, 0, "width"),
        (10, -1, 8, 0, "height"),
        (10, 10, 0, 0, "tile"),
        (10, 10, 8, -1, "overlap"),
        (10, 10, 8, 8, "overlap"),
    ],
)
def test_bad_plans_name_the_field(
    width: int, height: int, tile: int, overlap: int, field: str
) -> None:
    with pytest.raises(InvalidInput, match=f"`{field}`") as info:
        TilePlan.for_image(width, height, tile, overlap)
    assert info.value.field == field


def test_extract_tile_pads_by_mirroring() -> None:
    image = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    (tile,) = TilePlan.for_image(5, 3, 8, 2)
    pixels = extract_tile(image, tile)
    assert pixels.shape == (8, 8)
    np.testing.assert_array_equal(pixels[:3, :5], image)
    np.testing.assert_array_equal(pixels[3, :5], image[1])  # reflect: row 3 mirrors row 1
    assert extract_tile(
        np.zeros((1, 1, 3), np.uint8), TilePlan.for_image(1, 1, 4, 0).tile("0_0")
    ).shape == (4, 4, 3)


def test_extract_tile_inside_is_a_view() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    tile = TilePlan.for_image(64, 64, 32, 8).tile("1_1")
    assert np.shares_memory(extract_tile(image, tile), image)


@pytest.mark.parametrize("length", [256, 264, 1200, 2048, 8192, 16384, 1000, 777])
@pytest.mark.parametrize(("tile", "overlap"), [(256, 64), (1024, 128), (512, 0), (128, 120)])
def test_aligned_plans_start_on_the_grid_and_keep_the_overlap(length, tile, overlap) -> None:
    plan = TilePlan.for_image(length, 64, tile, overlap, align=8)
    if length > tile:
        assert plan.xs[0] == 0 and plan.xs[-1] + tile == length
        assert min(plan.seams("x")) >= overlap
        if (length - tile) % 8 == 0:
            assert all(x % 8 == 0 for x in plan.xs)
            # no more tiles than needed at the largest aligned stride
            assert len(plan.xs) == -(-(length - tile) // ((tile - overlap) // 8 * 8)) + 1
