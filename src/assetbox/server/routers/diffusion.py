"""``POST /v1/generate`` (JSON) and ``POST /v1/edit`` (JSON or multipart): diffusion jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from assetbox.server.deps import EngineDep
from assetbox.server.schemas import EditCreate, GenerateCreate
from assetbox.server.submit import (
    image_bytes,
    image_inputs,
    is_multipart,
    job_route,
    multipart_schema,
    parse_json,
    read_form,
    submit_job,
)

router = APIRouter(prefix="/v1", tags=["diffusion"])


async def list_inputs(
    request: Request, body: GenerateCreate | EditCreate, uploads: dict[str, bytes]
) -> dict[str, bytes]:
    """The images of the lists: instruction edit's ``images.N`` and FLUX.2's
    ``references.N.image``, each an uploaded file's bytes or its base64/URL resolved."""
    fields = [(f"references.{n}.image", r.image) for n, r in enumerate(body.references)]
    fields += [(f"images.{n}", value) for n, value in enumerate(getattr(body, "images", []))]
    images = {}
    for field, value in fields:
        images[field] = (
            uploads[field] if field in uploads else await image_bytes(request, value, field)
        )
    return images


EDIT_IMAGES = ("image", "controlnet.image", "ip_adapter.image")
EDIT_FILES = {
    "image": ("image",),
    "controlnet.image": ("controlnet.image", "controlnet_image"),
    "ip_adapter.image": ("ip_adapter.image", "ip_adapter_image"),
    "images": ("images",),
    "references.N.image": ("references.N.image",),
}
GENERATE_IMAGES = ("ip_adapter.image",)


@router.post("/generate", **job_route(GenerateCreate))
async def create_generate(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue a text-to-image job (`prompts` x `num_images_per_prompt` images, seeds
    ``seed, seed+1, ...``); ``Prefer: wait=N`` waits up to N seconds. An IP-Adapter's image
    (`ip_adapter.image`) and FLUX.2's `references` (up to 16 `{image, weight}`, shared by all
    prompts) are base64 or http(s) URLs."""
    body = parse_json(GenerateCreate, await request.body())
    images = await image_inputs(request, body, {}, GENERATE_IMAGES)
    images |= await list_inputs(request, body, {})
    return await submit_job(
        engine, "generate", body, body.options(), images, prefer, idempotency_key
    )


@router.post(
    "/edit",
    **job_route(EditCreate, **{"multipart/form-data": multipart_schema(EditCreate, EDIT_FILES)}),
)
async def create_edit(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue an edit job: img2img (`image`, `strength`; optionally a ControlNet whose image
    defaults to the input image; an IP-Adapter, whose image defaults to the input image too),
    or instruction edit (`instruction` and `images`, base64 or http(s) URLs: 1 for
    Qwen-Image-Edit, up to 3 for -Plus, up to 16 references for FLUX.2). Without
    `width`/`height` img2img runs at the input image's size, instruction edit at the last
    image's aspect ratio and `condition_pixels` (1 MP). As multipart, `image`,
    `controlnet.image` (or `controlnet_image`) and `ip_adapter.image` (or `ip_adapter_image`)
    are file parts, `images` repeated file parts (one image each, in order), a reference's image
    a file part `references.N.image`, `prompts`, `loras`, `references`, `controlnet` and
    `ip_adapter` JSON text (`prompts` also repeated parts)."""
    if is_multipart(request):
        body, uploads = await read_form(request, EditCreate, EDIT_FILES)
    else:
        body, uploads = parse_json(EditCreate, await request.body()), {}
    images = await image_inputs(request, body, uploads, EDIT_IMAGES)
    images |= await list_inputs(request, body, uploads)
    # The blobs take the images' places (options carry the base64, URL or placeholder till then).
    return await submit_job(engine, "edit", body, body.options(), images, prefer, idempotency_key)
