"""``POST /v1/upscale``: an image as base64 JSON or a multipart file → an upscale job."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from assetbox.engine.engine import Engine
from assetbox.engine.inputs import fetch_url
from assetbox.errors import InvalidInput
from assetbox.imaging import decode_base64, probe_image
from assetbox.server.deps import EngineDep
from assetbox.server.routers.jobs import present
from assetbox.server.schemas import JobCreate, JobPublic, UpscaleCreate

_Body = TypeVar("_Body", bound=BaseModel)
router = APIRouter(prefix="/v1", tags=["upscale"])
MAX_WAIT_S = 300


def _prefer_wait(prefer: str | None) -> float:
    match = re.search(r"wait\s*=\s*(\d+(?:\.\d+)?)", prefer or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


async def image_bytes(request: Request, value: str, field: str) -> bytes:
    """An image field's bytes: fetched when it is an http(s) URL, else decoded base64."""
    if "://" in value[:16]:
        settings = request.app.state.settings
        return await run_in_threadpool(fetch_url, value, settings, field=field)
    return decode_base64(value, field=field)


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


def parse_json(model: type[_Body], raw: bytes) -> _Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc, default_field="body") from exc


async def submit_job(
    engine: Engine,
    kind: str,
    body: JobCreate,
    request: dict,
    images: dict[str, bytes],
    prefer: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    """Store the images as blobs (checked first: bombs and bad files are refused before
    anything is queued), submit, wait as `Prefer: wait=N` asks, answer 200 or 202."""
    for field, data in images.items():
        probe_image(data, field=field)

    def submit():
        blobs = {field: engine.put_blob(data) for field, data in images.items()}
        full = dict(request)
        for field, blob in blobs.items():
            if field == "controlnet.image":
                full["controlnet"] = {**full["controlnet"], "image": blob}
            else:
                full[field] = blob
        return engine.submit(kind, full, idempotency_key=idempotency_key, delivery=body.delivery())

    job = await run_in_threadpool(submit)
    wait_s = _prefer_wait(prefer)
    if wait_s:
        job = await run_in_threadpool(engine.wait, job.id, wait_s)
    public = present(job, engine, b64=body.response_format == "b64")
    status = 200 if job.status.is_terminal() else 202
    return JSONResponse(public.model_dump(mode="json", exclude_none=True), status_code=status)


@router.post(
    "/upscale",
    status_code=202,
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses={200: {"model": JobPublic, "description": "finished within `Prefer: wait=N`"}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": UpscaleCreate.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": {"type": "string", "format": "binary"}},
                        "required": ["image"],
                    }
                },
            },
            "required": True,
        }
    },
)
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
