"""The `upscale` kind's ``"mode": "diffusion"``: pre-upscale, a grid of equal tiles, img2img of
every tile with its own prompt (and a tile ControlNet, LoRAs), a colour fix per tile, a feathered
blend in linear light.

Every tile is a pure function of (its crop of the pre-upscaled image, its prompt, its strength,
the seed, its place): no tile reads another's result, so units (batches of tiles) run in any
order on any worker, and the blended output is the same bytes for 1 or N workers and across a
resume. The grid is `kinds.tiles.tile_plan`'s (the caption job's and ``/v1/upscale/plan``'s).
A tile's prompt is its override, else ``prompt + ", " + caption`` (captions from
``captions: "auto"``, made in the tile's own unit by the captioner), else ``prompt``.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from assetbox.config import get_settings
from assetbox.engine.blobs import blob_path
from assetbox.engine.engine import TRANSIENT
from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.errors import AssetboxError, Cancelled, InvalidInput
from assetbox.imaging import (
    DecodedImage,
    TileBlender,
    color_fix,
    decode_image,
    encode_image,
    extract_tile,
    to_uint8,
    verify_image,
)
from assetbox.imaging.codec import MEDIA_TYPES, ImageFormat
from assetbox.imaging.resize import resize_lanczos
from assetbox.imaging.tiles import TilePlan
from assetbox.kinds.diffusion import (
    DEFAULTS,
    MAX_SEED,
    LoraRef,
    check_controlnet,
    check_family_options,
    checkpoint_lease,
    controlnet_lease,
    lora_uses,
)
from assetbox.kinds.ip_adapter import IPAdapterRef, check_ip_adapter, ip_adapter_lease
from assetbox.kinds.tiles import TileSource, check_source, pre_upscaled
from assetbox.kinds.tiles import tile_plan as grid_plan
from assetbox.logs import get_logger
from assetbox.models.builtin import DEFAULT_UPSCALER
from assetbox.models.store import FAMILIES, ModelManifest, ModelStore
from assetbox.pipelines import nsfw

log = get_logger("upscale")

# The family's native tile (what its model was trained at).
NATIVE_TILE = {"sd15": 512, "sdxl": 1024, "flux1": 1024}
# Tiles must be whole latents: 8 px (the VAEs), 16 for Flux (its latents are packed 2x2).
LATENT_FACTOR = {"sd15": 8, "sdxl": 8, "flux1": 16}
DEFAULT_TILE_OVERLAP = 128
DEFAULT_TILE_BATCH = 1
ColorFixName = Literal["wavelet", "adain", "none"]


class TileOverride(BaseModel):
    """One tile's own settings (by id ``row_col``)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, max_length=4000, description="replaces its prompt")
    strength: float | None = Field(default=None, ge=0, le=1)
    skip: bool = Field(default=False, description="keep its pre-upscaled pixels")


