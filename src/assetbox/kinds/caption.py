"""Job kind `caption`: a vision-language model (Qwen2.5-VL, Qwen3-VL) describes images.

Two modes. Images: ``images`` (up to 64) → one caption per image, in order. Tiles: one ``image``
and a ``tiles`` grid → one caption per tile of the output's `TilePlan` (kinds/tiles.py, the plan
the tiled upscale uses, so ids and boxes match), each tile cut from the input pre-upscaled to
the output's size and scaled down to the captioner's pixel cap by its processor.

A unit is a batch of images or tiles (``batch``, one forward pass each step); it reports a step
per generated token and stops between tokens when cancelled. The captions are the job's
`result` (``GET /v1/jobs/{id}``) and its first output, ``captions.json``.

Tile mode also shows what the tiles look like before they are redrawn: each unit returns a
thumbnail of every tile's pre-upscaled crop beside its caption (the units are the only place
the pre-upscaled image exists), and the job's second output is the *preview*: those thumbnails
pasted at their place into one image of the whole pre-upscaled canvas at ``result.preview.scale``
(a tile's box times the scale is its place in the preview). A UI shows a mosaic of the tiles
from it without pre-upscaling anything itself.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from assetbox.engine.blobs import blob_path
from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.errors import InvalidInput, NotFound
from assetbox.imaging import (
    TilePlan,
    decode_image,
    encode_image,
    extract_tile,
    to_uint8,
    verify_image,
)
from assetbox.imaging.resize import resize_lanczos
from assetbox.kinds.tiles import MAX_TILES, TileSource, check_source, pre_upscaled, tile_plan
from assetbox.models.captioner_import import TRANSFORMERS_DIR
from assetbox.models.store import KINDS, ModelManifest, ModelStore
from assetbox.pipelines.caption import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SYSTEM_PROMPT,
    MAX_TOKENS,
)

MAX_IMAGES = 64
MAX_SEED = 2**32 - 1
# Tile mode: a tile's thumbnail has this longest side (never more than the tile itself): big
# enough to recognise the tile in a mosaic, small enough that a 16K plan's preview stays a few
# thousand pixels wide.
THUMBNAIL = 192


class CaptionOptions(BaseModel):
    """How to caption (everything but the images); the API and the CLI validate with it."""

    model: str = Field(description="store id of a captioner")
    system_prompt: str = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        min_length=1,
        max_length=4000,
        description="default: one tuned for diffusion prompts (short comma-separated phrases)",
    )
    prompt: str | None = Field(
        default=None, max_length=4000, description="the user turn; default 'Describe this image.'"
    )
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_TOKENS)
    batch: int = Field(default=8, ge=1, le=64, description="images or tiles per forward pass")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="sample at this temperature; default greedy"
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED - MAX_TILES,
        description="with `temperature`: image or tile k samples with seed + k (drawn when absent)",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=32 * 32,
        le=4096 * 4096,
        description="each image or tile is scaled down to at most this many pixels (a bound on "
        "its visual tokens: one per 28x28 px on Qwen2.5-VL)",
    )
    tiles: TileSource | None = Field(
        default=None,
        description="tile mode: caption the tiles of `image` upscaled by `tiles.scale`",
    )


class CaptionInputs(CaptionOptions):
    """The images: `images` (images mode) or one `image` with `tiles` (tile mode)."""

    images: list[str] = Field(
        default_factory=list,
        max_length=MAX_IMAGES,
        validate_default=True,
        description="images mode: up to 64 images (base64 or http(s) URLs over the API)",
    )
    image: str | None = Field(
        default=None,
        validate_default=True,
        description="tile mode: the image whose upscaled tiles are captioned",
    )

    @field_validator("images")
    @classmethod
    def _images_in_images_mode(cls, images: list[str], info: ValidationInfo) -> list[str]:
        tiled = info.data.get("tiles") is not None
        if not tiled and not images:
            raise ValueError("must hold at least one image (or give `image` and `tiles`)")
        if tiled and images:
            raise ValueError("tile mode captions one `image`: leave `images` out")
        return images

    @field_validator("image")
    @classmethod
    def _image_in_tile_mode(cls, image: str | None, info: ValidationInfo) -> str | None:
        tiled = info.data.get("tiles") is not None
        if tiled and image is None:
            raise ValueError("tile mode (`tiles`) needs the image to cut")
        if not tiled and image is not None:
            raise ValueError("goes with `tiles` (tile mode); for whole images use `images`")
        return image


class CaptionRequest(CaptionInputs):
    """A caption job: images (or the image) are blobs ('sha256:<hex>')."""


def captioner(store: ModelStore, model_id: str) -> ModelManifest:
    """The captioner `model_id`.

    Raises:
        NotFound: no such model (naming `model` and the captioners there are).
        InvalidInput: `model_id` is another kind of model.
    """
    if store.exists(model_id, "captioner"):
        return store.get(model_id, "captioner", field="model")
    other = next((k for k in KINDS if store.exists(model_id, k)), None)
    if other is not None:
        raise InvalidInput(
            f"`model` must be a captioner but {model_id!r} is a {other}", field="model"
        )
    known = ", ".join(m.id for m in store.list("captioner")) or "none"
    raise NotFound(
        f"`model` {model_id!r} is no captioner in the store (captioners: {known}; import one "
        "with `assetbox models import DIR`)",
        field="model",
    )


def lease_captioner(manifest: ModelManifest, ctx: UnitContext) -> AbstractContextManager[Any]:
    """The captioner from the worker's model cache (loaded on first use), one generate at a
    time per loaded model."""
    from assetbox.pipelines.caption import estimate_captioner_bytes, load_captioner

    folder = ModelStore(ctx.data_dir / "models").path(manifest.id, "captioner") / TRANSFORMERS_DIR
    return ctx.models.lease(
        f"captioner:{manifest.id}:{manifest.sha256[:12]}",
        lambda: load_captioner(folder),
        estimate=estimate_captioner_bytes(folder),
        exclusive=True,
    )


def preview_scale(plan: TilePlan) -> float:
    """The preview's scale: a tile's longest side becomes at most `THUMBNAIL` px."""
    return min(1.0, THUMBNAIL / max(plan.tile_width, plan.tile_height))


def _span(start: int, length: int, scale: float, limit: int) -> tuple[int, int]:
    """Where [start, start + length) falls in the preview: both ends rounded on their own, so
    that neighbours without overlap meet without a gap, cut at the preview's edge (a tile
    padded past a short side)."""
    return round(start * scale), min(limit, round((start + length) * scale))


def preview_size(plan: TilePlan) -> tuple[int, int]:
    scale = preview_scale(plan)
    return max(1, round(plan.width * scale)), max(1, round(plan.height * scale))


def thumbnail(plan: TilePlan, tile_id: str, crop: np.ndarray) -> bytes:
    """The tile's crop as a PNG of exactly its place in the preview."""
    tile = plan.tile(tile_id)
    scale = preview_scale(plan)
    width, height = preview_size(plan)
    x0, x1 = _span(tile.x, tile.width, scale, width)
    y0, y1 = _span(tile.y, tile.height, scale, height)
    # The crop past the canvas (reflected padding) has no place in the preview.
    visible = crop[: plan.height - tile.y, : plan.width - tile.x]
    return encode_image(resize_lanczos(np.ascontiguousarray(visible), (x1 - x0, y1 - y0)), "png")


