"""The Qwen edit service's HTTP shape: ``POST /edit-image``, ``GET /model-info``,
``POST /model-config``, errors as ``{error, detail, timestamp, request_id}``.

`/edit-image` is our `/v1/edit` instruction form (`prompt` → `instruction`, `image` → `images`,
`num_inference_steps` → `steps`, `true_cfg_scale`, `negative_prompt`, `seed`) on the checkpoint
the `compat_qwen_edit_model` setting names (default: the store's first qwen_image_edit(_plus)),
or the one `/model-config` chose since. The seed ran Nunchaku, where `rank` (32 or 128) picks the
SVD branch of its 4-bit weights: here it becomes our `backend: "auto"` with that `rank`, so it
keeps that meaning wherever Nunchaku can run. Where it cannot (no supported GPU, no package, no
such weights; our planner says why, naming `rank`), the edit runs on diffusers at full precision
(closer to bf16 than either rank) and `model_info.rank` answers ``null`` with `backend`
"diffusers" and the reason, rather than refusing every request an unchanged client sends.
"""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assetbox.compat.service_jobs import failure, json_body, one_model, run_job
from assetbox.errors import AssetboxError, InvalidInput
from assetbox.kinds.diffusion import defaults_for
from assetbox.models.store import ModelManifest, model_store
from assetbox.server.errors import status_for
from assetbox.server.schemas import EditCreate
from assetbox.server.submit import image_bytes

router = APIRouter(tags=["Qwen edit service (compat)"])

SETTING = "compat_qwen_edit_model"
DEFAULT_RANK = 128
FAMILIES = ("qwen_image_edit", "qwen_image_edit_plus")
# Our field names in refusals, as the seed's request calls them.
_FIELDS = {
    "images.0": "image",
    "instruction": "prompt",
    "steps": "num_inference_steps",
    "guidance": "true_cfg_scale",
    "backend": "rank",
}


class EditImageRequest(BaseModel):
    image: str = Field(description="the image to edit: base64 (a data: URL is fine) or a URL")
    prompt: str = Field(min_length=1, description="the edit instruction")
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(default=None, ge=1, le=500)
    true_cfg_scale: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0)
    rank: Literal[32, 128] | None = None
    # The seed's worker also took these; without them the output keeps the input's aspect ratio
    # at the model's 1 MP.
    width: int | None = None
    height: int | None = None


class ModelConfigRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_version: str | None = Field(
        default=None, description="a qwen_image_edit(_plus) checkpoint in the store"
    )
    rank: Literal[32, 128] | None = None
    num_inference_steps: int | None = Field(default=None, ge=1, le=500)


class Defaults(BaseModel):
    """What `/model-config` set; one per app (the seed's service held one model)."""

    model: str | None = None
    rank: Literal[32, 128] | None = None
    steps: int | None = None


def _defaults(request: Request) -> Defaults:
    state = request.app.state
    if not hasattr(state, "qwen_edit_defaults"):
        state.qwen_edit_defaults = Defaults()
    return state.qwen_edit_defaults


def _error(
    request: Request, status: int, error: str, detail: str, field: str | None = None
) -> JSONResponse:
    body = {
        "error": error,
        "detail": detail,
        "timestamp": datetime.now(UTC).isoformat(),
        "request_id": getattr(request.state, "request_id", None) or uuid.uuid4().hex,
    }
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _invalid(request: Request, exc: ValidationError) -> JSONResponse:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or "body"
    return _error(request, 422, "validation_error", f"`{field}`: {first['msg']}", field)


def _refused(request: Request, exc: AssetboxError) -> JSONResponse:
    """Our refusal in the seed's shape, our field named as its request calls it."""
    ours = getattr(exc, "field", None)
    field = _FIELDS.get(ours, ours) if ours else None
    detail = exc.message.replace(f"`{ours}`", f"`{field}`") if ours else exc.message
    if field == SETTING:
        return _error(request, 503, "model_not_available", detail, field)
    return _error(request, status_for(exc), exc.code, detail, field)


def _model(request: Request) -> ModelManifest:
    settings = request.app.state.settings
    chosen = _defaults(request).model or settings.compat_qwen_edit_model
    return one_model(settings, chosen, FAMILIES, SETTING)


