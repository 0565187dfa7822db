"""``/v1/models``: the model store."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from assetbox.errors import InvalidInput
from assetbox.models.store import Family, ModelKind, ModelManifest, model_store
from assetbox.models.uploads import UploadCreate, Uploads, UploadState
from assetbox.server.deps import EngineDep, SettingsDep

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelsPublic(BaseModel):
    data: list[ModelManifest]


@router.get("", response_model=ModelsPublic)
def list_models(
    settings: SettingsDep,
    kind: ModelKind | None = None,
    family: Family | None = None,
    architecture: str | None = None,
) -> ModelsPublic:
    """Models in the store, filtered by kind, family (sd15, sdxl, flux1) and architecture."""
    models = model_store(settings).list(kind)
    if family is not None:
        models = [m for m in models if m.family == family]
    if architecture is not None:
        models = [m for m in models if m.architecture == architecture]
    return ModelsPublic(data=models)


def _uploads(settings) -> Uploads:
    return Uploads(settings.data_dir / "uploads", model_store(settings))


@router.post("/uploads", response_model=UploadState, status_code=201)
def create_upload(body: UploadCreate, settings: SettingsDep) -> UploadState:
    """Announce a model file (name, kind, size, optionally sha256); send it with PUT in chunks.
    Without a sha256 the server hashes the file at completion and records it in `source`."""
    return _uploads(settings).create(body)


@router.get("/uploads/{upload_id}", response_model=UploadState)
def get_upload(upload_id: str, settings: SettingsDep) -> UploadState:
    """Where an upload stands: after a broken connection, go on from `next_offset`."""
    return _uploads(settings).get(upload_id)


@router.put("/uploads/{upload_id}", response_model=UploadState)
async def put_chunk(
    upload_id: str,
    request: Request,
    settings: SettingsDep,
    content_range: Annotated[str | None, Header()] = None,
) -> UploadState:
    """A chunk: ``Content-Range: bytes START-END/TOTAL`` (or no header for one whole body)."""
    data = await request.body()
    start, total = 0, None
    if content_range is not None:
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", content_range.strip())
        if not match or int(match.group(2)) - int(match.group(1)) + 1 != len(data):
            raise InvalidInput(
                f"`Content-Range` must be 'bytes START-END/TOTAL' matching the body's "
                f"{len(data)} bytes, not {content_range!r}",
                field="Content-Range",
            )
        start, total = int(match.group(1)), int(match.group(3))
    return await run_in_threadpool(_uploads(settings).write, upload_id, start, data, total)


@router.post("/uploads/{upload_id}/complete", response_model=ModelManifest, status_code=201)
def complete_upload(upload_id: str, settings: SettingsDep) -> ModelManifest:
    """Check size and the announced sha256 (if any), detect the model and move it into the
    store."""
    return _uploads(settings).complete(upload_id)


@router.delete("/{model_id}", response_model=ModelManifest)
def delete_model(model_id: str, settings: SettingsDep, engine: EngineDep) -> ModelManifest:
    """Delete a model from the store, and from the workers' memory once idle."""
    manifest = model_store(settings).remove(model_id)
    engine.executor.forget(model_id)
    return manifest
