"""The model store: one folder per model under ``<data_dir>/models/<kind>s/<id>/``.

Each folder holds ``manifest.json`` and the weights. Upscalers: ``model.safetensors`` (models that
came in ncnn format also keep ``model.param``/``model.bin`` for the ncnn engine). Checkpoints and
ControlNets: a diffusers folder under ``diffusers/``, or a single ``model.safetensors`` with the
diffusers config it loads with under ``config/``. LoRAs: ``model.safetensors``. Captioners
(vision-language models such as Qwen2.5-VL): a transformers folder under ``transformers/``:
``config.json``, ``model.safetensors`` (or shards with ``model.safetensors.index.json``), the
tokenizer files, the image processor config, the chat template and ``generation_config.json``
(see `assetbox.models.captioner_import`). IP-Adapters: ``model.safetensors`` and the CLIP
vision encoder it was trained with under ``image_encoder/`` (see
`assetbox.models.ip_adapter_import`). A model is added by
building its folder under ``models/.staging/`` and renaming it into place, so a crash or a refused
import never leaves a half-written model in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field

from assetbox.config import Settings, get_settings
from assetbox.errors import Conflict, InvalidInput, NotFound

ModelKind = Literal["upscaler", "checkpoint", "lora", "controlnet", "captioner", "ip_adapter"]
KINDS: tuple[ModelKind, ...] = (
    "upscaler",
    "checkpoint",
    "lora",
    "controlnet",
    "captioner",
    "ip_adapter",
)
# Diffusion families only (checkpoints, LoRAs, ControlNets): what generate and edit accept.
DiffusionFamily = Literal[
    "sd15",
    "sdxl",
    "flux1",
    "flux2_klein",
    "flux2",
    "qwen_image",
    "qwen_image_edit",
    "qwen_image_edit_plus",
    "z_image",
]
Family = Literal[DiffusionFamily, "qwen2_5_vl", "qwen3_vl"]
FAMILIES: tuple[DiffusionFamily, ...] = get_args(DiffusionFamily)
# Captioner families: the transformers `model_type` of their config.json.
CAPTIONER_FAMILIES: tuple[Family, ...] = ("qwen2_5_vl", "qwen3_vl")
Layout = Literal["diffusers", "single_file", "transformers"]
Engine = Literal["torch", "ncnn"]
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
WEIGHTS_FILE = "model.safetensors"
NCNN_PARAM_FILE = "model.param"
NCNN_BIN_FILE = "model.bin"


class ModelManifest(BaseModel):
    """What the store knows of one model (``manifest.json``)."""

    id: str
    kind: ModelKind
    architecture: str = Field(
        description="upscalers: spandrel's architecture id (ESRGAN, Compact); diffusion models: "
        "the diffusers class (StableDiffusionXLPipeline, QwenImageEditPlusPipeline, "
        "ControlNetModel, ...) or 'lora'; captioners: the transformers class "
        "(Qwen2_5_VLForConditionalGeneration, ...)"
    )
    family: Family | None = Field(
        default=None,
        description="diffusion models: sd15, sdxl, flux1, flux2_klein, flux2, qwen_image, "
        "qwen_image_edit, qwen_image_edit_plus, z_image; captioners: qwen2_5_vl, qwen3_vl",
    )
    layout: Layout | None = Field(
        default=None,
        description="checkpoints and ControlNets: a diffusers folder or one file; captioners: a "
        "transformers folder",
    )
    distilled: bool | None = Field(
        default=None,
        description="flux2_klein checkpoints: guidance- and step-distilled (model_index.json's "
        "is_distilled): no CFG, no negative prompt, 4 steps",
    )
    speed_steps: int | None = Field(
        default=None,
        description="LoRAs: a speed (step-distilled) LoRA such as Qwen-Image-Lightning: the "
        "steps it is made for (from its metadata 'assetbox.speed_steps' or its file name, e.g. "
        "'...-Lightning-8steps-...'); a request using it defaults to these steps, no CFG, and "
        "the scheduler settings it was distilled with",
    )
    scale: int = Field(default=1, description="upscalers: native output scale")
    network_scale: int = Field(default=1, description="upscalers: scale before any post-resize")
    post_resize: float | None = Field(
        default=None, description="bicubic factor applied after the network (ncnn x2/x3 files)"
    )
    context: int = Field(default=0, description="input pixels of context a tile needs each side")
    engines: list[Engine] = Field(default_factory=lambda: ["torch"])
    source: str
    sha256: str = Field(description="of the weights (all weight files, in name order)")
    size: int = Field(description="bytes on disk, all files")
    added: datetime


def validate_model_id(model_id: str, *, field: str = "id") -> str:
    """`model_id` if it is a safe store id (lower-case letters, digits, ``.``, ``_``, ``-``).

    Raises:
        InvalidInput: anything else, including path separators and ``..``.
    """
    if not _ID.match(model_id) or ".." in model_id:
        raise InvalidInput(
            f"`{field}` must be 1-64 lower-case letters, digits, '.', '_' or '-' (starting with "
            f"a letter or digit) but is {model_id!r}",
            field=field,
        )
    return model_id


def sha256_files(paths: list[Path]) -> str:
    """The sha256 of the files' bytes one after another, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_files([path])