def _edit(body: EditImageRequest, model: str, steps: int | None, rank: int | None) -> EditCreate:
    return EditCreate(
        model=model,
        instruction=body.prompt,
        images=["-"],
        negative_prompt=body.negative_prompt,
        steps=steps,
        true_cfg_scale=body.true_cfg_scale,
        seed=body.seed,
        width=body.width,
        height=body.height,
        backend="auto",
        rank=rank,
    )


@router.post("/edit-image", openapi_extra=json_body(EditImageRequest))
async def edit_image(request: Request) -> JSONResponse:
    """Edit an image by instruction; the edited image comes back as base64 PNG."""
    started = time.perf_counter()
    try:
        body = EditImageRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(request, exc)
    defaults = _defaults(request)
    # The seed always ran Nunchaku, at rank 128 unless told (our default rank too).
    rank: int | None = body.rank or defaults.rank or DEFAULT_RANK
    steps = body.num_inference_steps or defaults.steps
    backend, why = "nunchaku", None
    try:
        model = _model(request)
        images = {"images.0": await image_bytes(request, body.image, "images.0")}
        try:
            job = await run_job(request, "edit", _edit(body, model.id, steps, rank), images)
        except InvalidInput as exc:
            if exc.field != "rank":
                raise
            # Nunchaku cannot run here (the reason is in the message): full precision instead.
            backend, why, rank = "diffusers", exc.message, None
            job = await run_job(request, "edit", _edit(body, model.id, steps, None), images)
    except ValidationError as exc:
        return _refused(request, InvalidInput.from_validation(exc, default_field="body"))
    except AssetboxError as exc:
        return _refused(request, exc)
    if (reason := failure(job)) is not None:
        return _error(request, 500, "edit_failed", reason)
    data = request.app.state.engine.output_path(job, 0).read_bytes()
    info: dict[str, Any] = {
        "steps": steps or defaults_for(model)["steps"],
        "rank": rank,
        "model_version": model.id,
        "backend": backend,
    }
    if why is not None:
        info["rank_unavailable"] = why
    return JSONResponse(
        {
            "success": True,
            "edited_image": base64.b64encode(data).decode(),
            "processing_time": round(time.perf_counter() - started, 3),
            "model_info": info,
        }
    )


def _info(request: Request) -> dict[str, Any]:
    model = _model(request)
    defaults = _defaults(request)
    engine = request.app.state.engine
    return {
        "model_version": model.id,
        "family": str(model.family),
        "steps": defaults.steps or defaults_for(model)["steps"],
        "rank": defaults.rank or DEFAULT_RANK,
        "loaded": any(k.startswith(f"{model.id}:") for k in engine.executor.loaded_models()),
        "available_models": [
            m.id
            for m in model_store(request.app.state.settings).list("checkpoint")
            if m.family in FAMILIES
        ],
    }


@router.get("/model-info")
def model_info(request: Request) -> JSONResponse:
    """The checkpoint `/edit-image` runs, its default steps and rank, and the others."""
    try:
        return JSONResponse(_info(request))
    except AssetboxError as exc:
        return _refused(request, exc)


@router.post("/model-config", openapi_extra=json_body(ModelConfigRequest))
async def model_config(request: Request) -> JSONResponse:
    """Choose the checkpoint (`model_version`), the default `rank` and `num_inference_steps`
    of later edits; answers as `/model-info`."""
    try:
        body = ModelConfigRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(request, exc)
    defaults = _defaults(request)
    if body.model_version is not None:
        store = model_store(request.app.state.settings)
        try:
            family = store.get(body.model_version, "checkpoint", field="model_version").family
        except AssetboxError as exc:
            return _error(request, 422, "validation_error", exc.message, "model_version")
        if family not in FAMILIES:
            return _error(
                request,
                422,
                "validation_error",
                f"`model_version` {body.model_version!r} is a {family} checkpoint; it must be "
                + " or ".join(FAMILIES),
                "model_version",
            )
    fields = body.model_dump(exclude_unset=True)
    if "model_version" in fields:
        defaults.model = body.model_version
    if "rank" in fields:
        defaults.rank = body.rank
    if "num_inference_steps" in fields:
        defaults.steps = body.num_inference_steps
    return model_info(request)
