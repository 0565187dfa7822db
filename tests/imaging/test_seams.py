from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from assetbox.errors import InvalidInput
from assetbox.imaging import (
    Tile,
    TilePlan,
    blend_tiles,
    extract_tile,
    seam_energy_ratio,
    seam_energy_ratios,
    seams,
)
from tests.utils.images import photo

# (tile, overlap) on the 512x512 astronaut: 5x5, 4x4, 3x3 and 6x6 grids, overlaps 16..96 px.
PLANS = [(128, 32), (192, 64), (256, 64), (100, 16)]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return photo("astronaut")


def plan_for(image: np.ndarray, tile: int, overlap: int) -> TilePlan:
    return TilePlan.for_image(image.shape[1], image.shape[0], tile, overlap)


def offset_tiles(image: np.ndarray, plan: TilePlan, seed: int = 0) -> list[tuple[Tile, np.ndarray]]:
    """Each tile of `image` shifted by its own constant colour.

    A checkerboard of +-25 levels plus up to +-10 of noise a channel: every tile's offset is its
    own, and neighbours always differ by at least 30 levels, so every seam has a jump to show.
    """
    rng = np.random.default_rng(seed)
    tiles = []
    for tile in plan:
        offset = 25 * (-1) ** (tile.row + tile.col) + rng.integers(-10, 11, size=3)
        pixels = extract_tile(image, tile).astype(np.int16) + offset
        tiles.append((tile, np.clip(pixels, 0, 255).astype(np.uint8)))
    return tiles


