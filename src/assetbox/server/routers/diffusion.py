"""``POST /v1/generate`` and ``POST /v1/edit``: diffusion jobs (JSON bodies)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from assetbox.server.deps import EngineDep
from assetbox.server.routers.upscale import image_bytes, parse_json, submit_job
from assetbox.server.schemas import EditCreate, GenerateCreate, JobPublic

router = APIRouter(prefix="/v1", tags=["diffusion"])
_RESPONSES = {200: {"model": JobPublic, "description": "finished within `Prefer: wait=N`"}}


@router.post(
    "/generate",
    status_code=202,
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses=_RESPONSES,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": GenerateCreate.model_json_schema()}},
            "required": True,
        }
    },
)
async def create_generate(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue a text-to-image job (`prompts` x `num_images_per_prompt` images, seeds
    ``seed, seed+1, ...``); ``Prefer: wait=N`` waits up to N seconds."""
    body = parse_json(GenerateCreate, await request.body())
    return await submit_job(engine, "generate", body, body.options(), {}, prefer, idempotency_key)


@router.post(
    "/edit",
    status_code=202,
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses=_RESPONSES,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": EditCreate.model_json_schema()}},
            "required": True,
        }
    },
)
async def create_edit(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue an img2img job (with `strength`; optionally a ControlNet whose image defaults to
    the input image)."""
    body = parse_json(EditCreate, await request.body())
    images = {"image": await image_bytes(request, body.image, "image")}
    if body.controlnet is not None and body.controlnet.image is not None:
        images["controlnet.image"] = await image_bytes(
            request, body.controlnet.image, "controlnet.image"
        )
    options = body.options()
    if body.controlnet is not None:
        options["controlnet"] = {
            k: v for k, v in options["controlnet"].items() if k != "image" and v is not None
        }
    return await submit_job(engine, "edit", body, options, images, prefer, idempotency_key)


__all__ = ["router"]