class ControlNetUse(BaseModel):
    """A tile ControlNet: its control image is each tile's own pre-upscaled crop."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="store id of the ControlNet (e.g. a tile ControlNet)")
    conditioning_scale: float = Field(default=1.0, ge=0, le=4)


class DiffusionUpscaleFields(BaseModel):
    """What ``"mode": "diffusion"`` adds to an upscale request (ignored by ``"gan"``)."""

    mode: Literal["gan", "diffusion"] = Field(
        default="gan", description="gan: an upscaler model; diffusion: tiled img2img"
    )
    width: int | None = Field(
        default=None, ge=8, le=65536, description="diffusion: output width (instead of scale)"
    )
    height: int | None = Field(
        default=None, ge=8, le=65536, description="diffusion: output height (instead of scale)"
    )
    pre_upscale: str | None = Field(
        default=None,
        description="diffusion: store id of an upscaler (default the built-in GAN) or "
        "'lanczos'; {'model': ID} is taken too",
    )
    controlnet: ControlNetUse | None = None
    loras: list[LoraRef] = Field(default_factory=list, max_length=4)
    ip_adapter: IPAdapterRef | None = Field(
        default=None,
        description="diffusion: an image as a prompt for every tile (SD 1.5, SDXL): {model, "
        "image (default: the input image), scale}",
    )
    prompt: str = Field(default="", max_length=4000, description="diffusion: the global style")
    negative_prompt: str | None = Field(default=None, max_length=4000)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0, le=50)
    strength: float = Field(default=0.35, ge=0, le=1, description="diffusion: how much is redrawn")
    sampler: str | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    tiles: dict[str, TileOverride] = Field(
        default_factory=dict,
        description='diffusion: per tile, {"row_col": {prompt, strength, skip}}',
    )
    captions: Literal["none", "auto"] = Field(
        default="none", description="auto: caption tiles without a prompt override"
    )
    captioner: str | None = Field(
        default=None, description="captions 'auto': store id of a captioner (default: the only one)"
    )
    color_fix: ColorFixName = "wavelet"
    allow_partial: bool = Field(
        default=False,
        description="diffusion: a tile that keeps failing keeps its pre-upscaled pixels and the "
        "job succeeds with a warning",
    )

    @field_validator("pre_upscale", mode="before")
    @classmethod
    def _model_object(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"model"}:
            return value["model"]
        return value


def is_diffusion(request: Any) -> bool:
    return getattr(request, "mode", "gan") == "diffusion"


# -- the request, resolved ----------------------------------------------------------------------


def _store(data_dir: Path) -> ModelStore:
    return ModelStore(data_dir / "models")


def checkpoint(request: Any, data_dir: Path) -> ModelManifest:
    """The request's checkpoint.

    Raises:
        NotFound: no such checkpoint (naming `model`).
        InvalidInput: `model` is an upscaler (the pre-upscaler goes in `pre_upscale`), or of a
            family without img2img.
    """
    from assetbox.pipelines.diffusion import IMG2IMG_FAMILIES

    store = _store(data_dir)
    if store.exists(request.model, "checkpoint"):
        manifest = store.get(request.model, "checkpoint", field="model")
        if manifest.family not in IMG2IMG_FAMILIES:
            raise InvalidInput(
                f"`model` {manifest.id!r} is {manifest.family}, which has no img2img pipeline; "
                f"tiled diffusion upscales with {', '.join(IMG2IMG_FAMILIES)}",
                field="model",
            )
        return manifest
    if store.exists(request.model, "upscaler") or request.model == DEFAULT_UPSCALER:
        raise InvalidInput(
            "`model` must be a checkpoint (sd15, sdxl or flux1) for mode diffusion, not the "
            f"upscaler {request.model!r}; the pre-upscaler goes in `pre_upscale`",
            field="model",
        )
    return store.get(request.model, "checkpoint", field="model")


def source(request: Any) -> TileSource:
    """The grid and pre-upscaler as the tile kinds share them."""
    return TileSource(
        scale=float(request.scale or 2),
        tile=request.tile,
        overlap=request.overlap,
        pre_upscale=request.pre_upscale or DEFAULT_UPSCALER,
    )


def plan_for(request: Any, width: int, height: int) -> TilePlan:
    """The output's grid for a `width` x `height` input."""
    size = (request.width, request.height) if request.width else None
    return grid_plan(width, height, source(request), field="", size=size)


def fill_defaults(request: Any, data_dir: Path) -> None:
    """The family's defaults written into the request at submit (so the job records them):
    tile, overlap, batch, steps, guidance, sampler, pre-upscaler, captioner."""
    from assetbox.pipelines.diffusion import DEFAULT_SAMPLER

    manifest = checkpoint(request, data_dir)
    family = manifest.family
    assert family in FAMILIES
    if request.tile is None:
        request.tile = NATIVE_TILE[family]
    if request.overlap is None:
        request.overlap = DEFAULT_TILE_OVERLAP
    if request.batch is None:
        request.batch = DEFAULT_TILE_BATCH
    request.steps = request.steps or DEFAULTS[family]["steps"]
    if request.guidance is None:
        request.guidance = DEFAULTS[family]["guidance"]
    request.sampler = request.sampler or DEFAULT_SAMPLER[family]
    request.pre_upscale = request.pre_upscale or DEFAULT_UPSCALER
    if request.captions == "auto" and request.captioner is None:
        captioners = _store(data_dir).list("captioner")
        if len(captioners) != 1:
            raise InvalidInput(
                '`captions: "auto"` needs `captioner` (the store has '
                f"{len(captioners)} captioners: {', '.join(m.id for m in captioners) or 'none'})",
                field="captioner" if captioners else "captions",
            )
        request.captioner = captioners[0].id