def default_id(path: Path) -> str:
    """A store id made from a file or folder name: ``RealESRGAN_x4plus.pth`` →
    ``realesrgan_x4plus``, ``My SDXL/`` → ``my-sdxl``."""
    name = path.name if path.is_dir() else path.stem
    return validate_model_id(name.lower().replace(" ", "-"), field="id")


class ModelStore:
    """Models on disk under ``root`` (normally ``<data_dir>/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _kind_dir(self, kind: ModelKind) -> Path:
        return self.root / f"{kind}s"

    def path(self, model_id: str, kind: ModelKind = "upscaler") -> Path:
        """The folder of a model (which may not exist)."""
        return self._kind_dir(kind) / validate_model_id(model_id)

    def list(self, kind: ModelKind | None = None) -> list[ModelManifest]:
        """Manifests of every model of `kind` (all kinds when None), sorted by id."""
        manifests = []
        for k in KINDS if kind is None else (kind,):
            folder = self._kind_dir(k)
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                manifest_path = entry / "manifest.json"
                if manifest_path.is_file():
                    manifests.append(ModelManifest.model_validate_json(manifest_path.read_text()))
        return manifests

    def exists(self, model_id: str, kind: ModelKind = "upscaler") -> bool:
        return (self.path(model_id, kind) / "manifest.json").is_file()

    def get(
        self, model_id: str, kind: ModelKind = "upscaler", *, field: str = "model"
    ) -> ModelManifest:
        """The manifest of a model.

        Raises:
            InvalidInput: a malformed id.
            NotFound: no such model in the store (naming `field`).
        """
        manifest_path = self.path(model_id, kind) / "manifest.json"
        if not manifest_path.is_file():
            known = ", ".join(m.id for m in self.list(kind)) or "none"
            raise NotFound(f"no {kind} {model_id!r} in the store (available: {known})", field=field)
        return ModelManifest.model_validate_json(manifest_path.read_text())

    def find(self, model_id: str) -> ModelManifest:
        """A model of any kind by id (ids may repeat across kinds: the first kind wins).

        Raises:
            NotFound: no model of any kind has this id.
        """
        for kind in KINDS:
            if self.exists(model_id, kind):
                return self.get(model_id, kind)
        raise NotFound(f"no model {model_id!r} in the store", field="model_id")

    def remove(self, model_id: str, kind: ModelKind | None = None) -> ModelManifest:
        """Delete a model's folder (of `kind`, or of whichever kind has the id).

        Raises:
            NotFound: no such model.
        """
        manifest = self.get(model_id, kind) if kind else self.find(model_id)
        folder = self.path(model_id, manifest.kind)
        # Rename first so that a reader never sees a half-deleted folder.
        trash = self.root / ".staging" / f"rm-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return manifest

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder to build a model in; removed afterwards unless `commit` moved it."""
        folder = self.root / ".staging" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staged: Path, manifest: ModelManifest) -> ModelManifest:
        """Write the manifest into `staged` and move the folder into place atomically.

        Raises:
            Conflict: a model with that id already exists.
        """
        for path in staged.rglob("*"):
            if path.is_file():
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
        manifest_path = staged / "manifest.json"
        manifest_path.write_text(manifest.model_dump_json(indent=2) + "\n")
        target = self.path(manifest.id, manifest.kind)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise Conflict(f"a {manifest.kind} with id {manifest.id!r} is already in the store")
        try:
            os.rename(staged, target)
        except OSError as exc:  # another process committed the same id first
            raise Conflict(
                f"a {manifest.kind} with id {manifest.id!r} is already in the store"
            ) from exc
        return manifest

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock across processes, for check-then-add sequences."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def model_store(settings: Settings | None = None) -> ModelStore:
    """The store under the configured data directory."""
    return ModelStore((settings or get_settings()).data_dir / "models")
