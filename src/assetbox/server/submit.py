"""The flow every job route shares: read images, store them, submit, wait as asked, answer."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from assetbox.engine.blobs import with_images
from assetbox.engine.engine import Engine
from assetbox.engine.inputs import fetch_url
from assetbox.errors import InvalidInput
from assetbox.imaging import decode_base64, probe_image
from assetbox.server.routers.jobs import present
from assetbox.server.schemas import JobCreate, JobPublic

_Body = TypeVar("_Body", bound=BaseModel)
MAX_WAIT_S = 300


def job_route(schema: type[BaseModel], **extra_content: Any) -> dict[str, Any]:
    """The route options of a job-creating POST: 202 with the job, 200 when it finished within
    ``Prefer: wait=N``, and the request body's schema in the OpenAPI (the body is read by hand,
    so that base64, URLs and multipart all reach one validation)."""
    return {
        "status_code": 202,
        "response_model": JobPublic,
        "response_model_exclude_none": True,
        "responses": {200: {"model": JobPublic, "description": "finished within `Prefer: wait=N`"}},
        "openapi_extra": {
            "requestBody": {
                "content": {
                    "application/json": {"schema": schema.model_json_schema()},
                    **extra_content,
                },
                "required": True,
            }
        },
    }


def prefer_wait(prefer: str | None) -> float:
    match = re.search(r"wait\s*=\s*(\d+(?:\.\d+)?)", prefer or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


async def image_bytes(request: Request, value: str, field: str) -> bytes:
    """An image field's bytes: fetched when it is an http(s) URL, else decoded base64."""
    if "://" in value[:16]:
        settings = request.app.state.settings
        return await run_in_threadpool(fetch_url, value, settings, field=field)
    return decode_base64(value, field=field)


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
        return engine.submit(
            kind,
            with_images(request, blobs),
            idempotency_key=idempotency_key,
            delivery=body.delivery(),
        )

    job = await run_in_threadpool(submit)
    wait_s = prefer_wait(prefer)
    if wait_s:
        job = await run_in_threadpool(engine.wait, job.id, wait_s)
    public = present(job, engine, b64=body.response_format == "b64")
    status = 200 if job.status.is_terminal() else 202
    return JSONResponse(public.model_dump(mode="json", exclude_none=True), status_code=status)
