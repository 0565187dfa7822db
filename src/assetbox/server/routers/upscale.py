"""``POST /v1/upscale``: an image as base64 JSON, an http(s) URL or a multipart file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from assetbox.errors import InvalidInput
from assetbox.server.deps import EngineDep
from assetbox.server.schemas import UpscaleCreate
from assetbox.server.submit import image_bytes, job_route, parse_json, submit_job

router = APIRouter(prefix="/v1", tags=["upscale"])


async def _read_request(request: Request) -> tuple[UpscaleCreate, bytes]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("`image` must be a file part of the form", field="image")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        try:
            body = UpscaleCreate(image="-", **fields)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc, default_field="body") from exc
        return body, data
    body = parse_json(UpscaleCreate, await request.body())
    return body, await image_bytes(request, body.image, "image")


_MULTIPART = {
    "schema": {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "binary"}},
        "required": ["image"],
    }
}


@router.post("/upscale", **job_route(UpscaleCreate, **{"multipart/form-data": _MULTIPART}))
async def create_upscale(
    request: Request,
    engine: EngineDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Queue an upscale; with ``Prefer: wait=N`` wait up to N seconds for it to finish."""
    body, data = await _read_request(request)
    return await submit_job(
        engine, "upscale", body, body.options(), {"image": data}, prefer, idempotency_key
    )