def check(request: Any, data_dir: Path) -> None:
    """Everything that can be refused at submit, naming the field; fills the defaults.

    Raises:
        NotFound, InvalidInput: see the messages.
    """
    from assetbox.kinds.caption import captioner as captioner_manifest

    if (request.width is None) != (request.height is None):
        field = "height" if request.height is None else "width"
        raise InvalidInput(f"`{field}` goes with the other side: give both or `scale`", field=field)
    if request.width is not None and request.scale is not None:
        raise InvalidInput("give `scale` or `width`/`height`, not both", field="scale")
    if request.scale is not None and not 2 <= request.scale <= 8:
        raise InvalidInput(
            f"`scale` must be 2 to 8 for mode diffusion but is {request.scale}", field="scale"
        )
    fill_defaults(request, data_dir)
    store = _store(data_dir)
    manifest = checkpoint(request, data_dir)
    family = manifest.family
    assert family in FAMILIES
    factor = LATENT_FACTOR[family]
    if request.tile % factor:
        raise InvalidInput(
            f"`tile` must be a multiple of {factor} for {family} but is {request.tile}",
            field="tile",
        )
    if request.overlap * 2 > request.tile:
        raise InvalidInput(
            f"`overlap` must be at most half the tile ({request.tile // 2}) but is "
            f"{request.overlap}",
            field="overlap",
        )
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and value % factor:
            raise InvalidInput(
                f"`{name}` must be a multiple of {factor} for {family} but is {value}", field=name
            )
    check_family_options(store, manifest, request.sampler, request.loras, request.negative_prompt)
    if request.controlnet is not None:
        check_controlnet(store, manifest, request.controlnet.model)
    if request.ip_adapter is not None:
        check_ip_adapter(store, manifest, request.ip_adapter, data_dir, has_input_image=True)
    if request.captions == "auto":
        captioner_manifest(store, request.captioner)
    check_source(source(request), data_dir, field="")
    _, width, height = verify_image(blob_path(data_dir, request.image).read_bytes())
    plan = plan_for(request, width, height)
    if plan.tile_width % factor or plan.tile_height % factor:
        raise InvalidInput(
            f"the output's side below the tile gives a {plan.tile_width}x{plan.tile_height} "
            f"tile, not a multiple of {factor} for {family}; choose another size",
            field="tile",
        )
    ids = {tile.id for tile in plan}
    for tile_id in request.tiles:
        if tile_id not in ids:
            raise InvalidInput(
                f"`tiles` names tile {tile_id!r}, which is not in the {plan.rows}x{plan.cols} "
                "grid (ids are row_col from 0)",
                field=f"tiles.{tile_id}",
            )
    _check_steps_run(request, plan)


def _check_steps_run(request: Any, plan: TilePlan) -> None:
    """img2img runs ``int(steps * strength)`` steps: a strength above 0 that runs none would
    fail inside the pipeline, so it is refused here, naming the strength that does it (the
    global one when a tile takes it, else the tile's override)."""
    for tile in plan:
        strength = _strength(request, tile.id)
        if strength == 0 or int(request.steps * strength) >= 1:
            continue
        override = request.tiles.get(tile.id)
        own = override is not None and override.strength is not None
        field = f"tiles.{tile.id}.strength" if own else "strength"
        raise InvalidInput(
            f"`{field}` {strength} of {request.steps} steps leaves no step to run: use at "
            f"least {1 / request.steps:.3g}, more steps, or 0 (or skip) to keep the tile",
            field=field,
        )


