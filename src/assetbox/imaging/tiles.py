"""Tile plans: a grid of equal-size, overlapping tiles that covers an image exactly.

Every tile has the same size, because batched forward passes need equal shapes. The first tile of a
row or column starts at 0 and the last one ends exactly at the border, so no tile is partial.
``stride = tile - overlap`` is the largest step between neighbours; the number of tiles per axis is
the least that covers the image with that stride, and the slack is then spread evenly over all
steps. Spreading (instead of keeping every step at `stride` and pushing the last tile back) keeps
every seam's overlap within one pixel of the others and never produces a last tile that is a 1-px
shift of its neighbour. Every seam overlaps by at least the requested amount.

An axis shorter than the tile gets one tile that sticks out past the border: the tile is padded
(see `extract_tile`) and the padding is cropped away when blending.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from assetbox.errors import InvalidInput

PadMode = Literal["reflect", "edge", "constant"]


@dataclass(frozen=True)
class Tile:
    """One tile of a `TilePlan`, in image pixels; it passes the border only when padded."""

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int

    @property
    def id(self) -> str:
        return f"{self.row}_{self.col}"


def _axis_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    if length <= tile:
        return [0]
    span = length - tile
    if span % align:
        align = 1  # the last tile must end at the border: no grid of `align` reaches it
    # The largest step that keeps the overlap, in units of `align`.
    stride = max(1, (tile - overlap) // align)
    units = span // align
    count = math.ceil(units / stride) + 1
    # Integer arithmetic: start_i = round(i * units / (count - 1)) * align, exact and monotone,
    # every step at most `stride` units.
    return [align * ((2 * i * units + (count - 1)) // (2 * (count - 1))) for i in range(count)]


@dataclass(frozen=True)
class TilePlan:
    """A grid of ``tile_width x tile_height`` tiles covering a ``width x height`` image.

    Build it with `TilePlan.for_image`; iterate it for its tiles in row-major order.
    """

    width: int
    height: int
    tile_width: int
    tile_height: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @classmethod
    def for_image(
        cls, width: int, height: int, tile: int | tuple[int, int], overlap: int, *, align: int = 1
    ) -> TilePlan:
        """The plan for an image of `width` x `height` with square (or ``(w, h)``) tiles.

        With `align`, every tile starts at a multiple of it (e.g. 8, a VAE's factor, so that
        tiles share the latent grid) wherever the axis allows: ``size - tile`` a multiple of it.

        Raises:
            InvalidInput: a non-positive size or tile, a negative overlap, or an overlap that
                leaves no stride (``overlap >= tile``).
        """
        tile_w, tile_h = (tile, tile) if isinstance(tile, int) else tile
        for name, value in (("width", width), ("height", height)):
            if value < 1:
                raise InvalidInput(f"`{name}` must be at least 1 but is {value}", field=name)
        if tile_w < 1 or tile_h < 1:
            raise InvalidInput(f"`tile` must be at least 1 but is {tile}", field="tile")
        if overlap < 0:
            raise InvalidInput(f"`overlap` must be 0 or more but is {overlap}", field="overlap")
        if align < 1:
            raise InvalidInput(f"`align` must be at least 1 but is {align}", field="align")
        if overlap >= min(tile_w, tile_h):
            raise InvalidInput(
                f"`overlap` must be smaller than the tile ({min(tile_w, tile_h)}) but is {overlap}",
                field="overlap",
            )
        return cls(
            width=width,
            height=height,
            tile_width=tile_w,
            tile_height=tile_h,
            overlap=overlap,
            xs=tuple(_axis_starts(width, tile_w, overlap, align)),
            ys=tuple(_axis_starts(height, tile_h, overlap, align)),
        )

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return self.rows * self.cols

    def __iter__(self) -> Iterator[Tile]:
        for row in range(self.rows):
            yield from self.row_tiles(row)

    def row_tiles(self, row: int) -> list[Tile]:
        """The tiles of one row, left to right."""
        y = self.ys[row]
        return [
            Tile(row, col, x, y, self.tile_width, self.tile_height) for col, x in enumerate(self.xs)
        ]

    def tile(self, tile_id: str) -> Tile:
        """The tile with id ``"row_col"``.

        Raises:
            InvalidInput: the id is malformed or outside the grid.
        """
        try:
            row_s, col_s = tile_id.split("_")
            row, col = int(row_s), int(col_s)
        except ValueError as exc:
            raise InvalidInput(
                f"tile id must look like 'row_col' but is {tile_id!r}", field="tile"
            ) from exc
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise InvalidInput(
                f"tile {tile_id!r} is outside the {self.rows}x{self.cols} grid", field="tile"
            )
        return Tile(row, col, self.xs[col], self.ys[row], self.tile_width, self.tile_height)

    @property
    def padded(self) -> bool:
        """True when the image is smaller than a tile along some axis."""
        return self.width < self.tile_width or self.height < self.tile_height

    def seams(self, axis: Literal["x", "y"]) -> list[int]:
        """Overlap in pixels of each pair of neighbours along an axis (empty for one tile)."""
        starts, size = (self.xs, self.tile_width) if axis == "x" else (self.ys, self.tile_height)
        return [a + size - b for a, b in itertools.pairwise(starts)]


def extract_tile(image: np.ndarray, tile: Tile, pad_mode: PadMode = "reflect") -> np.ndarray:
    """The pixels of `tile` from an ``(H, W, ...)`` array, padded past the border when needed.

    Padding mirrors the image (``reflect``) by default, which models handle better than black.
    """
    height, width = image.shape[:2]
    crop = image[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
    pad_y = tile.height - crop.shape[0]
    pad_x = tile.width - crop.shape[1]
    if pad_x == 0 and pad_y == 0:
        return crop
    mode: str = pad_mode
    if mode == "reflect" and (height == 1 or width == 1):
        mode = "edge"  # reflect needs at least two pixels to mirror
    pads = [(0, pad_y), (0, pad_x)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(crop, pads, mode=mode)  # type: ignore[call-overload]
