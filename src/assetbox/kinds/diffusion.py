"""What the diffusion kinds `generate` (kinds/generate.py) and `edit` (kinds/edit.py) share.

One unit per prompt: its ``num_images_per_prompt`` images in one batch, image k of prompt p with
seed ``seed + p * num_images_per_prompt + k``. A request without a seed gets a random one when it
is queued (`fill`, after the request is hashed, so an idempotent re-submit still matches), so the
job records it, a resumed job repeats it, and outputs report it. Everything
that needs the model store (the model exists, LoRAs and ControlNet of the same family, sizes and
sampler valid for the family, input images that decode completely) is checked at submit,
before anything is queued. An edit without a size runs at its input's size, filled in at submit
so that the job records it.
"""

from __future__ import annotations

import io
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator, model_validator

from assetbox.config import get_settings
from assetbox.engine.blobs import blob_path
from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.errors import InvalidInput
from assetbox.imaging import DecodedImage, decode_image, encode_image, to_uint8, verify_image
from assetbox.imaging.codec import MEDIA_TYPES, ImageFormat
from assetbox.kinds.ip_adapter import IPAdapterRef, check_ip_adapter, ip_adapter_lease
from assetbox.models.cache import files_bytes
from assetbox.models.diffusion_import import CONFIG_DIR, DIFFUSERS_DIR, WEIGHTS_FILE
from assetbox.models.store import FAMILIES, ModelManifest, ModelStore
from assetbox.pipelines import nsfw
from assetbox.pipelines.flux2 import (
    FLUX2_FAMILIES,
    MAX_REFERENCE_WEIGHT,
    MAX_REFERENCES,
    check_reference_size,
    run_flux2,
)
from assetbox.pipelines.memory import peak_report

MAX_SEED = 2**32 - 1
MAX_SIZE = 4096
# Per family: default size, steps, guidance (the model makers' recommendations; see also
# `defaults_for`, `fill_guidance`).
DEFAULTS: dict[str, dict[str, Any]] = {
    "sd15": {"size": 512, "steps": 30, "guidance": 7.0},
    "sdxl": {"size": 1024, "steps": 30, "guidance": 5.0},
    "flux1": {"size": 1024, "steps": 28, "guidance": 3.5},
    # klein as released is step- and guidance-distilled (4 steps, no CFG); base klein: see
    # `defaults_for`.
    "flux2_klein": {"size": 1024, "steps": 4, "guidance": 1.0},
    "flux2": {"size": 1024, "steps": 50, "guidance": 4.0},
    # Qwen: `guidance` is the true CFG scale (acts only with a negative prompt).
    "qwen_image": {"size": 1328, "steps": 50, "guidance": 4.0},
    "qwen_image_edit": {"size": 1024, "steps": 50, "guidance": 4.0},
    "qwen_image_edit_plus": {"size": 1024, "steps": 40, "guidance": 4.0},
    # Z-Image-Turbo: 9 steps (8 transformer passes), no CFG (guidance 0).
    "z_image": {"size": 1024, "steps": 9, "guidance": 0.0},
}


# Families whose LoRAs serve each other: Qwen-Image's LoRAs (recorded as qwen_image: their keys
# are the same) fit the edit models, which share its transformer architecture.
LORA_GROUP = {"qwen_image_edit": "qwen_image", "qwen_image_edit_plus": "qwen_image"}
# Families whose pipelines take no negative prompt, and why.
NO_NEGATIVE_PROMPT = {
    "flux1": "Flux.1 (guidance-distilled)",
    "flux2_klein": "FLUX.2 klein (its pipeline takes no negative prompt)",
    "flux2": "FLUX.2 (guidance-distilled)",
}


class LoraRef(BaseModel):
    name: str = Field(description="store id of the LoRA")
    weight: float = Field(default=1.0, ge=-4, le=4)


class ReferenceImage(BaseModel):
    image: str = Field(description="a reference image (blob; at HTTP base64 or an http(s) URL)")
    weight: float = Field(
        default=1.0,
        ge=0,
        le=MAX_REFERENCE_WEIGHT,
        description="how much the output draws on it: 1 as FLUX.2 itself, 0 as if left out",
    )


class ControlNetRef(BaseModel):
    model: str = Field(description="store id of the ControlNet")
    image: str | None = Field(
        default=None, description="the control image (blob); default: the input image"
    )
    conditioning_scale: float = Field(default=1.0, ge=0, le=4)


