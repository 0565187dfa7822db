"""The seam score of a tiled result: how much stronger the gradient is across tile seams.

Where two neighbouring tiles of a `TilePlan` overlap (columns ``b .. e`` with ``b`` the later
tile's first pixel and ``e`` the earlier tile's end), a tile's contribution can end on one of
three lines, and a mismatch between the tiles shows as a jump there:

- ``start``, at ``b``: a hard paste in tile order (the later tile overwrites the earlier);
- ``end``, at ``e``: a hard paste in reverse order, or "first tile wins";
- ``centre``, at ``(b + e) // 2``: each tile cropped to its half of the overlap.

A feathered blend (`TileBlender`) has no such line: the weights ramp over the overlap, so a
mismatch becomes a gentle slope that none of the three bands sees as a jump. (A ramp only a few
pixels long, from a small overlap or a wide margin, is nearly a jump and scores like one.)

For each kind of line, the score compares the gradient *across* the line (horizontal differences
for a vertical seam, vertical for a horizontal one) within ``band`` pixels on each side with the
same gradient in the flanks just beyond the band (``4 * band`` pixels more on each side). The
flanks see the same content as the band, which a global reference does not: on scikit-image's
seam-free photos (astronaut, coffee, chelsea; tiles of 100 .. 300 px), "band / whole image"
ranged 0.7 .. 1.5, depending on what the seam lines happened to cross, and "band / flanks"
0.9 .. 1.1.

Before that, the gradient is taken out of any structure that repeats every ``period`` pixels:
each column gap's (row gap's) gradient is divided by the median over the gaps at its phase
(``k mod period``) and multiplied by the median over all gaps. An integer resampling (a 2x, 4x or
8x Lanczos pre-upscale, or two of them in a row) makes gradients that repeat with its factor, and
the lines of a plan whose tiles start on multiples of 8 all sit at the same phase of it, so the
bands would see a stronger (or weaker) phase than their flanks: a seam-free 16x Lanczos
enlargement to 8192 px (its gradient by column mod 16 ranges 0.53 .. 1.45 of its mean) scored
1.32 without this step and 0.97 with it. A median, because the seams themselves are a few gaps
at one phase and must not set that phase's level. On images without such structure the medians
of all phases are about equal and the step changes little.

`seam_energy_ratio` is the largest of the three, so a seam scores fully wherever it lies: about
1 when no seam shows, well above 1 for a hard seam.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np

from assetbox.errors import InvalidInput
from assetbox.imaging.tiles import TilePlan

SeamLine = Literal["start", "centre", "end"]
SEAM_LINES: tuple[SeamLine, ...] = ("start", "centre", "end")

# The flanks reach this many bands beyond the band on each side of a line.
_FLANK_BANDS = 4
# Structure repeating every this many pixels is taken out of the gradient: a multiple of the
# 2x, 4x, 8x and 16x integer resampling factors.
PERIOD = 16
# Rows turned into float per step: bounds the temporaries for large images.
_CHUNK_ROWS = 256


def _lines(starts: tuple[int, ...], size: int, scale: int, kind: SeamLine) -> list[int]:
    """Where each seam's `kind` line lies: the index of the first pixel after it."""
    lines = []
    for a, b in itertools.pairwise(starts):
        end = a + size
        at = {"start": 2 * b, "end": 2 * end, "centre": b + end}[kind]
        lines.append(at * scale // 2)
    return lines


def _band_and_flanks(count: int, lines: list[int], band: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks over `count` neighbour differences: within `band` px of a line, and its flanks.

    Difference ``k`` is between pixels ``k`` and ``k + 1``, so a line before pixel ``p`` is
    difference ``p - 1``; the ``2 * band`` pixels straddling it hold ``2 * band - 1`` differences.
    """
    near = np.zeros(count, dtype=bool)
    reach = np.zeros(count, dtype=bool)
    flank = _FLANK_BANDS * band
    for p in lines:
        k = p - 1
        near[max(k - band + 1, 0) : max(k + band, 0)] = True
        reach[max(k - band + 1 - flank, 0) : max(k + band + flank, 0)] = True
    return near, reach & ~near


def _gradient_profiles(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of |horizontal differences| per column gap and |vertical differences| per row gap."""
    height = image.shape[0]
    across_x = np.zeros(image.shape[1] - 1, dtype=np.float64)
    across_y = np.zeros(height - 1, dtype=np.float64)
    for top in range(0, height, _CHUNK_ROWS):
        # One row more than the chunk, so the vertical difference to the next chunk is counted.
        rows = image[top : top + _CHUNK_ROWS + 1].astype(np.float32)
        own = rows[:_CHUNK_ROWS]
        across_x += np.abs(np.diff(own, axis=1)).sum(axis=(0, 2), dtype=np.float64)
        if len(rows) > 1:
            across_y[top : top + len(rows) - 1] = np.abs(np.diff(rows, axis=0)).sum(
                axis=(1, 2), dtype=np.float64
            )
    return across_x, across_y


def _without_period(profile: np.ndarray, period: int) -> np.ndarray:
    """`profile` with each entry scaled by (median of all) / (median of those at its phase)."""
    phase = np.arange(len(profile)) % period
    level = np.array([np.median(profile[phase == j]) for j in range(min(period, len(profile)))])
    overall = np.median(profile)
    if overall <= 0 or (level <= 0).any():
        return profile  # a phase without gradient: nothing to rescale it by
    return profile * (overall / level[phase])


def seam_energy_ratios(
    image: np.ndarray, plan: TilePlan, band: int = 2, period: int = PERIOD
) -> dict[SeamLine, float]:
    """Per kind of seam line, mean |gradient| across it in the band ÷ that in the flanks.

    `image` is ``(H, W)`` or ``(H, W, C)`` of any dtype, the size of the plan's image or an
    integer multiple of it (an upscaled result); gradients are averaged over channels. A ratio
    is 1.0 where band and flanks are both flat, and infinite where only the band has gradient.
    `period` (pixels of `image`) is the structure taken out of the gradient first; 1 keeps it.

    Raises:
        InvalidInput: `band` or `period` below 1, an image that is not the plan's size times
            an integer, or a plan with a single tile (nothing to measure).
    """
    if band < 1:
        raise InvalidInput(f"`band` must be at least 1 but is {band}", field="band")
    if period < 1:
        raise InvalidInput(f"`period` must be at least 1 but is {period}", field="period")
    if image.ndim not in (2, 3):
        raise InvalidInput(
            f"`image` must be (H, W) or (H, W, C) but has shape {image.shape}", field="image"
        )
    height, width = image.shape[:2]
    scale = width // plan.width
    if scale < 1 or (width, height) != (plan.width * scale, plan.height * scale):
        raise InvalidInput(
            f"`image` must be {plan.width}x{plan.height} times an integer but is {width}x{height}",
            field="image",
        )
    if len(plan) == 1:
        raise InvalidInput("`plan` has a single tile, so there is no seam to measure", field="plan")
    if image.ndim == 2:
        image = image[..., None]
    across_x, across_y = (_without_period(p, period) for p in _gradient_profiles(image))
    ratios: dict[SeamLine, float] = {}
    for kind in SEAM_LINES:
        # Vertical seams (between columns) cut horizontal differences, each summed over H rows;
        # horizontal seams cut vertical ones, each summed over W columns.
        near_x, flank_x = _band_and_flanks(
            width - 1, _lines(plan.xs, plan.tile_width, scale, kind), band
        )
        near_y, flank_y = _band_and_flanks(
            height - 1, _lines(plan.ys, plan.tile_height, scale, kind), band
        )
        near = across_x[near_x].sum() + across_y[near_y].sum()
        near_n = near_x.sum() * height + near_y.sum() * width
        flank = across_x[flank_x].sum() + across_y[flank_y].sum()
        flank_n = flank_x.sum() * height + flank_y.sum() * width
        near_mean = near / near_n
        flank_mean = flank / flank_n if flank_n else 0.0
        if flank_mean > 0:
            ratios[kind] = float(near_mean / flank_mean)
        else:
            ratios[kind] = 1.0 if near_mean == 0 else float("inf")
    return ratios


def seam_energy_ratio(
    image: np.ndarray, plan: TilePlan, band: int = 2, period: int = PERIOD
) -> float:
    """The seam score of a tiled result: the largest of `seam_energy_ratios`.

    About 1 when no seam shows; a hard seam (a jump where a tile's contribution ends) gives
    well above 1.

    Raises:
        InvalidInput: as `seam_energy_ratios`.
    """
    return max(seam_energy_ratios(image, plan, band, period).values())
