"""The upscale job kind: a validated request in, encoded images out (bytes in memory).

The CLI (and later the HTTP API and the job queue) call this; it decodes, makes sure the model is
in the store, runs the GAN pipeline and encodes the result. Files are the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from assetbox.config import Settings, get_settings
from assetbox.errors import InvalidInput
from assetbox.imaging import DecodedImage, ImageFormat, decode_image, encode_image
from assetbox.models.builtin import DEFAULT_UPSCALER, ensure_upscaler
from assetbox.models.store import ModelStore
from assetbox.pipelines.upscale_gan import (
    DEFAULT_BATCH,
    DEFAULT_OVERLAP,
    AlphaMode,
    EngineChoice,
    TileSettings,
    choose_engine,
    open_backend,
    upscale_image,
)


class UpscaleRequest(BaseModel):
    """What to upscale and how (images travel separately, as bytes)."""

    model: str = Field(default=DEFAULT_UPSCALER, description="store id of the upscaler")
    scale: int | None = Field(default=None, ge=1, le=8, description="default: the model's")
    tile: int | None = Field(
        default=None, ge=0, description="core tile in input px; 0 = untiled; default by engine"
    )
    overlap: int = Field(default=DEFAULT_OVERLAP, ge=0, description="feathered seam, input px")
    batch: int = Field(default=DEFAULT_BATCH, ge=1, le=64, description="windows per forward pass")
    engine: EngineChoice = "auto"
    alpha: AlphaMode = "model"
    format: ImageFormat | None = Field(default=None, description="default: the input's format")
    quality: int = Field(default=95, ge=1, le=100)


@dataclass(frozen=True)
class UpscaleOutput:
    data: bytes
    format: ImageFormat
    width: int
    height: int
    engine: str
    model: str


def model_store(settings: Settings | None = None) -> ModelStore:
    """The store under the configured data directory."""
    return ModelStore((settings or get_settings()).data_dir / "models")


def run_upscale(
    image: bytes,
    request: UpscaleRequest,
    *,
    store: ModelStore | None = None,
    progress: Callable[[int, int], None] | None = None,
    message: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> UpscaleOutput:
    """Upscale one encoded image.

    Raises:
        InvalidInput / UnsupportedFormat / ImageTooLarge: bad image or request.
        NotFound: unknown model.
        ModelError, OutOfMemory, Cancelled: see the pipeline.
    """
    store = store or model_store()
    decoded = decode_image(image, field="image")
    manifest = ensure_upscaler(store, request.model, progress=message)
    engine = choose_engine(request.engine, list(manifest.engines))
    backend = open_backend(
        store.path(manifest.id),
        engine=engine,
        network_scale=manifest.network_scale,
        post_resize=manifest.post_resize,
    )
    settings = TileSettings(
        tile=backend.preferred_tile if request.tile is None else request.tile,
        overlap=request.overlap,
        context=manifest.context,
        batch=request.batch,
    )
    result = upscale_image(
        backend,
        decoded.rgb,
        decoded.alpha,
        scale=request.scale,
        settings=settings,
        alpha_mode=request.alpha,
        progress=progress,
        should_stop=should_stop,
    )
    rgb = result.rgb
    if decoded.grayscale:  # the model may tint gray slightly; keep it gray
        rgb = np.repeat(
            np.rint(rgb.mean(axis=2, dtype=np.float32)).astype(rgb.dtype)[..., None], 3, axis=2
        )
    fmt = request.format or decoded.format
    out = DecodedImage(rgb=rgb, alpha=result.alpha, format=fmt, grayscale=decoded.grayscale)
    data = encode_image(out, fmt, quality=request.quality)
    return UpscaleOutput(data, fmt, out.width, out.height, engine, manifest.id)


def format_for_path(path: Path) -> ImageFormat:
    """The image format a file name asks for.

    Raises:
        InvalidInput: an extension other than .png, .jpg/.jpeg or .webp.
    """
    suffix = path.suffix.lower()
    formats: dict[str, ImageFormat] = {
        ".png": "png",
        ".jpg": "jpeg",
        ".jpeg": "jpeg",
        ".webp": "webp",
    }
    if suffix not in formats:
        raise InvalidInput(
            f"`output` must end in .png, .jpg, .jpeg or .webp but is {path.name!r}",
            field="output",
        )
    return formats[suffix]
