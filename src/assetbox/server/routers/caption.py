"""``POST /v1/caption``: captions of whole images, or of the tiles of an upscale's plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from assetbox.server.deps import EngineDep
from assetbox.server.schemas import CaptionCreate
from assetbox.server.submit import image_bytes, job_route, parse_json, submit_job

router = APIRouter(prefix="/v1", tags=["caption"])


@router.post("/caption", **job_route(CaptionCreate))
async def create_caption(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue a caption job. `images` (base64 or http(s) URLs, up to 64) give one caption each,
    in order: `result.captions[i]` = `{index, caption, tokens}`. Tile mode, `image` with
    `tiles: {scale, tile, overlap, pre_upscale}`, gives one caption per tile of the upscaled
    image's plan (the one `POST /v1/upscale/plan` shows): `{id, box, caption, tokens}`. The
    captions are on the job itself (`GET /v1/jobs/{id}`, `result`) and in its output
    `captions.json`; ``Prefer: wait=N`` waits up to N seconds."""
    body = parse_json(CaptionCreate, await request.body())
    images = {}
    for n, value in enumerate(body.images):
        images[f"images.{n}"] = await image_bytes(request, value, f"images.{n}")
    if body.image is not None:
        images["image"] = await image_bytes(request, body.image, "image")
    options = body.options()
    return await submit_job(engine, "caption", body, options, images, prefer, idempotency_key)
