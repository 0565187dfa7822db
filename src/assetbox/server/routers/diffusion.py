"""``POST /v1/generate`` and ``POST /v1/edit``: diffusion jobs (JSON bodies)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from assetbox.server.deps import EngineDep
from assetbox.server.schemas import EditCreate, GenerateCreate
from assetbox.server.submit import image_bytes, job_route, parse_json, submit_job

router = APIRouter(prefix="/v1", tags=["diffusion"])


@router.post("/generate", **job_route(GenerateCreate))
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


@router.post("/edit", **job_route(EditCreate))
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
    # The blobs take the images' places (options carry the base64 or URL until then).
    return await submit_job(engine, "edit", body, body.options(), images, prefer, idempotency_key)
