"""The upscale job kind: an image (a stored blob) upscaled by a GAN model, unit by unit.

plan: the image's windows (pipelines.upscale_gan.plan_windows), grouped into units of a few
windows each (colour first, then alpha when the model upscales it). run_unit: the model's output
for those windows, as a ``.npz``. assemble: every unit's windows blended into the image, resized to
the requested scale and encoded.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from assetbox.config import get_settings
from assetbox.engine.blobs import blob_path
from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.errors import InvalidInput
from assetbox.imaging import (
    MEDIA_TYPES,
    DecodedImage,
    ImageFormat,
    encode_image,
    verify_image,
)
from assetbox.kinds import upscale_tiled as tiled
from assetbox.kinds.tiles import open_upscaler, upscaler
from assetbox.kinds.upscale_tiled import (
    DEFAULT_TILE_BATCH,
    DEFAULT_TILE_OVERLAP,
    DiffusionUpscaleFields,
)
from assetbox.models.builtin import DEFAULT_UPSCALER, ensure_upscaler
from assetbox.models.store import ModelManifest, ModelStore
from assetbox.pipelines import nsfw
from assetbox.pipelines.upscale_gan import (
    DEFAULT_BATCH,
    DEFAULT_OVERLAP,
    MIN_TILE,
    AlphaMode,
    EngineChoice,
    TileSettings,
    alpha_from_gray,
    blend_windows,
    choose_engine,
    finish_upscale,
    plan_windows,
    preferred_tile,
    upscale_windows,
)

WINDOWS_PER_UNIT = 4
MIN_DIFFUSION_TILE = 64


class UpscaleOptions(DiffusionUpscaleFields):
    """How to upscale (everything but the image); the CLI and the API validate with it.

    ``mode: "gan"`` (the default) runs an upscaler; ``"diffusion"`` runs tiled img2img with a
    checkpoint (kinds/upscale_tiled.py), and some fields mean another thing there (see each).
    """

    model: str = Field(
        default=DEFAULT_UPSCALER,
        description="gan: store id of the upscaler; diffusion: of the checkpoint (sd15, sdxl, "
        "flux1)",
    )
    scale: int | None = Field(
        default=None, ge=1, le=8, description="gan: default the model's; diffusion: 2 to 8 (2)"
    )
    tile: int | None = Field(
        default=None,
        ge=0,
        description="gan: core tile in input px, 0 = untiled, default by engine; diffusion: "
        "tile in output px, default the family's native size (1024 sdxl/flux1, 512 sd15)",
    )
    overlap: int | None = Field(
        default=None,
        ge=0,
        description=f"gan: feathered seam in input px ({DEFAULT_OVERLAP}); diffusion: least "
        f"overlap of tiles in output px ({DEFAULT_TILE_OVERLAP})",
    )
    batch: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=f"gan: windows per forward pass ({DEFAULT_BATCH}); diffusion: tiles per "
        f"forward pass ({DEFAULT_TILE_BATCH})",
    )
    engine: EngineChoice = "auto"
    alpha: AlphaMode = "model"
    format: ImageFormat | None = Field(default=None, description="default: the input's format")
    quality: int = Field(default=95, ge=1, le=100)

    @field_validator("tile")
    @classmethod
    def _tile_is_untiled_or_big_enough(cls, tile: int | None) -> int | None:
        if tile is not None and tile != 0 and tile < MIN_TILE:
            raise ValueError(f"must be 0 (untiled) or at least {MIN_TILE}, not {tile}")
        return tile

    @model_validator(mode="after")
    def _mode_defaults(self):
        if self.mode == "gan":
            for name, info in DiffusionUpscaleFields.model_fields.items():
                if name != "mode" and getattr(self, name) != info.get_default(
                    call_default_factory=True
                ):
                    # Raised as is (not a ValueError): pydantic would drop the field's name.
                    raise InvalidInput(
                        f'`{name}` is for "mode": "diffusion"; mode gan would ignore it',
                        field=name,
                    )
            # Written into the request, so the job records what it ran with.
            self.overlap = DEFAULT_OVERLAP if self.overlap is None else self.overlap
            self.batch = DEFAULT_BATCH if self.batch is None else self.batch
        elif self.tile is not None and self.tile < MIN_DIFFUSION_TILE:
            raise InvalidInput(
                f"`tile` must be at least {MIN_DIFFUSION_TILE} for mode diffusion but is "
                f"{self.tile}",
                field="tile",
            )
        return self


class UpscaleRequest(UpscaleOptions):
    """What to upscale and how."""

    image: str = Field(description="the input, stored as a blob: 'sha256:<hex>'")


def format_for_path(path: Path) -> ImageFormat:
    """The image format a file name asks for.

    Raises:
        InvalidInput: an extension other than .png, .jpg/.jpeg or .webp.
    """
    formats: dict[str, ImageFormat] = {
        ".png": "png",
        ".jpg": "jpeg",
        ".jpeg": "jpeg",
        ".webp": "webp",
    }
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise InvalidInput(
            f"`output` must end in .png, .jpg, .jpeg or .webp but is {path.name!r}",
            field="output",
        )
    return formats[suffix]


class UpscalePlanner:
    kind = "upscale"
    request_model = UpscaleRequest

    # -- shared by the three steps ------------------------------------------------------------

    @staticmethod
    def _image(request: UpscaleRequest, data_dir: Path, cache: dict[str, Any]) -> DecodedImage:
        return tiled.input_image(request, data_dir, cache)

    @staticmethod
    def _manifest(request: UpscaleRequest, data_dir: Path) -> ModelManifest:
        return ensure_upscaler(ModelStore(data_dir / "models"), request.model)

    @staticmethod
    def _check_scale(request: UpscaleRequest, manifest: ModelManifest) -> None:
        if request.scale is not None and request.scale > manifest.scale:
            raise InvalidInput(
                f"`scale` must be at most {manifest.scale} for {manifest.id} (1 to "
                f"{manifest.scale}: its native scale, or a downsample of it) but is "
                f"{request.scale}",
                field="scale",
            )

    # -- at submit ------------------------------------------------------------------------------

    def fill(self, request: BaseModel) -> BaseModel:
        """A diffusion upscale without a seed gets one when it is queued (stored with the job)."""
        return tiled.fill_seed(request) if tiled.is_diffusion(request) else request

    def check(self, request: BaseModel, data_dir: Path) -> None:
        """Refuse at submit what would fail the job later; nothing is queued then.

        Raises:
            NotFound: no such model (naming `model`).
            InvalidInput: the model is not an upscaler, the scale is beyond it, the tile settings
                are wrong, or the image does not decode completely (naming the field).
            ModelError: a built-in upscaler fails to convert on its first use.
        """
        assert isinstance(request, UpscaleRequest)
        if tiled.is_diffusion(request):
            return tiled.check(request, data_dir)
        manifest = upscaler(ModelStore(data_dir / "models"), request.model, field="model")
        self._check_scale(request, manifest)
        self._settings(request, manifest)
        verify_image(blob_path(data_dir, request.image).read_bytes(), field="image")

    @staticmethod
    def _engine(request: UpscaleRequest, manifest: ModelManifest) -> Literal["torch", "ncnn"]:
        return choose_engine(request.engine, list(manifest.engines))

    def _settings(self, request: UpscaleRequest, manifest: ModelManifest) -> TileSettings:
        engine = self._engine(request, manifest)
        tile = preferred_tile(engine) if request.tile is None else request.tile
        settings = TileSettings(
            tile=tile, overlap=request.overlap, context=manifest.context, batch=request.batch
        )
        settings.check()
        return settings

    # -- the planner ----------------------------------------------------------------------------

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        assert isinstance(request, UpscaleRequest)
        image = self._image(request, data_dir, {})
        if tiled.is_diffusion(request):
            tiled.checkpoint(request, data_dir)  # deleted since submit: fail before any unit
            return tiled.plan_units(request, tiled.plan_for(request, image.width, image.height))
        manifest = self._manifest(request, data_dir)
        self._check_scale(request, manifest)  # again: the model may have changed since submit
        settings = self._settings(request, manifest)
        plan, _ = plan_windows(image.width, image.height, settings)
        ids = [tile.id for tile in plan]
        planes = ["rgb"] + (
            ["alpha"] if image.alpha is not None and request.alpha == "model" else []
        )
        return [
            {"plane": plane, "tiles": ids[i : i + WINDOWS_PER_UNIT]}
            for plane in planes
            for i in range(0, len(ids), WINDOWS_PER_UNIT)
        ]

    def describe_unit(self, request: BaseModel, payload: dict[str, Any]) -> dict[str, Any]:
        """A diffusion unit's tiles (ids of the output's plan, as `/v1/upscale/plan` shows);
        nothing for gan mode, whose windows are no plan a client knows."""
        return {"tiles": payload["tiles"]} if tiled.is_diffusion(request) else {}

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        assert isinstance(request, UpscaleRequest)
        if tiled.is_diffusion(request):
            return tiled.run_unit(request, payload, ctx)
        image = self._image(request, ctx.data_dir, ctx.cache)
        manifest = self._manifest(request, ctx.data_dir)
        settings = self._settings(request, manifest)
        engine = self._engine(request, manifest)
        pixels = image.rgb
        if payload["plane"] == "alpha":
            assert image.alpha is not None
            pixels = np.repeat(image.alpha[..., None], 3, axis=2)
        plan, _ = plan_windows(image.width, image.height, settings)
        tiles = [plan.tile(tile_id) for tile_id in payload["tiles"]]
        with open_upscaler(manifest, engine, ctx) as backend:
            outputs = upscale_windows(
                backend,
                pixels,
                settings,
                tiles,
                should_stop=ctx.should_stop,
                progress=lambda done, total: ctx.report_step(done, total),
            )
        buffer = io.BytesIO()
        np.save(buffer, np.stack(outputs), allow_pickle=False)
        return buffer.getvalue()

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        assert isinstance(request, UpscaleRequest)
        if tiled.is_diffusion(request):
            return tiled.assemble(request, results, data_dir)
        started = time.perf_counter()
        image = self._image(request, data_dir, {})
        manifest = self._manifest(request, data_dir)
        settings = self._settings(request, manifest)
        plan, _ = plan_windows(image.width, image.height, settings)
        units = self.plan(request, data_dir)
        windows: dict[str, list[tuple[Any, np.ndarray]]] = {"rgb": [], "alpha": []}
        for unit, data in zip(units, results, strict=True):
            stacked = np.load(io.BytesIO(data), allow_pickle=False)
            for tile_id, out in zip(unit["tiles"], stacked, strict=True):
                windows[unit["plane"]].append((plan.tile(tile_id), out))
        scale = manifest.scale
        rgb = blend_windows(
            windows["rgb"], image.width, image.height, scale, settings, dtype=image.rgb.dtype
        )
        upscaled_alpha = None
        if image.alpha is not None and windows["alpha"]:
            gray = blend_windows(
                windows["alpha"],
                image.width,
                image.height,
                scale,
                settings,
                dtype=image.alpha.dtype,
                transfer="linear",
            )
            upscaled_alpha = alpha_from_gray(gray, image.alpha.dtype)
        result = finish_upscale(
            rgb, upscaled_alpha, image.alpha, native=scale, scale=request.scale or scale
        )
        rgb, alpha = result.rgb, result.alpha
        if image.grayscale:  # keep gray images gray
            mean = np.rint(rgb.mean(axis=2, dtype=np.float32)).astype(rgb.dtype)
            rgb = np.repeat(mean[..., None], 3, axis=2)
        screening = nsfw.screen(rgb, get_settings())  # raises under `block`
        if screening is not None:
            rgb = screening.rgb
        fmt = request.format or image.format
        out = DecodedImage(rgb=rgb, alpha=alpha, format=fmt, grayscale=image.grayscale)
        data = encode_image(out, fmt, quality=request.quality)
        return [
            AssembledOutput(
                data=data,
                media_type=MEDIA_TYPES[fmt],
                extension={"jpeg": "jpg"}.get(fmt, fmt),
                width=out.width,
                height=out.height,
                timings_ms={"assemble": round((time.perf_counter() - started) * 1000, 1)},
                **nsfw.output_fields(screening),
            )
        ]