def hard_paste(image: np.ndarray, tiles: list[tuple[Tile, np.ndarray]]) -> np.ndarray:
    """Tiles pasted whole, one over the other, in the order given: no feathering."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    for tile, pixels in tiles:
        out[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width] = pixels[
            : height - tile.y, : width - tile.x
        ]
    return out


def centre_paste(image: np.ndarray, plan: TilePlan, tiles: list[tuple[Tile, np.ndarray]]):
    """Each tile cropped to its half of every overlap, then pasted: the cut is mid-overlap."""

    def cuts(starts: tuple[int, ...], size: int, index: int, length: int) -> tuple[int, int]:
        lo = 0 if index == 0 else (starts[index] + starts[index - 1] + size) // 2
        hi = length if index == len(starts) - 1 else (starts[index + 1] + starts[index] + size) // 2
        return lo, hi

    out = np.zeros_like(image)
    for tile, pixels in tiles:
        x0, x1 = cuts(plan.xs, plan.tile_width, tile.col, plan.width)
        y0, y1 = cuts(plan.ys, plan.tile_height, tile.row, plan.height)
        out[y0:y1, x0:x1] = pixels[y0 - tile.y : y1 - tile.y, x0 - tile.x : x1 - tile.x]
    return out


@pytest.mark.parametrize(("tile", "overlap"), PLANS)
def test_a_seam_free_photo_scores_about_one(astronaut, tile: int, overlap: int) -> None:
    plan = plan_for(astronaut, tile, overlap)
    assert 0.8 <= seam_energy_ratio(astronaut, plan) <= 1.2
    for ratio in seam_energy_ratios(astronaut, plan).values():
        assert 0.8 <= ratio <= 1.2


@pytest.mark.parametrize(("tile", "overlap"), PLANS)
def test_hard_pasted_tiles_score_high_where_the_later_tile_starts(
    astronaut, tile: int, overlap: int
) -> None:
    plan = plan_for(astronaut, tile, overlap)
    tiles = offset_tiles(astronaut, plan)
    ratios = seam_energy_ratios(hard_paste(astronaut, tiles), plan)
    assert ratios["start"] > 1.5
    assert max(ratios, key=ratios.__getitem__) == "start"
    assert seam_energy_ratio(hard_paste(astronaut, tiles), plan) == ratios["start"]


@pytest.mark.parametrize(("tile", "overlap"), PLANS)
def test_each_kind_of_paste_shows_on_its_own_line(astronaut, tile: int, overlap: int) -> None:
    plan = plan_for(astronaut, tile, overlap)
    tiles = offset_tiles(astronaut, plan)
    reverse = seam_energy_ratios(hard_paste(astronaut, tiles[::-1]), plan)  # earlier tiles win
    assert reverse["end"] > 1.5 and max(reverse, key=reverse.__getitem__) == "end"
    halves = seam_energy_ratios(centre_paste(astronaut, plan, tiles), plan)
    assert halves["centre"] > 1.5 and max(halves, key=halves.__getitem__) == "centre"


@pytest.mark.parametrize("ramp", ["cosine", "linear"])
@pytest.mark.parametrize(("tile", "overlap"), PLANS)
def test_feathered_blend_hides_the_seams_a_hard_paste_shows(
    astronaut, tile: int, overlap: int, ramp: str
) -> None:
    plan = plan_for(astronaut, tile, overlap)
    tiles = offset_tiles(astronaut, plan)
    hard = seam_energy_ratio(hard_paste(astronaut, tiles), plan)
    feathered = seam_energy_ratio(blend_tiles(plan, tiles, ramp=ramp), plan)
    assert feathered <= 1.2
    assert feathered < hard - 0.3


def test_dtype_and_channels_do_not_matter(astronaut) -> None:
    plan = plan_for(astronaut, 128, 32)
    pasted = hard_paste(astronaut, offset_tiles(astronaut, plan))
    ratio = seam_energy_ratio(pasted, plan)
    assert seam_energy_ratio(pasted / 255.0, plan) == pytest.approx(ratio, rel=1e-5)
    assert seam_energy_ratio(pasted.astype(np.uint16) * 257, plan) == pytest.approx(ratio, rel=1e-5)
    red = pasted[..., 0]  # one channel, 2-D: its offsets are as large as in RGB
    assert seam_energy_ratio(red, plan) > 1.5
    assert 0.8 <= seam_energy_ratio(astronaut[..., 0], plan) <= 1.2


def test_an_upscaled_result_is_measured_against_the_input_plan(astronaut) -> None:
    small = astronaut[::2, ::2]
    plan = plan_for(small, 64, 16)
    pasted = hard_paste(small, offset_tiles(small, plan))

    def upscale(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(pixels).resize((512, 512), Image.Resampling.BICUBIC))

    assert 0.8 <= seam_energy_ratio(upscale(small), plan) <= 1.2
    assert seam_energy_ratio(upscale(pasted), plan) > 1.5


def test_structure_of_an_integer_enlargement_is_not_scored_as_a_seam(astronaut) -> None:
    # 16x Lanczos (128 -> 2048): gradients repeat every 16 px, and the tiles of an 8-aligned
    # plan start at multiples of 32 (stride 224), so every seam line sits at one phase of them.
    small = Image.fromarray(astronaut).resize((128, 128), Image.Resampling.LANCZOS)
    enlarged = np.asarray(small.resize((2048, 2048), Image.Resampling.LANCZOS))
    plan = TilePlan.for_image(2048, 2048, 256, 32, align=8)
    assert {x % 16 for x in plan.xs} == {0}
    assert seam_energy_ratio(enlarged, plan, period=1) > 1.08  # the phase, kept, scores
    assert 0.95 <= seam_energy_ratio(enlarged, plan) <= 1.03
    assert seam_energy_ratio(hard_paste(enlarged, offset_tiles(enlarged, plan)), plan) > 1.5


def test_flat_images_score_one_and_a_jump_on_flat_tiles_is_infinite() -> None:
    flat = np.full((96, 96, 3), 128, dtype=np.uint8)
    plan = TilePlan.for_image(96, 96, 64, 32)
    assert seam_energy_ratio(flat, plan) == 1.0
    stepped = flat.copy()
    stepped[:, 32:] += 10  # the second column of tiles starts at x = 32
    assert seam_energy_ratios(stepped, plan)["start"] == float("inf")


@pytest.mark.parametrize("rows", [1, 7, 100])
def test_chunked_rows_give_the_same_score(astronaut, monkeypatch, rows: int) -> None:
    plan = plan_for(astronaut, 128, 32)
    pasted = hard_paste(astronaut, offset_tiles(astronaut, plan))
    whole = seam_energy_ratios(pasted, plan)
    monkeypatch.setattr(seams, "_CHUNK_ROWS", rows)
    chunked = seam_energy_ratios(pasted, plan)
    assert chunked == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize(
    ("image", "band", "field"),
    [
        (np.zeros((64, 64, 3), np.uint8), 0, "band"),
        (np.zeros((64, 60, 3), np.uint8), 2, "image"),
        (np.zeros((128, 96, 3), np.uint8), 2, "image"),  # 2x high, 1.5x wide
        (np.zeros((64,), np.uint8), 2, "image"),
    ],
)
def test_bad_arguments_are_refused(image: np.ndarray, band: int, field: str) -> None:
    plan = TilePlan.for_image(64, 64, 32, 8)
    with pytest.raises(InvalidInput) as info:
        seam_energy_ratio(image, plan, band)
    assert info.value.field == field


def test_a_period_below_one_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        seam_energy_ratio(np.zeros((64, 64)), TilePlan.for_image(64, 64, 32, 8), period=0)
    assert info.value.field == "period"


def test_a_single_tile_has_no_seam_to_measure() -> None:
    with pytest.raises(InvalidInput, match="single tile"):
        seam_energy_ratio(np.zeros((32, 32)), TilePlan.for_image(32, 32, 64, 8))