class GenerateOptions(BaseModel):
    """A text-to-image request; `width`, `height`, `steps`, `guidance`, `sampler` default to
    the model family's recommendations."""

    model: str = Field(description="store id of a checkpoint")
    prompts: list[str] = Field(min_length=1, max_length=64)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    num_images_per_prompt: int = Field(default=1, ge=1, le=16)
    width: int | None = Field(
        default=None,
        ge=64,
        le=MAX_SIZE,
        multiple_of=8,
        description="output width; a multiple of 8 (16 for the flow families: flux1, flux2, "
        "flux2_klein, qwen_image*, z_image); default: the family's (512 for sd15, 1328 for "
        "qwen_image, 1024 for the others)",
    )
    height: int | None = Field(
        default=None,
        ge=64,
        le=MAX_SIZE,
        multiple_of=8,
        description="output height; a multiple of 8 (16 for the flow families: flux1, flux2, "
        "flux2_klein, qwen_image*, z_image); default: the family's (512 for sd15, 1328 for "
        "qwen_image, 1024 for the others)",
    )
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(
        default=None,
        ge=0,
        le=50,
        description="CFG scale (Qwen-Image: its true CFG, acting only above 1 with a "
        "`negative_prompt`; FLUX.1/FLUX.2 [dev]: the embedded guidance; Z-Image: CFG above 0, "
        "default 0 as Turbo; not for distilled FLUX.2 klein); default: the family's",
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    sampler: str | None = Field(default=None, description="euler, euler_a, ddim, dpmpp_2m, ...")
    loras: list[LoraRef] = Field(default_factory=list, max_length=4)
    references: list[ReferenceImage] = Field(
        default_factory=list,
        max_length=MAX_REFERENCES,
        description="FLUX.2 only: reference images, each at least 64 px a side, with weights; "
        "shared by all prompts (encoded once per job)",
    )
    ip_adapter: IPAdapterRef | None = Field(
        default=None, description="an image as a prompt (SD 1.5, SDXL): {model, image, scale}"
    )
    backend: Literal["auto", "nunchaku", "diffusers"] = Field(
        default="auto",
        description="nunchaku: SVDQuant 4-bit Qwen-Image(-Edit) on a supported CUDA GPU (refused "
        "with the reason where it cannot run); auto: nunchaku where it can run, else diffusers",
    )
    rank: Literal[32, 128] | None = Field(
        default=None,
        description="nunchaku only: the SVD rank of its weights (32 faster, 128 closer to bf16); "
        "default: 128 where the checkpoint has both",
    )
    format: ImageFormat = "png"

    @field_validator("prompts")
    @classmethod
    def _prompts_are_text(cls, prompts: list[str]) -> list[str]:
        for prompt in prompts:
            if len(prompt) > 4000:
                raise ValueError("each prompt must be at most 4000 characters")
        return prompts

    @model_validator(mode="after")
    def _adapters_once(self):
        names = [lora.name for lora in self.loras]
        if len(set(names)) != len(names):
            raise ValueError("each LoRA may be listed once")
        return self


def _adapter_name(manifest: ModelManifest) -> str:
    """A LoRA's adapter name in the pipeline: its id and weights' hash (a re-imported LoRA under
    the same id is another adapter)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{manifest.id}_{manifest.sha256[:12]}")


def _store(data_dir: Path) -> ModelStore:
    return ModelStore(data_dir / "models")


def _checkpoint(request: GenerateOptions, data_dir: Path) -> ModelManifest:
    return _store(data_dir).get(request.model, "checkpoint", field="model")


def check_family_options(
    store: ModelStore,
    manifest: ModelManifest,
    sampler: str | None,
    loras: Sequence[LoraRef],
    negative_prompt: str | None,
) -> None:
    """The sampler, LoRAs and negative prompt suit the checkpoint's family.

    Raises:
        NotFound: a LoRA missing (naming ``loras.N.name``).
        InvalidInput: a sampler of another family, a LoRA of another family, a negative prompt
            for Flux.1 (naming the field).
    """
    from assetbox.pipelines.diffusion import samplers_for

    family = manifest.family
    assert family in FAMILIES
    if sampler is not None and sampler not in samplers_for(family):
        raise InvalidInput(
            f"`sampler` must be one of {', '.join(samplers_for(family))} for {family}, "
            f"not {sampler!r}",
            field="sampler",
        )
    for n, lora in enumerate(loras):
        found = store.get(lora.name, "lora", field=f"loras.{n}.name")
        if LORA_GROUP.get(found.family, found.family) != LORA_GROUP.get(family, family):
            raise InvalidInput(
                f"LoRA {lora.name!r} is for {found.family}, the checkpoint "
                f"{manifest.id!r} is {family}",
                field=f"loras.{n}.name",
            )
    if family in NO_NEGATIVE_PROMPT and negative_prompt:
        raise InvalidInput(
            f"`negative_prompt` has no effect on {NO_NEGATIVE_PROMPT[family]}; leave it out",
            field="negative_prompt",
        )


def defaults_for(manifest: ModelManifest) -> dict[str, Any]:
    """The checkpoint's default size, steps and guidance: its family's (`DEFAULTS`), but base
    (undistilled) FLUX.2 klein's are 50 steps at guidance 4."""
    if manifest.family == "flux2_klein" and manifest.distilled is False:
        return DEFAULTS["flux2_klein"] | {"steps": 50, "guidance": 4.0}
    assert manifest.family in FAMILIES
    return DEFAULTS[manifest.family]


def fill_guidance(store: ModelStore, manifest: ModelManifest, request: Any) -> None:
    """A family's guidance semantics, checked at submit, and a speed LoRA's defaults filled in
    (`steps`, `guidance`), so the job records what it runs with.

    - distilled FLUX.2 klein has no CFG: `guidance` is refused;
    - Z-Image runs CFG only at guidance > 0 (Turbo's default is 0), Qwen-Image's true CFG only
      above 1: a negative prompt that would have no effect is refused;
    - a speed LoRA (its manifest's ``speed_steps``; at most one) sets the default steps to its
      own and the guidance to none (1, or 0 for Z-Image).

    Raises:
        InvalidInput: naming ``guidance``, ``negative_prompt`` or ``loras.N.name``.
    """
    family = manifest.family
    speed = [
        (n, found)
        for n, lora in enumerate(request.loras)
        if (found := store.get(lora.name, "lora", field=f"loras.{n}.name")).speed_steps
    ]
    if len(speed) > 1:
        raise InvalidInput(
            f"one speed LoRA at a time: {speed[0][1].id!r} and {speed[1][1].id!r} both set the "
            "steps",
            field=f"loras.{speed[1][0]}.name",
        )
    if speed:
        if request.steps is None:
            request.steps = speed[0][1].speed_steps
        if request.guidance is None and not (family == "flux2_klein" and manifest.distilled):
            request.guidance = 0.0 if family == "z_image" else 1.0
    if family == "flux2_klein" and manifest.distilled and request.guidance is not None:
        raise InvalidInput(
            f"`guidance` has no effect on {manifest.id!r}: distilled FLUX.2 klein runs without "
            "CFG; leave it out",
            field="guidance",
        )
    guidance = (
        request.guidance if request.guidance is not None else defaults_for(manifest)["guidance"]
    )
    no_cfg_at = {"z_image": 0.0, "qwen_image": 1.0, "qwen_image_edit": 1.0}
    no_cfg_at["qwen_image_edit_plus"] = 1.0
    if request.negative_prompt and family in no_cfg_at and guidance <= no_cfg_at[family]:
        raise InvalidInput(
            f"`negative_prompt` has no effect on {family} at guidance {guidance:g} (CFG runs "
            f"above {no_cfg_at[family]:g}); raise `guidance` or leave the negative prompt out",
            field="negative_prompt",
        )


def check_controlnet(store: ModelStore, manifest: ModelManifest, model_id: str) -> None:
    """The ControlNet exists and is of the checkpoint's family (naming ``controlnet.model``)."""
    net = store.get(model_id, "controlnet", field="controlnet.model")
    if net.family != manifest.family:
        raise InvalidInput(
            f"ControlNet {net.id!r} is for {net.family}, the checkpoint "
            f"{manifest.id!r} is {manifest.family}",
            field="controlnet.model",
        )


def lora_uses(store: ModelStore, loras: Sequence[LoraRef]) -> list[Any]:
    """The pipelines' view of a request's LoRAs (file, adapter name, weight, speed LoRA)."""
    from assetbox.pipelines.diffusion import LoraUse

    uses = []
    for n, lora in enumerate(loras):
        found = store.get(lora.name, "lora", field=f"loras.{n}.name")
        path = store.path(lora.name, "lora") / WEIGHTS_FILE
        uses.append(LoraUse(path, _adapter_name(found), lora.weight, speed=bool(found.speed_steps)))
    return uses


def check_references(references: Sequence[ReferenceImage], family: str, data_dir: Path) -> None:
    """References only for FLUX.2 (naming ``references``); each a stored image that decodes
    completely, at least 64 px a side, at most 8:1 (naming ``references.N.image``)."""
    if references and family not in FLUX2_FAMILIES:
        raise InvalidInput(
            f"`references` are for FLUX.2 ({', '.join(FLUX2_FAMILIES)}), not {family}",
            field="references",
        )
    for n, reference in enumerate(references):
        field = f"references.{n}.image"
        data = blob_path(data_dir, reference.image, field=field).read_bytes()
        _, width, height = verify_image(data, field=field)
        check_reference_size(width, height, field)


def reference_images(
    references: Sequence[ReferenceImage], ctx: UnitContext
) -> list[tuple[np.ndarray, float]]:
    """The references decoded (8 bits) with their weights; kept in the worker's cache while
    units of the same references follow (the prompts of one job)."""
    wanted = {f"diffusion-reference:{reference.image}" for reference in references}
    for old in [k for k in ctx.cache if k.startswith("diffusion-reference:") and k not in wanted]:
        del ctx.cache[old]
    out = []
    for n, reference in enumerate(references):
        key = f"diffusion-reference:{reference.image}"
        if key not in ctx.cache:
            data = blob_path(ctx.data_dir, reference.image).read_bytes()
            ctx.cache[key] = to_uint8(decode_image(data, field=f"references.{n}.image").rgb)
        out.append((ctx.cache[key], reference.weight))
    return out


def resolve_backend(request: GenerateOptions, manifest: ModelManifest, store: ModelStore) -> str:
    """The backend the request runs on, "nunchaku" or "diffusers" (pipelines/nunchaku.py).

    Raises:
        InvalidInput: `backend` "nunchaku" where it cannot run, with the reason (naming
            ``backend``); a `rank` for a request that runs on diffusers (naming ``rank``).
    """
    from assetbox.pipelines.nunchaku import resolve

    folder = store.path(manifest.id, "checkpoint") / DIFFUSERS_DIR
    return resolve(str(manifest.family), request.backend, request.rank, folder)


def checkpoint_key(manifest: ModelManifest, rank: int | None = None) -> str:
    """The cache key of a loaded checkpoint; with `rank`, of its Nunchaku build."""
    nunchaku = "" if rank is None else f":nunchaku-r{rank}"
    return f"checkpoint:{manifest.id}:{manifest.sha256[:12]}{nunchaku}"


def checkpoint_lease(
    manifest: ModelManifest, ctx: UnitContext, *, nunchaku: bool = False, rank: int | None = None
) -> AbstractContextManager[Any]:
    """The checkpoint from the worker's model cache (loaded on first use), held exclusively:
    schedulers and LoRA adapters are state, so one run at a time. With `nunchaku`, its
    transformer is Nunchaku's of `rank` (see pipelines/nunchaku.py)."""
    from assetbox.config import get_settings
    from assetbox.pipelines.diffusion import load_checkpoint

    folder = _store(ctx.data_dir).path(manifest.id, "checkpoint")
    family = manifest.family
    assert family in FAMILIES
    quantization = get_settings().quantization

    def load():
        if nunchaku:
            from assetbox.pipelines.nunchaku import load_transformer

            return load_checkpoint(
                family,
                folder=folder / DIFFUSERS_DIR,
                budget_bytes=ctx.models.budget_bytes,
                transformer=load_transformer(folder / DIFFUSERS_DIR, rank),
            )
        if manifest.layout == "diffusers":
            return load_checkpoint(
                family,
                folder=folder / DIFFUSERS_DIR,
                budget_bytes=ctx.models.budget_bytes,
                quantization=quantization,
            )
        return load_checkpoint(
            family,
            single_file=folder / WEIGHTS_FILE,
            config=folder / CONFIG_DIR,
            budget_bytes=ctx.models.budget_bytes,
            quantization=quantization,
        )

    key = checkpoint_key(manifest, rank if nunchaku else None)
    return ctx.models.lease(key, load, estimate=files_bytes(folder), exclusive=True)


def controlnet_lease(model_id: str, family: str, ctx: UnitContext) -> AbstractContextManager[Any]:
    """The ControlNet `model_id` from the worker's model cache (loaded on first use)."""
    from assetbox.pipelines.diffusion import load_controlnet

    store = _store(ctx.data_dir)
    net = store.get(model_id, "controlnet", field="controlnet.model")
    folder = store.path(net.id, "controlnet") / DIFFUSERS_DIR
    return ctx.models.lease(
        f"controlnet:{net.id}:{net.sha256[:12]}",
        lambda: load_controlnet(family, folder),  # type: ignore[arg-type]
        estimate=files_bytes(folder),
    )


class DiffusionPlanner:
    """What generate and edit share: checks against the store, one unit per prompt, the run.

    A kind adds its own inputs with `_check_inputs` (at submit) and `_inputs` (on the worker).
    """

    kind: str
    request_model: type[GenerateOptions]

    # -- at submit ------------------------------------------------------------------------------

    def fill(self, request: BaseModel) -> BaseModel:
        """The request as queued: a random seed when it has none (drawn once, stored)."""
        assert isinstance(request, GenerateOptions)
        if request.seed is not None:
            return request
        # Below MAX_SEED by room for a batch's seed + 1, seed + 2, ...
        return request.model_copy(update={"seed": secrets.randbelow(MAX_SEED - 1024)})

    def check(self, request: BaseModel, data_dir: Path) -> None:
        """Raises NotFound/InvalidInput naming the field; nothing is queued then."""
        from assetbox.pipelines.diffusion import SIZE_MULTIPLE

        assert isinstance(request, GenerateOptions)
        store = _store(data_dir)
        manifest = _checkpoint(request, data_dir)
        family = manifest.family
        assert family in FAMILIES
        multiple = SIZE_MULTIPLE[family]
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value % multiple:
                raise InvalidInput(
                    f"`{name}` must be a multiple of {multiple} for {family} but is {value}",
                    field=name,
                )
        check_family_options(
            store, manifest, request.sampler, request.loras, request.negative_prompt
        )
        fill_guidance(store, manifest, request)
        images = len(request.prompts) * request.num_images_per_prompt
        if request.seed is not None and request.seed + images - 1 > MAX_SEED:
            raise InvalidInput(
                f"`seed` + {images} images must stay at most {MAX_SEED}; use a smaller seed",
                field="seed",
            )
        if request.ip_adapter is not None:
            has_image = getattr(request, "image", None) is not None
            check_ip_adapter(
                store, manifest, request.ip_adapter, data_dir, has_input_image=has_image
            )
        check_references(request.references, family, data_dir)
        resolve_backend(request, manifest, store)
        self._check_inputs(request, store, manifest, data_dir)

    def _check_inputs(
        self, request: GenerateOptions, store: ModelStore, manifest: ModelManifest, data_dir: Path
    ) -> None:
        """A kind's own submit-time checks (its input images, ControlNet); text to image here:
        the instruction-edit checkpoints take none."""
        from assetbox.pipelines.diffusion import INSTRUCTION_EDIT_IMAGES

        if manifest.family in INSTRUCTION_EDIT_IMAGES:
            raise InvalidInput(
                f"{manifest.id!r} is {manifest.family}, which edits images by instruction: "
                "use POST /v1/edit with `instruction` and `images`",
                field="model",
            )

    def _inputs(
        self, request: GenerateOptions, params: Any, ctx: UnitContext
    ) -> ControlNetRef | None:
        """A kind's own inputs into `params` (a RunParams); the ControlNet to run with."""
        return None

    # -- the planner ----------------------------------------------------------------------------

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        assert isinstance(request, GenerateOptions) and request.seed is not None
        _checkpoint(request, data_dir)  # deleted since submit: fail before any unit
        n = request.num_images_per_prompt
        return [
            {"prompt": p, "seeds": [request.seed + p * n + k for k in range(n)]}
            for p in range(len(request.prompts))
        ]

    def _image(self, ref: str, ctx: UnitContext, field: str) -> np.ndarray:
        key = f"diffusion-image:{ref}"  # not upscale's "image:" entries (another type)
        if key in ctx.cache:
            ctx.cache[key] = ctx.cache.pop(key)  # now the newest
        else:
            for old in [k for k in ctx.cache if k.startswith("diffusion-image:")][:-1]:
                del ctx.cache[old]  # an input and its control image are enough
            data = blob_path(ctx.data_dir, ref).read_bytes()
            decoded: DecodedImage = decode_image(data, field=field)
            rgb = decoded.rgb
            ctx.cache[key] = to_uint8(rgb)  # 16-bit input: the pipelines take 8 bits
        return ctx.cache[key]

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        from assetbox.pipelines.diffusion import DEFAULT_SAMPLER, RunParams, device_and_dtype, run
        from assetbox.pipelines.ip_adapter import IPAdapterUse
        from assetbox.pipelines.memory import PeakMemory

        assert isinstance(request, GenerateOptions)
        started = time.perf_counter()
        store = _store(ctx.data_dir)
        manifest = _checkpoint(request, ctx.data_dir)
        family = manifest.family
        assert family in FAMILIES
        defaults = defaults_for(manifest)
        params = RunParams(
            prompt=request.prompts[payload["prompt"]],
            negative_prompt=request.negative_prompt,
            width=request.width or defaults["size"],
            height=request.height or defaults["size"],
            steps=request.steps or defaults["steps"],
            guidance=request.guidance if request.guidance is not None else defaults["guidance"],
            seeds=payload["seeds"],
            sampler=request.sampler or DEFAULT_SAMPLER[family],
            loras=lora_uses(store, request.loras),
        )
        params.references = reference_images(request.references, ctx)
        net_ref = self._inputs(request, params, ctx)
        nunchaku = resolve_backend(request, manifest, store) == "nunchaku"
        key = checkpoint_key(manifest, request.rank if nunchaku else None)
        peak = PeakMemory(device_and_dtype(family)[0])  # the unit's, model loading included
        with (
            peak,
            checkpoint_lease(manifest, ctx, nunchaku=nunchaku, rank=request.rank) as model,
            ip_adapter_lease(request.ip_adapter, family, ctx) as adapter,
        ):
            if adapter is not None:
                assert request.ip_adapter is not None
                ref = request.ip_adapter.image or getattr(request, "image")  # noqa: B009
                image = self._image(ref, ctx, "ip_adapter.image")
                params.ip_adapter = IPAdapterUse(adapter, image, request.ip_adapter.scale)
            if family in FLUX2_FAMILIES:
                images = run_flux2(
                    model, params, should_stop=ctx.should_stop, report_step=ctx.report_step
                )
            elif net_ref is None:
                images = run(
                    model, params, should_stop=ctx.should_stop, report_step=ctx.report_step
                )
            else:
                with controlnet_lease(net_ref.model, family, ctx) as controlnet:
                    images = run(
                        model,
                        params,
                        controlnet=controlnet,
                        should_stop=ctx.should_stop,
                        report_step=ctx.report_step,
                    )
        if request.loras:
            ctx.models.remeasure(key)  # adapters stay loaded: count their memory too
        buffer = io.BytesIO()
        elapsed = np.array([(time.perf_counter() - started) * 1000], dtype=np.float64)
        np.savez(buffer, images=np.stack(images), elapsed_ms=elapsed, peak_mb=peak.as_array())
        return buffer.getvalue()

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        assert isinstance(request, GenerateOptions) and request.seed is not None
        outputs = []
        seed = request.seed
        for data in results:
            unit = np.load(io.BytesIO(data), allow_pickle=False)
            elapsed = float(unit["elapsed_ms"][0])
            memory = peak_report(unit["peak_mb"]) if "peak_mb" in unit.files else {}
            images = unit["images"]
            for image in images:
                started = time.perf_counter()
                screening = nsfw.screen(image, get_settings())  # raises under `block`
                if screening is not None:
                    image = screening.rgb
                fmt: ImageFormat = request.format
                encoded = encode_image(DecodedImage(rgb=image, alpha=None, format=fmt), fmt)
                outputs.append(
                    AssembledOutput(
                        data=encoded,
                        media_type=MEDIA_TYPES[fmt],
                        extension={"jpeg": "jpg"}.get(fmt, fmt),
                        width=int(image.shape[1]),
                        height=int(image.shape[0]),
                        seed=seed,
                        timings_ms={
                            "generate": round(elapsed / len(images), 1),
                            "encode": round((time.perf_counter() - started) * 1000, 1),
                        }
                        | memory,
                        **nsfw.output_fields(screening),
                    )
                )
                seed += 1
        return outputs
