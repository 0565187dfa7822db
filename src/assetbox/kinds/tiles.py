"""What the tile kinds share: the output's tile plan and the pre-upscaled image it is cut from.

The caption job's tile mode, `POST /v1/upscale/plan` and the tiled diffusion upscale all take the
grid from `tile_plan`, so a tile id (``"row_col"``) and its box mean the same everywhere. The grid
covers the *output* (the input scaled by `scale`, each side rounded to a multiple of 8) and its
tiles start on multiples of 8 where the axis allows; its tiles are cut from the input
pre-upscaled to that size, by an upscaler from the store (a GAN, then Lanczos to the exact size)
or by Lanczos alone.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from assetbox.config import get_settings
from assetbox.engine.planners import UnitContext
from assetbox.errors import InvalidInput, NotFound
from assetbox.imaging import TilePlan
from assetbox.imaging.resize import resize_lanczos
from assetbox.models.builtin import BUILTIN_UPSCALERS, DEFAULT_UPSCALER, ensure_upscaler
from assetbox.models.cache import files_bytes
from assetbox.models.store import KINDS, ModelManifest, ModelStore
from assetbox.pipelines.upscale_gan import (
    TileSettings,
    choose_engine,
    open_backend,
    preferred_tile,
    upscale_image,
)

LANCZOS = "lanczos"
MAX_TILES = 4096  # 16K at 256 px tiles; beyond that a plan is a mistake, not a request
# Tiles start on this grid (and outputs are multiples of it): a VAE's factor, so that tiles share
# the latent grid and overlapping tiles can start from the same noise.
LATENT = 8


def upscaler(store: ModelStore, model_id: str, *, field: str) -> ModelManifest:
    """The upscaler `model_id` (a built-in one is converted into the store on first use).

    Raises:
        NotFound: no such model, naming `field` and the upscalers there are.
        InvalidInput: `model_id` is another kind of model.
        ModelError: a built-in upscaler fails to convert.
    """
    try:
        return ensure_upscaler(store, model_id)
    except NotFound:
        other = next((k for k in KINDS if store.exists(model_id, k)), None)
        if other is None:
            # The built-in ones count too, though not converted into the store yet.
            known = sorted({m.id for m in store.list("upscaler")} | set(BUILTIN_UPSCALERS))
            raise NotFound(
                f"`{field}` {model_id!r} is no upscaler in the store nor a built-in one "
                f"(available: {', '.join(known)})",
                field=field,
            ) from None
        raise InvalidInput(
            f"`{field}` must be an upscaler but {model_id!r} is a {other}", field=field
        ) from None


def open_upscaler(
    manifest: ModelManifest, engine: Literal["torch", "ncnn"], ctx: UnitContext
) -> AbstractContextManager[Any]:
    """A lease on the upscaler's backend from the worker's model cache (loaded on first use)."""
    folder = ModelStore(ctx.data_dir / "models").path(manifest.id)
    return ctx.models.lease(
        f"{manifest.id}:{manifest.sha256[:12]}:{engine}",
        lambda: open_backend(
            folder,
            engine=engine,
            network_scale=manifest.network_scale,
            post_resize=manifest.post_resize,
        ),
        # The engine's weight file: what it will hold in memory, before loading it.
        estimate=files_bytes(folder / ("model.bin" if engine == "ncnn" else "model.safetensors")),
    )


def _named(field: str, setting: str) -> str:
    """A setting's field name under `field` (``tiles.overlap``), or alone when `field` is ""."""
    return f"{field}.{setting}" if field else setting


class TileGrid(BaseModel):
    """The grid over the output: tile size and least overlap in output pixels."""

    scale: float = Field(default=2, ge=1, le=8, description="output size = input size x scale")
    tile: int = Field(default=1024, ge=64, le=4096, description="tile side, output pixels")
    overlap: int = Field(
        default=128, ge=0, le=2048, description="least overlap of neighbours, output pixels"
    )


class TileSource(TileGrid):
    """The grid, and how the input reaches the output's size before tiles are cut."""

    pre_upscale: str = Field(
        default=DEFAULT_UPSCALER,
        description="store id of an upscaler (a built-in one by default), or 'lanczos'",
    )


def output_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The output's size: each side scaled and rounded to a multiple of LATENT (at least one),
    the size every diffusion family's VAE takes."""
    return tuple(  # type: ignore[return-value]
        max(LATENT, round(side * scale / LATENT) * LATENT) for side in (width, height)
    )