def paste_preview(plan: TilePlan, thumbnails: dict[str, bytes]) -> np.ndarray:
    """The preview: every tile's thumbnail at its place, in plan order (later tiles over the
    overlap of earlier ones, as the mosaic shows them)."""
    width, height = preview_size(plan)
    scale = preview_scale(plan)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for tile in plan:
        x0, _ = _span(tile.x, tile.width, scale, width)
        y0, _ = _span(tile.y, tile.height, scale, height)
        pixels = decode_image(thumbnails[tile.id], field="thumbnail").rgb
        canvas[y0 : y0 + pixels.shape[0], x0 : x0 + pixels.shape[1]] = pixels
    return canvas


class CaptionPlanner:
    kind = "caption"
    request_model = CaptionRequest

    # -- at submit ------------------------------------------------------------------------------

    def check(self, request: BaseModel, data_dir: Path) -> None:
        """Raises NotFound/InvalidInput naming the field; nothing is queued then."""
        assert isinstance(request, CaptionRequest)
        captioner(ModelStore(data_dir / "models"), request.model)
        if request.tiles is None:
            for n, ref in enumerate(request.images):
                field = f"images.{n}"
                verify_image(blob_path(data_dir, ref, field=field).read_bytes(), field=field)
            return
        assert request.image is not None
        _, width, height = verify_image(blob_path(data_dir, request.image).read_bytes())
        tile_plan(width, height, request.tiles)
        check_source(request.tiles, data_dir)

    def fill(self, request: BaseModel) -> BaseModel:
        """A sampled request without a seed gets one, drawn once and stored with the job."""
        assert isinstance(request, CaptionRequest)
        if not request.temperature or request.seed is not None:
            return request
        return request.model_copy(update={"seed": secrets.randbelow(MAX_SEED - MAX_TILES)})

    # -- the planner ----------------------------------------------------------------------------

    def _items(self, request: CaptionRequest, data_dir: Path, cache: dict[str, Any]) -> list[Any]:
        """Image indices (images mode) or tile ids (tile mode), in output order."""
        if request.tiles is None:
            return list(range(len(request.images)))
        assert request.image is not None
        rgb = self._rgb(request.image, data_dir, cache, "image")
        return [tile.id for tile in tile_plan(rgb.shape[1], rgb.shape[0], request.tiles)]

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        assert isinstance(request, CaptionRequest)
        captioner(ModelStore(data_dir / "models"), request.model)  # deleted since submit?
        items = self._items(request, data_dir, {})
        return [
            {"first": i, "items": items[i : i + request.batch]}
            for i in range(0, len(items), request.batch)
        ]

    def describe_unit(self, request: BaseModel, payload: dict[str, Any]) -> dict[str, Any]:
        """Tile mode: the unit's tile ids; images mode: nothing (its items are the images)."""
        assert isinstance(request, CaptionRequest)
        return {"tiles": payload["items"]} if request.tiles is not None else {}

    @staticmethod
    def _rgb(ref: str, data_dir: Path, cache: dict[str, Any], field: str) -> np.ndarray:
        key = f"caption-image:{ref}"
        if key not in cache:
            for old in [k for k in cache if k.startswith("caption-image:")][-7:]:
                del cache[old]  # a batch's worth of decoded images is enough
            rgb = decode_image(blob_path(data_dir, ref).read_bytes(), field=field).rgb
            cache[key] = to_uint8(rgb)  # 16-bit input: the captioner takes 8 bits
        return cache[key]

    def _pixels(self, request: CaptionRequest, items: list[Any], ctx: UnitContext) -> list:
        if request.tiles is None:
            return [
                self._rgb(request.images[i], ctx.data_dir, ctx.cache, f"images.{i}") for i in items
            ]
        assert request.image is not None
        rgb = self._rgb(request.image, ctx.data_dir, ctx.cache, "image")
        plan = tile_plan(rgb.shape[1], rgb.shape[0], request.tiles)
        key = f"pre-upscaled:{request.image}:{request.tiles.model_dump_json()}"
        big = pre_upscaled(rgb, request.tiles, ctx, key=key)
        return [np.ascontiguousarray(extract_tile(big, plan.tile(tile_id))) for tile_id in items]

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        from assetbox.pipelines.caption import caption

        assert isinstance(request, CaptionRequest)
        store = ModelStore(ctx.data_dir / "models")
        manifest = captioner(store, request.model)
        pixels = self._pixels(request, payload["items"], ctx)
        thumbnails: list[str | None] = [None] * len(pixels)
        if request.tiles is not None:
            assert request.image is not None
            rgb = self._rgb(request.image, ctx.data_dir, ctx.cache, "image")
            plan = tile_plan(rgb.shape[1], rgb.shape[0], request.tiles)
            thumbnails = [
                base64.b64encode(thumbnail(plan, tile_id, crop)).decode()
                for tile_id, crop in zip(payload["items"], pixels, strict=True)
            ]
        with lease_captioner(manifest, ctx) as model:
            captions = caption(
                model,
                pixels,
                system_prompt=request.system_prompt,
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=None if request.seed is None else request.seed + int(payload["first"]),
                max_pixels=request.max_pixels,
                report_token=ctx.report_step,
                should_stop=ctx.should_stop,
            )
        found = [{"caption": c.text, "tokens": c.tokens} for c in captions]
        for entry, thumb in zip(found, thumbnails, strict=True):
            if thumb is not None:
                entry["thumbnail"] = thumb
        return json.dumps(found).encode()

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        assert isinstance(request, CaptionRequest)
        units = self.plan(request, data_dir)
        captions: list[dict[str, Any]] = []
        summary: dict[str, Any] = {}
        plan = None
        if request.tiles is not None:
            assert request.image is not None
            _, width, height = verify_image(blob_path(data_dir, request.image).read_bytes())
            plan = tile_plan(width, height, request.tiles)
            summary.update(width=plan.width, height=plan.height, rows=plan.rows, cols=plan.cols)
        thumbnails: dict[str, bytes] = {}
        for unit, data in zip(units, results, strict=True):
            for item, found in zip(unit["items"], json.loads(data), strict=True):
                if plan is None:
                    captions.append({"index": item, **found})
                    continue
                if "thumbnail" in found:  # absent from units run before previews existed
                    thumbnails[item] = base64.b64decode(found.pop("thumbnail"))
                tile = plan.tile(item)
                box = [tile.x, tile.y, tile.width, tile.height]
                captions.append({"id": item, "box": box, **found})
        summary["captions"] = captions
        # captions.json is the captions and the grid; the preview is named on the result only.
        captions_json = json.dumps(summary, indent=1).encode()
        previews = []
        # A job resumed from unit results written before thumbnails existed has no preview.
        if plan is not None and len(thumbnails) == len(plan):
            preview = paste_preview(plan, thumbnails)
            summary["preview"] = {"output": 1, "scale": preview_scale(plan)}
            previews.append(
                AssembledOutput(
                    data=encode_image(preview, "png"),
                    media_type="image/png",
                    extension="png",
                    width=preview.shape[1],
                    height=preview.shape[0],
                )
            )
        return [
            AssembledOutput(
                data=captions_json,
                media_type="application/json",
                extension="json",
                summary=summary,
            ),
            *previews,
        ]
