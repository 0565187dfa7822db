"""``/v1/models``: the model store."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from assetbox.engine.upscale import model_store
from assetbox.models.store import ModelKind, ModelManifest
from assetbox.server.deps import SettingsDep

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelsPublic(BaseModel):
    data: list[ModelManifest]


@router.get("", response_model=ModelsPublic)
def list_models(
    settings: SettingsDep, kind: ModelKind | None = None, architecture: str | None = None
) -> ModelsPublic:
    models = model_store(settings).list(kind)
    if architecture is not None:
        models = [m for m in models if m.architecture == architecture]
    return ModelsPublic(data=models)


@router.delete("/{model_id}", response_model=ModelManifest)
def delete_model(model_id: str, settings: SettingsDep) -> ModelManifest:
    return model_store(settings).remove(model_id)