def tile_plan(
    width: int,
    height: int,
    grid: TileGrid,
    *,
    field: str = "tiles",
    size: tuple[int, int] | None = None,
) -> TilePlan:
    """The plan of the output of a `width` x `height` input scaled by ``grid.scale``.

    Raises:
        InvalidInput: an output over the pixel limit, an overlap that leaves no stride, or more
            than MAX_TILES tiles (naming ``<field>.<setting>``, or the setting alone when
            `field` is empty).

    `size` gives the output's size instead of ``grid.scale``. An output side shorter than the
    tile gets one tile of that side's length.
    """

    def name(setting: str) -> str:
        return _named(field, setting)

    out_w, out_h = size or output_size(width, height, grid.scale)
    limit = get_settings().max_image_pixels
    if out_w * out_h > limit:
        raise InvalidInput(
            f"`{name('scale')}` {grid.scale} makes the {width}x{height} input {out_w}x{out_h} = "
            f"{out_w * out_h} pixels; the limit is {limit} (ASSETBOX_MAX_IMAGE_PIXELS)",
            field=name("scale"),
        )
    try:
        if grid.overlap >= grid.tile:
            raise InvalidInput(
                f"`overlap` must be smaller than the tile ({grid.tile}) but is {grid.overlap}",
                field="overlap",
            )
        tile = (min(grid.tile, out_w), min(grid.tile, out_h))
        overlap = min(grid.overlap, max(0, min(tile) - 1))  # one tile on a short axis
        plan = TilePlan.for_image(out_w, out_h, tile, overlap, align=LATENT)
    except InvalidInput as exc:
        setting = exc.field if exc.field in ("tile", "overlap") else "tile"
        raise InvalidInput(exc.message, field=name(setting)) from exc
    if len(plan) > MAX_TILES:
        raise InvalidInput(
            f"`{name('tile')}` {grid.tile} cuts the {out_w}x{out_h} output into {len(plan)} tiles; "
            f"at most {MAX_TILES}: use larger tiles",
            field=name("tile"),
        )
    return plan


def check_source(source: TileSource, data_dir: Path, *, field: str = "tiles") -> None:
    """The pre-upscaler exists and is an upscaler (a built-in one is converted now).

    Raises:
        NotFound, InvalidInput: naming ``<field>.pre_upscale``.
    """
    if source.pre_upscale != LANCZOS:
        store = ModelStore(data_dir / "models")
        upscaler(store, source.pre_upscale, field=_named(field, "pre_upscale"))


def pre_upscaled(
    rgb: np.ndarray,
    source: TileSource,
    ctx: UnitContext,
    *,
    key: str,
    field: str = "tiles",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """`rgb` at the output's size, kept in the worker's scratch under `key` (the units of a job
    that run on the same worker cut their tiles from one pre-upscale).

    A GAN runs at its native scale; Lanczos then reaches the exact output size.
    """
    cached = ctx.cache.get(key)
    if cached is not None:
        return cached
    for old in [k for k in ctx.cache if k.startswith("pre-upscaled:")]:
        del ctx.cache[old]  # one pre-upscaled image per worker: they are large
    height, width = rgb.shape[:2]
    size = size or output_size(width, height, source.scale)
    if source.pre_upscale == LANCZOS:
        out = resize_lanczos(rgb, size)
    else:
        store = ModelStore(ctx.data_dir / "models")
        manifest = upscaler(store, source.pre_upscale, field=_named(field, "pre_upscale"))
        engine = choose_engine("auto", list(manifest.engines))
        settings = TileSettings(tile=preferred_tile(engine), context=manifest.context)
        with open_upscaler(manifest, engine, ctx) as backend:
            result = upscale_image(
                backend,
                rgb,
                None,
                settings=settings,
                progress=lambda done, total: ctx.report_step(done, total),
                should_stop=ctx.should_stop,
            )
        out = resize_lanczos(result.rgb, size)
    ctx.cache[key] = out
    return out


def plan_json(plan: TilePlan) -> dict[str, Any]:
    """The plan as the API shows it: the output's size and each tile's id and box."""
    return {
        "width": plan.width,
        "height": plan.height,
        "rows": plan.rows,
        "cols": plan.cols,
        "tiles": [
            {"id": tile.id, "box": [tile.x, tile.y, tile.width, tile.height]} for tile in plan
        ],
    }
