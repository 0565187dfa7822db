"""Seam-free blending of processed tiles back into one image, assembled in horizontal bands.

Each tile is weighted by a mask that ramps across its overlap with each neighbour (cosine or
linear). Weighted colour and the weight itself are accumulated in float32, in linear light, and the
sum is divided by the weight sum, so the weights at every pixel add up to one exactly and unchanged
tiles reproduce the input. Rows are handed out as finished `Band`s as soon as no tile still to come
can touch them, so the float accumulator never holds more than about one tile row of the canvas.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from assetbox.errors import InvalidInput
from assetbox.imaging.tiles import Tile, TilePlan
from assetbox.imaging.transfer import Transfer, from_working, to_working

Ramp = Literal["cosine", "linear"]
RAMPS: tuple[Ramp, ...] = ("cosine", "linear")

# Rows converted per step when a band is encoded: bounds the float temporaries of the sRGB encode.
_ENCODE_ROWS = 64


def ramp(length: int, kind: Ramp = "cosine") -> np.ndarray:
    """`length` weights rising from near 0 to near 1, sampled at pixel centres.

    ``ramp(n) + ramp(n)[::-1] == 1`` for both kinds, so two tiles meeting over an overlap of
    `n` pixels share every pixel exactly; no weight is ever 0, so no pixel is left without weight.
    """
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if kind == "linear":
        values = t
    elif kind == "cosine":
        values = 0.5 - 0.5 * np.cos(np.pi * t)
    else:
        raise InvalidInput(
            f"`ramp` must be one of {', '.join(RAMPS)} but is {kind!r}", field="ramp"
        )
    return values.astype(np.float32)


def axis_weights(
    starts: tuple[int, ...],
    size: int,
    index: int,
    scale: int = 1,
    kind: Ramp = "cosine",
    margin: int = 0,
) -> np.ndarray:
    """1-D weights (length ``size * scale``) of tile `index` along an axis with tile `starts`.

    The weight ramps over each seam's overlap. With a `margin`, the outer `margin` pixels of a
    seam side get weight 0 (they are context for the model, not output) and the ramp covers what
    is left of the overlap; sides on the image border keep their pixels.

    Raises:
        InvalidInput: a seam narrower than twice the margin.
    """
    weights = np.ones(size * scale, dtype=np.float32)
    cut = margin * scale
    if index > 0:
        overlap = (starts[index - 1] + size - starts[index]) * scale
        length = _ramp_length(overlap, cut)
        weights[:cut] = 0
        weights[cut : cut + length] = np.minimum(weights[cut : cut + length], ramp(length, kind))
    if index < len(starts) - 1:
        overlap = (starts[index] + size - starts[index + 1]) * scale
        length = _ramp_length(overlap, cut)
        end = size * scale - cut
        weights[end:] = 0
        weights[end - length : end] = np.minimum(
            weights[end - length : end], ramp(length, kind)[::-1]
        )
    return weights


def _ramp_length(overlap: int, cut: int) -> int:
    length = overlap - 2 * cut
    if length < 0 or (length == 0 and cut > 0):
        raise InvalidInput(
            f"a seam of {overlap} px cannot hold two margins of {cut} px and a blend",
            field="overlap",
        )
    return length


def _nonzero_span(weights: np.ndarray) -> tuple[int, int]:
    nonzero = np.flatnonzero(weights)
    return int(nonzero[0]), int(nonzero[-1]) + 1


def _exclusive_spans(
    starts: tuple[int, ...],
    spans: list[tuple[int, int]],
    weights: list[np.ndarray],
    scale: int,
) -> list[tuple[int, int]]:
    """Per tile, the local range where its weight is 1 and no other tile has any weight."""
    result = []
    for index, start in enumerate(starts):
        ones = np.flatnonzero(weights[index] == 1)
        if ones.size == 0:
            result.append((0, 0))
            continue
        lo, hi = int(ones[0]), int(ones[-1]) + 1
        for other, other_start in enumerate(starts):
            if other < index:
                lo = max(lo, (other_start - start) * scale + spans[other][1])
            elif other > index:
                hi = min(hi, (other_start - start) * scale + spans[other][0])
        result.append((lo, hi) if lo < hi else (0, 0))
    return result


@dataclass(frozen=True)
class Band:
    """Finished output rows ``y .. y + len(pixels)`` of the blended image."""

    y: int
    pixels: np.ndarray


class TileBlender:
    """Accumulates processed tiles of a `TilePlan` and hands out finished rows as `Band`s.

    A `margin` (in plan pixels) leaves out the outer pixels of every inner tile edge: a model
    that needs context sees them, but only the tile's centre counts (see `axis_weights`).

    Tiles may arrive in any order within a row; memory stays at about one tile row when rows
    arrive top to bottom (a later row may come early, at the cost of a taller accumulator).
    Processed tiles are ``scale`` times the plan's tile size (e.g. 4 for a 4x upscaler).
    """

    def __init__(
        self,
        plan: TilePlan,
        *,
        scale: int = 1,
        channels: int = 3,
        ramp: Ramp = "cosine",
        transfer: Transfer = "srgb",
        dtype: np.dtype | type = np.uint8,
        margin: int = 0,
    ) -> None:
        if scale < 1:
            raise InvalidInput(f"`scale` must be at least 1 but is {scale}", field="scale")
        if channels < 1:
            raise InvalidInput(f"`channels` must be at least 1 but is {channels}", field="channels")
        if ramp not in RAMPS:
            raise InvalidInput(
                f"`ramp` must be one of {', '.join(RAMPS)} but is {ramp!r}", field="ramp"
            )
        self.plan = plan
        self.scale = scale
        self.channels = channels
        self.transfer: Transfer = transfer
        self.dtype = np.dtype(dtype)
        self.width = plan.width * scale
        self.height = plan.height * scale
        self._tile_w = plan.tile_width * scale
        self._tile_h = plan.tile_height * scale
        if margin < 0:
            raise InvalidInput(f"`margin` must be 0 or more but is {margin}", field="margin")
        self._wx = [
            axis_weights(plan.xs, plan.tile_width, i, scale, ramp, margin) for i in range(plan.cols)
        ]
        self._wy = [
            axis_weights(plan.ys, plan.tile_height, i, scale, ramp, margin)
            for i in range(plan.rows)
        ]
        self._span_x = [_nonzero_span(w) for w in self._wx]
        self._span_y = [_nonzero_span(w) for w in self._wy]
        self._own_x = _exclusive_spans(plan.xs, self._span_x, self._wx, scale)
        self._own_y = _exclusive_spans(plan.ys, self._span_y, self._wy, scale)
        self._missing = [set(range(plan.cols)) for _ in range(plan.rows)]
        self._flushed = 0  # output rows already handed out
        capacity = min(self._tile_h, self.height)
        self._acc = np.zeros((capacity, self.width, channels), dtype=np.float32)
        self._wsum = np.zeros((capacity, self.width), dtype=np.float32)
        # Pixels only one tile covers, at weight 1, need no float work: they are kept as they
        # came (in `_direct`, rows aligned with `_acc`) and pasted over the band when it is done.
        self._direct = np.zeros((capacity, self.width, channels), dtype=self.dtype)
        self._rects: list[tuple[int, int, int, int]] = []  # (y0, y1, x0, x1) in `_direct`

    @property
    def done(self) -> bool:
        """True once every row has been handed out."""
        return self._flushed >= self.height

    @property
    def accumulator_rows(self) -> int:
        """Rows of float accumulator held now (about one tile row when rows arrive in order)."""
        return int(self._acc.shape[0])

    def missing(self) -> list[str]:
        """Ids of the tiles not added yet, in row-major order."""
        return [f"{r}_{c}" for r, cols in enumerate(self._missing) for c in sorted(cols)]

    def add(self, tile: Tile, pixels: np.ndarray) -> list[Band]:
        """Add one processed tile; returns the bands it finished (possibly none).

        `pixels` is ``(tile_h * scale, tile_w * scale, channels)`` (or 2-D for one channel),
        ``uint8``, ``uint16`` or float in 0..1 (sRGB-encoded when ``transfer="srgb"``).

        Raises:
            InvalidInput: a tile not of this plan, added twice, or of the wrong shape.
        """
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        expected = (self._tile_h, self._tile_w, self.channels)
        if pixels.shape != expected:
            raise InvalidInput(
                f"tile {tile.id} must have shape {expected} but has {pixels.shape}", field="tile"
            )
        if self.plan.tile(tile.id) != tile:
            raise InvalidInput(f"tile {tile!r} is not part of this plan", field="tile")
        if tile.col not in self._missing[tile.row]:
            raise InvalidInput(f"tile {tile.id} was added twice", field="tile")

        # Only the part with weight counts: margins (weight 0) and the padding past the border
        # are cut off before any float work.
        oy, ox = tile.y * self.scale, tile.x * self.scale
        (r0, r1), (c0, c1) = self._span_y[tile.row], self._span_x[tile.col]
        r1, c1 = min(r1, self.height - oy), min(c1, self.width - ox)
        self._reserve(oy + r1)
        (e0, e1), (f0, f1) = self._own_y[tile.row], self._own_x[tile.col]
        e1, f1 = min(e1, r1), min(f1, c1)
        if e0 < e1 and f0 < f1 and pixels.dtype == self.dtype:
            top = oy - self._flushed
            self._direct[top + e0 : top + e1, ox + f0 : ox + f1] = pixels[e0:e1, f0:f1]
            self._wsum[top + e0 : top + e1, ox + f0 : ox + f1] = 1  # keeps the division finite
            self._rects.append((oy + e0, oy + e1, ox + f0, ox + f1))
            strips = [(r0, e0, c0, c1), (e1, r1, c0, c1), (e0, e1, c0, f0), (e0, e1, f1, c1)]
        else:
            strips = [(r0, r1, c0, c1)]
        for a, b, c, d in strips:
            if a < b and c < d:
                self._accumulate(tile, pixels, a, b, c, d)
        self._missing[tile.row].discard(tile.col)
        return self._flush()

    def _accumulate(self, tile: Tile, pixels: np.ndarray, r0: int, r1: int, c0: int, c1: int):
        weight = self._wy[tile.row][r0:r1, None] * self._wx[tile.col][None, c0:c1]
        top = tile.y * self.scale - self._flushed
        left = tile.x * self.scale
        work = to_working(pixels[r0:r1, c0:c1], self.transfer)
        work *= weight[..., None]
        self._acc[top + r0 : top + r1, left + c0 : left + c1] += work
        self._wsum[top + r0 : top + r1, left + c0 : left + c1] += weight

    def _reserve(self, bottom: int) -> None:
        needed = bottom - self._flushed
        if needed <= self._acc.shape[0]:
            return
        acc = np.zeros((needed, self.width, self.channels), dtype=np.float32)
        wsum = np.zeros((needed, self.width), dtype=np.float32)
        direct = np.zeros((needed, self.width, self.channels), dtype=self.dtype)
        acc[: self._acc.shape[0]] = self._acc
        wsum[: self._wsum.shape[0]] = self._wsum
        direct[: self._direct.shape[0]] = self._direct
        self._acc, self._wsum, self._direct = acc, wsum, direct

    def _flush(self) -> list[Band]:
        incomplete = next((r for r, missing in enumerate(self._missing) if missing), None)
        final = self.height if incomplete is None else self.plan.ys[incomplete] * self.scale
        count = final - self._flushed
        if count <= 0:
            return []
        out = np.empty((count, self.width, self.channels), dtype=self.dtype)
        for start in range(0, count, _ENCODE_ROWS):
            stop = min(start + _ENCODE_ROWS, count)
            mean = self._acc[start:stop] / self._wsum[start:stop, :, None]
            out[start:stop] = from_working(mean, self.dtype, self.transfer)
        base = self._flushed
        for y0, y1, x0, x1 in self._rects:
            a, b = max(y0, base), min(y1, final)
            if a < b:
                out[a - base : b - base, x0:x1] = self._direct[a - base : b - base, x0:x1]
        self._rects = [rect for rect in self._rects if rect[1] > final]
        # Slide the unfinished rows to the top and clear the rest for the next tiles.
        keep = self._acc.shape[0] - count
        if keep > 0:
            self._acc[:keep] = self._acc[count:]
            self._wsum[:keep] = self._wsum[count:]
            self._direct[:keep] = self._direct[count:]
        self._acc[max(keep, 0) :] = 0
        self._wsum[max(keep, 0) :] = 0
        band = Band(self._flushed, out)
        self._flushed = final
        return [band]


def blend_tiles(
    plan: TilePlan,
    tiles: Iterable[tuple[Tile, np.ndarray]],
    *,
    scale: int = 1,
    channels: int = 3,
    ramp: Ramp = "cosine",
    transfer: Transfer = "srgb",
    dtype: np.dtype | type = np.uint8,
    margin: int = 0,
) -> np.ndarray:
    """Blend all processed tiles of `plan` into one ``(H*scale, W*scale, channels)`` array.

    The only full-canvas array is the result itself (in `dtype`); floats live in bands.

    Raises:
        InvalidInput: a bad tile (see `TileBlender.add`) or tiles missing at the end.
    """
    blender = TileBlender(
        plan,
        scale=scale,
        channels=channels,
        ramp=ramp,
        transfer=transfer,
        dtype=dtype,
        margin=margin,
    )
    out = np.empty((blender.height, blender.width, channels), dtype=blender.dtype)
    for tile, pixels in tiles:
        for band in blender.add(tile, pixels):
            out[band.y : band.y + len(band.pixels)] = band.pixels
    if not blender.done:
        missing = blender.missing()
        raise InvalidInput(
            f"{len(missing)} tile(s) never arrived: {', '.join(missing[:8])}", field="tiles"
        )
    return out
