"""``POST /v1/upscale``: an image as base64 JSON, an http(s) URL or a multipart file; and
``POST /v1/upscale/plan``: the tile grid of an upscale, at once, without a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from assetbox.kinds.tiles import TileGrid, plan_json, tile_plan
from assetbox.server.deps import EngineDep
from assetbox.server.schemas import UpscaleCreate, UpscalePlanCreate, UpscalePlanPublic
from assetbox.server.submit import (
    image_inputs,
    is_multipart,
    job_route,
    multipart_schema,
    parse_json,
    read_form,
    submit_job,
)

router = APIRouter(prefix="/v1", tags=["upscale"])

FILES = {"image": ("image",), "ip_adapter.image": ("ip_adapter.image", "ip_adapter_image")}


@router.post(
    "/upscale",
    **job_route(UpscaleCreate, **{"multipart/form-data": multipart_schema(UpscaleCreate, FILES)}),
)
async def create_upscale(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue an upscale; with ``Prefer: wait=N`` wait up to N seconds for it to finish."""
    if is_multipart(request):
        body, uploads = await read_form(request, UpscaleCreate, FILES)
    else:
        body, uploads = parse_json(UpscaleCreate, await request.body()), {}
    images = await image_inputs(request, body, uploads, tuple(FILES))
    return await submit_job(
        engine, "upscale", body, body.options(), images, prefer, idempotency_key
    )


@router.post("/upscale/plan", response_model=UpscalePlanPublic)
def upscale_plan(body: UpscalePlanCreate) -> dict:
    """The output's size (`width` x `height` scaled by `scale`, rounded) and its grid of
    equal tiles: ids ``row_col`` and boxes ``[x, y, w, h]`` in output pixels, the same plan the
    caption job's tile mode and the tiled upscale use."""
    grid = TileGrid(scale=body.scale, tile=body.tile, overlap=body.overlap)
    return plan_json(tile_plan(body.width, body.height, grid, field=""))