def fill_seed(request: Any) -> Any:
    if request.seed is not None:
        return request
    return request.model_copy(update={"seed": secrets.randbelow(MAX_SEED)})


# -- units ---------------------------------------------------------------------------------------


def _strength(request: Any, tile_id: str) -> float:
    override = request.tiles.get(tile_id)
    if override is not None and override.skip:
        return 0.0
    if override is not None and override.strength is not None:
        return override.strength
    return request.strength


def plan_units(request: Any, plan: TilePlan) -> list[dict[str, Any]]:
    """Batches of `batch` tiles of one strength (one forward pass each), in row-major order of
    their first tile; untouched tiles (strength 0, skip) go in batches of their own."""
    groups: dict[float, list[str]] = {}
    for tile in plan:
        groups.setdefault(_strength(request, tile.id), []).append(tile.id)
    units = []
    for strength, ids in groups.items():
        size = 64 if strength == 0 else request.batch
        units += [
            {"strength": strength, "tiles": ids[i : i + size]} for i in range(0, len(ids), size)
        ]
    index = {tile.id: n for n, tile in enumerate(plan)}
    return sorted(units, key=lambda unit: index[unit["tiles"][0]])


def input_image(request: Any, data_dir: Path, cache: dict[str, Any]) -> DecodedImage:
    """The request's decoded input, kept in the worker's scratch (one per worker): both modes'
    units read it."""
    key = f"image:{request.image}"
    if key not in cache:
        for old in [k for k in cache if k.startswith("image:")]:
            del cache[old]  # one decoded image per worker is enough
        data = blob_path(data_dir, request.image).read_bytes()
        cache[key] = decode_image(data, field="image")
    return cache[key]


def attempts() -> int:
    from assetbox.config import get_settings

    return get_settings().unit_max_attempts


def run_unit(request: Any, payload: dict[str, Any], ctx: UnitContext) -> bytes:
    """One batch of tiles → their blended-ready pixels (and captions, failures, the unit's peak
    memory) as an npz."""
    from assetbox.pipelines.memory import PeakMemory

    with PeakMemory(_device()) as peak:
        out, captions, failed = _run_tiles(request, payload, ctx)
    meta = {"captions": captions, "failed": failed, "peak": peak.report()}
    buffer = io.BytesIO()
    np.savez(buffer, tiles=np.stack(out), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return buffer.getvalue()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # as pipelines.diffusion places models


def _run_tiles(
    request: Any, payload: dict[str, Any], ctx: UnitContext
) -> tuple[list[np.ndarray], dict[str, str], dict[str, str]]:
    image = input_image(request, ctx.data_dir, ctx.cache)
    rgb = to_uint8(image.rgb)
    plan = plan_for(request, image.width, image.height)
    key = f"pre-upscaled:{request.image}:{source(request).model_dump_json()}:{plan.width}"
    big = pre_upscaled(rgb, source(request), ctx, key=key, field="", size=(plan.width, plan.height))
    tiles = [plan.tile(tile_id) for tile_id in payload["tiles"]]
    crops = [np.ascontiguousarray(extract_tile(big, tile)) for tile in tiles]
    strength = float(payload["strength"])
    captions: dict[str, str] = {}
    failed: dict[str, str] = {}
    if strength == 0:
        out = crops
    else:
        try:
            out, captions = _diffuse(request, tiles, crops, strength, plan, ctx)
        except Cancelled:
            raise
        except Exception as exc:
            # A transient error is retried by the engine (maybe on another worker) until its
            # last attempt; any other is final at once.
            final = not isinstance(exc, TRANSIENT) or ctx.attempt >= attempts()
            named = ", ".join(tile.id for tile in tiles)
            message = (
                exc.message if isinstance(exc, AssetboxError) else f"{type(exc).__name__}: {exc}"
            )
            if not (request.allow_partial and final):
                if not isinstance(exc, AssetboxError):
                    raise AssetboxError(f"tile {named}: {message}") from exc
                exc.message = f"tile {named}: {message}"  # the same error, naming its tiles
                exc.args = (exc.message,)
                raise
            log.warning(
                "tiles failed; they keep their pre-upscaled pixels",
                extra={"tiles": named, "error": message},
            )
            out = crops
            failed = {tile.id: message for tile in tiles}
    return out, captions, failed


def _diffuse(
    request: Any,
    tiles: Sequence[Any],
    crops: list[np.ndarray],
    strength: float,
    plan: TilePlan,
    ctx: UnitContext,
) -> tuple[list[np.ndarray], dict[str, str]]:
    from assetbox.pipelines.upscale_tiled import TiledParams, TileInput, diffuse_tiles

    store = _store(ctx.data_dir)
    manifest = checkpoint(request, ctx.data_dir)
    captions = _captions(request, tiles, crops, ctx) if request.captions == "auto" else {}
    inputs = [
        TileInput(
            pixels=crop,
            prompt=tile_prompt(request, tile.id, captions.get(tile.id)),
            x=tile.x,
            y=tile.y,
            seed=request.seed + tile.row * plan.cols + tile.col,
        )
        for tile, crop in zip(tiles, crops, strict=True)
    ]
    params = TiledParams(
        canvas=(plan.width, plan.height),
        steps=request.steps,
        strength=strength,
        sampler=request.sampler,
        noise_seed=request.seed,
        guidance=request.guidance,
        negative_prompt=request.negative_prompt,
        loras=lora_uses(store, request.loras),
        conditioning_scale=request.controlnet.conditioning_scale if request.controlnet else 1.0,
    )
    with (
        checkpoint_lease(manifest, ctx) as model,
        ip_adapter_lease(request.ip_adapter, manifest.family, ctx) as adapter,
    ):
        if adapter is not None:
            params = replace(params, ip_adapter=_ip_adapter_use(request, adapter, ctx))
        if request.controlnet is None:
            out = diffuse_tiles(
                model, inputs, params, should_stop=ctx.should_stop, report_step=ctx.report_step
            )
        else:
            with controlnet_lease(request.controlnet.model, manifest.family, ctx) as net:
                out = diffuse_tiles(
                    model,
                    inputs,
                    params,
                    controlnet=net,
                    should_stop=ctx.should_stop,
                    report_step=ctx.report_step,
                )
    if request.color_fix != "none":
        out = [color_fix(o, c, request.color_fix) for o, c in zip(out, crops, strict=True)]
    return out, captions


def _ip_adapter_use(request: Any, adapter: Any, ctx: UnitContext) -> Any:
    """The adapter with its image: the request's own, else the whole input image."""
    from assetbox.pipelines.ip_adapter import IPAdapterUse

    ref = request.ip_adapter
    if ref.image is None:
        image = input_image(request, ctx.data_dir, ctx.cache)
    else:
        data = blob_path(ctx.data_dir, ref.image, field="ip_adapter.image").read_bytes()
        image = decode_image(data, field="ip_adapter.image")
    return IPAdapterUse(adapter, to_uint8(image.rgb), ref.scale)


def tile_prompt(request: Any, tile_id: str, caption: str | None) -> str:
    """A tile's prompt: its override, else the global prompt and its caption."""
    override = request.tiles.get(tile_id)
    if override is not None and override.prompt is not None:
        return override.prompt
    return ", ".join(part for part in (request.prompt, caption) if part)


def _captions(
    request: Any, tiles: Sequence[Any], crops: list[np.ndarray], ctx: UnitContext
) -> dict[str, str]:
    """Captions of the tiles without a prompt override, by the request's captioner."""
    from assetbox.kinds.caption import captioner, lease_captioner
    from assetbox.pipelines.caption import caption

    wanted = [
        (tile.id, crop)
        for tile, crop in zip(tiles, crops, strict=True)
        if (o := request.tiles.get(tile.id)) is None or o.prompt is None
    ]
    if not wanted:
        return {}
    manifest = captioner(_store(ctx.data_dir), request.captioner)
    with lease_captioner(manifest, ctx) as model:
        found = caption(
            model,
            [crop for _, crop in wanted],
            should_stop=ctx.should_stop,
            report_token=ctx.report_step,
        )
    return {tile_id: c.text for (tile_id, _), c in zip(wanted, found, strict=True)}


# -- assembly ------------------------------------------------------------------------------------


def assemble(request: Any, results: Sequence[bytes], data_dir: Path) -> list[AssembledOutput]:
    """Blend every tile (row by row, in bands), encode, and report each tile's prompt and
    strength, the captions and failures."""
    started = time.perf_counter()
    image = input_image(request, data_dir, {})
    plan = plan_for(request, image.width, image.height)
    units = plan_units(request, plan)
    where = {tile_id: n for n, unit in enumerate(units) for tile_id in unit["tiles"]}
    loaded: dict[int, dict[str, Any]] = {}
    captions: dict[str, str] = {}
    failed: dict[str, str] = {}
    peaks: dict[str, float] = {}
    blender = TileBlender(plan)
    out = np.empty((plan.height, plan.width, 3), dtype=np.uint8)
    left = {n: len(unit["tiles"]) for n, unit in enumerate(units)}
    for tile in plan:
        n = where[tile.id]
        if n not in loaded:
            data = np.load(io.BytesIO(results[n]), allow_pickle=False)
            meta = json.loads(data["meta"].tobytes())
            captions |= meta["captions"]
            failed |= meta["failed"]
            for name, value in meta.get("peak", {}).items():  # the largest unit's
                peaks[name] = max(peaks.get(name, 0.0), value)
            loaded[n] = dict(zip(units[n]["tiles"], data["tiles"], strict=True))
        pixels = loaded[n][tile.id]
        left[n] -= 1
        if not left[n]:
            del loaded[n]  # every tile of the unit is in: its pixels can go
        for band in blender.add(tile, pixels):
            out[band.y : band.y + len(band.pixels)] = band.pixels
    alpha = None
    if image.alpha is not None:
        alpha = resize_lanczos(to_uint8(image.alpha), (plan.width, plan.height))
    screening = nsfw.screen(out, get_settings())  # raises under `block`
    if screening is not None:
        out = screening.rgb
    fmt: ImageFormat = request.format or image.format
    data = encode_image(
        DecodedImage(rgb=out, alpha=alpha, format=fmt), fmt, quality=request.quality
    )
    summary: dict[str, Any] = {"tiles": tile_report(request, plan, captions)}
    if captions:
        summary["captions"] = [{"id": k, "caption": v} for k, v in sorted(captions.items())]
    if failed:
        summary["warnings"] = [
            f"tile {tile_id} failed ({message}); it keeps its pre-upscaled pixels"
            for tile_id, message in sorted(failed.items())
        ]
    return [
        AssembledOutput(
            data=data,
            media_type=MEDIA_TYPES[fmt],
            extension={"jpeg": "jpg"}.get(fmt, fmt),
            width=plan.width,
            height=plan.height,
            seed=request.seed,
            timings_ms={"assemble": round((time.perf_counter() - started) * 1000, 1)} | peaks,
            summary=summary,
            **nsfw.output_fields(screening),
        )
    ]


def tile_report(request: Any, plan: TilePlan, captions: dict[str, str]) -> list[dict[str, Any]]:
    """What each tile was given, in plan order: ``{"id", "strength", "prompt"}`` for a redrawn
    tile (its prompt as the denoiser got it: override, or global prompt and caption);
    ``{"id", "skip": true}`` for one that kept its pre-upscaled pixels by request; a tile at
    strength 0 has no prompt (nothing was drawn)."""
    report: list[dict[str, Any]] = []
    for tile in plan:
        override = request.tiles.get(tile.id)
        if override is not None and override.skip:
            report.append({"id": tile.id, "skip": True})
            continue
        strength = _strength(request, tile.id)
        entry: dict[str, Any] = {"id": tile.id, "strength": strength}
        if strength > 0:
            entry["prompt"] = tile_prompt(request, tile.id, captions.get(tile.id))
        report.append(entry)
    return report
