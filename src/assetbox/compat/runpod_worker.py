"""The toolbox's RunPod serverless worker: one handler, ``{"input": {"action": ...}}``.

Actions and what they become here:

- ``caption``: one caption job (our `caption` kind) on the tiles' images; ``captions`` by
  ``tile_id``.
- ``upscale``: one img2img `edit` job per tile (tiles differ in image, size and prompt); the
  tiles come back as they went, each redrawn, with its real seed (``seed_used``). No blending:
  the toolbox's client blends.
- ``list_models``, ``upload_model``, ``delete_model``: the model store on the network volume
  (``/runpod-volume`` on RunPod). An upload's chunks may land on different workers; each is
  stored on the volume under its index and whichever worker holds the last missing chunk joins
  them and imports the file.
- ``health``: the GPU, its memory, the model last used and the volume's free space.

Everything runs on our in-process engine (`Engine` with the registered kinds); this module only
translates shapes. Invalid input gets the worker's own error shape, ``{"error": "`field`: ..."}``
(RunPod marks the job failed), naming the toolbox's field, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assetbox.atomic_files import write_atomically
from assetbox.config import Settings, get_settings
from assetbox.engine.blobs import with_images
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import Job, JobStatus
from assetbox.errors import AssetboxError, InvalidInput, NotFound
from assetbox.imaging import decode_base64, probe_image
from assetbox.kinds import PLANNERS
from assetbox.kinds.caption import MAX_IMAGES
from assetbox.models.importer import import_model
from assetbox.models.store import KINDS, ModelKind, ModelManifest, ModelStore, validate_model_id
from assetbox.models.uploads import UPLOAD_SUFFIXES

# RunPod mounts a network volume here; the store lives on it unless ASSETBOX_DATA_DIR says else.
RUNPOD_VOLUME = Path("/runpod-volume")
GIB = 1024**3


class _Shape(BaseModel):
    # Foreign clients send fields we do not read (e.g. their own bookkeeping): ignored, as the
    # toolbox's own worker does.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class CaptionTile(_Shape):
    tile_id: str
    image_b64: str = Field(min_length=1)


class CaptionParams(_Shape):
    system_prompt: str | None = None
    max_tokens: int | None = None


class CaptionInput(_Shape):
    tiles: list[CaptionTile] = Field(min_length=1)
    caption_params: CaptionParams = Field(default_factory=CaptionParams)


class LoraConfig(_Shape):
    # The toolbox names a LoRA by its path on the volume (`list_models`' `path`) or its name.
    path: str | None = None
    name: str | None = None
    weight: float = 1.0


class ControlNetConfig(_Shape):
    enabled: bool = False
    model: str | None = None
    conditioning_scale: float = 1.0


class ModelConfig(_Shape):
    base_model: str = Field(min_length=1)
    model_type: str | None = None
    loras: list[LoraConfig] = Field(default_factory=list)
    controlnet: ControlNetConfig | None = None


class GenerationParams(_Shape):
    steps: int | None = None
    cfg_scale: float | None = None
    denoising_strength: float | None = None
    sampler: str | None = None
    seed: int | None = None


class UpscaleTile(_Shape):
    tile_id: str
    image_b64: str = Field(min_length=1)
    prompt_override: str | None = None


class UpscaleInput(_Shape):
    # `model_config` is pydantic's own attribute: the field takes another name, read by alias.
    models: ModelConfig = Field(alias="model_config")
    generation_params: GenerationParams = Field(default_factory=GenerationParams)
    global_prompt: str = ""
    negative_prompt: str | None = None
    tiles: list[UpscaleTile] = Field(min_length=1)


class ListModelsInput(_Shape):
    model_type: ModelKind | None = None
    base_model_filter: str | None = None


class UploadModelInput(_Shape):
    filename: str = Field(min_length=1, max_length=128)
    model_type: ModelKind
    base_model: str | None = None
    file_b64: str = Field(min_length=1)
    chunk_index: int = Field(ge=0)
    total_chunks: int = Field(ge=1, le=100_000)


class DeleteModelInput(_Shape):
    path: str = Field(min_length=1)


class HealthInput(_Shape):
    pass


ACTIONS: dict[str, type[_Shape]] = {
    "caption": CaptionInput,
    "upscale": UpscaleInput,
    "list_models": ListModelsInput,
    "upload_model": UploadModelInput,
    "delete_model": DeleteModelInput,
    "health": HealthInput,
}

# Our edit request's fields and the toolbox's names for them (prefixes; the first match wins).
_UPSCALE_FIELDS = (
    ("model", "model_config.base_model"),
    ("loras", "model_config.loras"),
    ("controlnet", "model_config.controlnet"),
    ("steps", "generation_params.steps"),
    ("guidance", "generation_params.cfg_scale"),
    ("strength", "generation_params.denoising_strength"),
    ("sampler", "generation_params.sampler"),
    ("seed", "generation_params.seed"),
    ("negative_prompt", "negative_prompt"),
)


class WorkerError(Exception):
    """A request the worker answers with ``{"error": ...}``; `field` is the toolbox's name."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"`{field}`: {message}" if field else message)


def _refusal(exc: AssetboxError, rename: Callable[[str], str]) -> WorkerError:
    """Our error, with the field it names in the toolbox's words."""
    field = getattr(exc, "field", None)
    if field is None:
        return WorkerError(exc.message)
    foreign = rename(field)
    message = exc.message.replace(f"`{field}`", f"`{foreign}`")
    return WorkerError(message if f"`{foreign}`" in message else f"`{foreign}`: {message}")


class RunpodWorker:
    """The handler's state: settings, the engine (started once per process) and the store."""

    def __init__(self, settings: Settings, report: Callable[[dict, Any], None] | None = None):
        self.settings = settings
        self.engine = Engine(planners=PLANNERS, settings=settings)
        self.store = ModelStore(Path(settings.data_dir) / "models")
        self.uploads = Path(settings.data_dir) / "uploads"
        self.report = report  # progress_update on RunPod, else nothing

    def close(self) -> None:
        self.engine.close()

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        """A RunPod job's output: the action's result, or ``{"error": ...}``."""
        try:
            raw = job.get("input") if isinstance(job, dict) else None
            if not isinstance(raw, dict):
                raise WorkerError("must be an object with an `action`", "input")
            action = raw.get("action")
            if action not in ACTIONS:
                raise WorkerError(
                    f"must be one of {', '.join(ACTIONS)} but is {action!r}", "action"
                )
            try:
                request = ACTIONS[action].model_validate(raw)
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "input"
                raise WorkerError(first["msg"], field) from exc
            return getattr(self, f"_{action}")(request, job)
        except WorkerError as exc:
            return {"error": str(exc)}
        except AssetboxError as exc:  # not tied to a field of the request
            return {"error": exc.message}

    # -- actions ---------------------------------------------------------------------------------

    def _caption(self, request: CaptionInput, job: dict) -> dict:
        captioners = self.store.list("captioner")
        if not captioners:
            raise WorkerError("no captioner in the model store; upload one with upload_model")
        images = [
            self._image(tile.image_b64, f"tiles.{n}.image_b64")[0]
            for n, tile in enumerate(request.tiles)
        ]
        params = request.caption_params.model_dump(exclude_none=True)
        rename = {"system_prompt": "caption_params.system_prompt"}
        rename["max_tokens"] = "caption_params.max_tokens"
        jobs: list[Job] = []
        for first in range(0, len(images), MAX_IMAGES):
            batch = images[first : first + MAX_IMAGES]
            body = {"model": captioners[0].id, **params}
            fields = {f"images.{n}": blob for n, blob in enumerate(batch)}
            body["images"] = [""] * len(batch)
            self._submit(
                jobs,
                "caption",
                body,
                fields,
                lambda f, first=first: _images_to_tiles(rename.get(f, f), first),
            )
        captions = []
        for first, done in zip(
            range(0, len(images), MAX_IMAGES), self._wait(jobs, job), strict=True
        ):
            for item in (done.result or {}).get("captions", []):
                tile = request.tiles[first + item["index"]]
                captions.append({"tile_id": tile.tile_id, "caption": item["caption"]})
        return {"captions": captions}

    def _upscale(self, request: UpscaleInput, job: dict) -> dict:
        config, params = request.models, request.generation_params
        model_id = self._checkpoint_id(config)
        body: dict[str, Any] = {
            "model": model_id,
            "negative_prompt": request.negative_prompt or None,
            "steps": params.steps,
            "guidance": params.cfg_scale,
            "strength": params.denoising_strength,
            "sampler": params.sampler,
            # A negative seed is the toolbox's "random": each tile draws its own, reported back.
            "seed": params.seed if params.seed is not None and params.seed >= 0 else None,
            "loras": [
                {"name": _stem(lora.name or lora.path or ""), "weight": lora.weight}
                for lora in config.loras
            ],
        }
        if config.controlnet is not None and config.controlnet.enabled:
            if not config.controlnet.model:
                raise WorkerError(
                    "is needed when the ControlNet is enabled", "model_config.controlnet.model"
                )
            body["controlnet"] = {
                "model": _stem(config.controlnet.model),
                "conditioning_scale": config.controlnet.conditioning_scale,
            }
        body = {key: value for key, value in body.items() if value is not None}
        # Every tile read and stored before any is submitted: a bad one leaves nothing running.
        images = [
            self._image(tile.image_b64, f"tiles.{n}.image_b64")
            for n, tile in enumerate(request.tiles)
        ]
        jobs: list[Job] = []
        for n, (tile, (image, (width, height))) in enumerate(
            zip(request.tiles, images, strict=True)
        ):
            prompt = tile.prompt_override or request.global_prompt
            # At the tile's own size, given: the client pastes the tiles back where they came
            # from, so a size the model cannot run is refused rather than rounded.
            size = {"width": width, "height": height}

            def rename(field: str, n: int = n, own: bool = bool(tile.prompt_override)) -> str:
                if field in ("image", "width", "height"):
                    return f"tiles.{n}.image_b64"
                if field.startswith("prompts"):
                    return f"tiles.{n}.prompt_override" if own else "global_prompt"
                for ours, theirs in _UPSCALE_FIELDS:
                    if field == ours or field.startswith(f"{ours}."):
                        return theirs + field[len(ours) :]
                return field

            self._submit(
                jobs, "edit", body | size | {"prompts": [prompt]}, {"image": image}, rename
            )
        tiles = []
        for tile, done in zip(request.tiles, self._wait(jobs, job), strict=True):
            output = done.outputs[0]
            data = self.engine.output_path(done, 0).read_bytes()
            tiles.append(
                {
                    "tile_id": tile.tile_id,
                    "image_b64": _b64(data),
                    "seed_used": output.seed,
                }
            )
        return {"tiles": tiles}

    def _list_models(self, request: ListModelsInput, job: dict) -> dict:
        models = self.store.list(request.model_type)
        if request.base_model_filter:
            models = [m for m in models if m.family == request.base_model_filter]
        return {"models": [self._entry(m) for m in models]}

    def _upload_model(self, request: UploadModelInput, job: dict) -> dict:
        name = request.filename
        if Path(name).name != name or name.startswith(".") or "\\" in name:
            raise WorkerError(f"must be a plain file name but is {name!r}", "filename")
        if Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
            raise WorkerError(f"must end in {' or '.join(UPLOAD_SUFFIXES)}", "filename")
        if request.chunk_index >= request.total_chunks:
            raise WorkerError(
                f"must be below total_chunks ({request.total_chunks}) but is {request.chunk_index}",
                "chunk_index",
            )
        try:
            model_id = validate_model_id(_stem(name), field="filename")
        except InvalidInput as exc:
            raise WorkerError(exc.message) from exc
        if self.store.exists(model_id, request.model_type):
            raise WorkerError(f"a {request.model_type} {model_id!r} is already stored", "filename")
        data = self._base64(request.file_b64, "file_b64")
        # One folder per upload on the volume, the same on every worker; each chunk a file of
        # its own, written whole (temp + rename): chunks may come in any order, to any worker.
        key = hashlib.sha256(
            f"{name}\0{request.model_type}\0{request.base_model}\0{request.total_chunks}".encode()
        ).hexdigest()[:32]
        folder = self.uploads / f"runpod-{key}"
        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / f"{request.chunk_index:06d}.chunk", data)
        received = len(list(folder.glob("*.chunk")))
        status = {
            "status": "chunk_received",
            "chunk_index": request.chunk_index,
            "chunks_received": received,
            "total_chunks": request.total_chunks,
        }
        if received < request.total_chunks:
            return status
        try:  # one worker joins them, even when two see the last chunk at once
            os.close(os.open(folder / "joining", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return status
        try:
            joined = folder / name
            with joined.open("wb") as out:
                for index in range(request.total_chunks):
                    with (folder / f"{index:06d}.chunk").open("rb") as chunk:
                        shutil.copyfileobj(chunk, out)
            manifest = import_model(
                self.store,
                joined,
                model_id=model_id,
                source=f"RunPod upload of {name}",
                expected_kind=request.model_type,
            )
        except AssetboxError as exc:
            raise WorkerError(exc.message, "file_b64") from exc
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if request.base_model and manifest.family != request.base_model:
            self.store.remove(manifest.id, manifest.kind)
            raise WorkerError(
                f"is {request.base_model!r} but the file is a {manifest.family} model; not stored",
                "base_model",
            )
        return {"status": "completed", "model": self._entry(manifest)}

    def _delete_model(self, request: DeleteModelInput, job: dict) -> dict:
        manifest = self._by_path(request.path)
        self.store.remove(manifest.id, manifest.kind)
        self.engine.executor.forget(manifest.id)
        return {"deleted": request.path, "model": self._entry(manifest)}

    def _health(self, request: HealthInput, job: dict) -> dict:
        gpu, total, used = _gpu()
        loaded = self.engine.executor.loaded_models()
        return {
            "gpu": gpu,
            "vram_total_gb": total,
            "vram_used_gb": used,
            # Cache keys are `<model>:<sha>:<engine>` (or `<kind>:<model>:...`), most recent last.
            "loaded_model": loaded[-1] if loaded else None,
            "network_storage_available_gb": round(
                shutil.disk_usage(self.settings.data_dir).free / GIB, 2
            ),
        }

    # -- helpers ---------------------------------------------------------------------------------

    def _base64(self, text: str, field: str) -> bytes:
        try:
            return decode_base64(text, field=field)
        except InvalidInput as exc:
            raise WorkerError(exc.message.replace(f"`{field}`", "").strip(" :"), field) from exc

    def _image(self, text: str, field: str) -> tuple[str, tuple[int, int]]:
        """The image stored as a blob (checked first: bombs and non-images are refused), and its
        size."""
        data = self._base64(text, field)
        try:
            _, width, height = probe_image(data, field=field)
        except InvalidInput as exc:
            raise _refusal(exc, lambda f: field) from exc
        return self.engine.put_blob(data), (width, height)

    def _submit(
        self,
        jobs: list[Job],
        kind: str,
        body: dict,
        images: dict[str, str],
        rename: Callable[[str], str],
    ) -> None:
        """Submit a job onto `jobs`; a refused one cancels those before it (one action, one
        answer: nothing of a refused action runs on)."""
        try:
            jobs.append(self.engine.submit(kind, with_images(body, images)))
        except (InvalidInput, NotFound) as exc:
            for submitted in jobs:
                self.engine.cancel(submitted.id)
            raise _refusal(exc, rename) from exc

    def _wait(self, jobs: list[Job], job: dict) -> list[Job]:
        """The jobs once finished, in order; progress (jobs done of all) after each."""
        done = []
        for job_ in jobs:
            finished = self.engine.wait(job_.id)
            if finished.status != JobStatus.SUCCEEDED:
                for rest in jobs[len(done) + 1 :]:
                    self.engine.cancel(rest.id)
                error = finished.error.message if finished.error else finished.status.value
                raise WorkerError(f"{finished.kind} job {finished.id} {finished.status}: {error}")
            done.append(finished)
            if self.report is not None:
                self.report(job, {"done": len(done), "total": len(jobs)})
        return done

    def _checkpoint_id(self, config: ModelConfig) -> str:
        model_id = _stem(config.base_model)
        field = "model_config.base_model"
        if not self.store.exists(model_id, "checkpoint"):
            known = ", ".join(m.id for m in self.store.list("checkpoint")) or "none"
            raise WorkerError(f"no checkpoint {config.base_model!r} (available: {known})", field)
        family = self.store.get(model_id, "checkpoint").family
        if config.model_type and config.model_type != family:
            raise WorkerError(
                f"is {config.model_type!r} but {model_id!r} is a {family} model",
                "model_config.model_type",
            )
        return model_id

    def _entry(self, manifest: ModelManifest) -> dict:
        return {
            "name": manifest.id,
            "path": str(self.store.path(manifest.id, manifest.kind)),
            "model_type": manifest.kind,
            "base_model": manifest.family,
            "size_mb": round(manifest.size / 1024**2, 3),
        }

    def _by_path(self, path: str) -> ModelManifest:
        """The model at `path` (as `list_models` gives it, or relative to the store)."""
        given = Path(path)
        try:
            relative = given.relative_to(self.store.root) if given.is_absolute() else given
        except ValueError:
            relative = None
        if relative is not None and len(relative.parts) == 2:
            folder, model_id = relative.parts
            kind = next((k for k in KINDS if f"{k}s" == folder), None)
            if kind is not None and self.store.exists(_stem(model_id), kind):
                return self.store.get(_stem(model_id), kind)
        raise WorkerError(f"no model at {path!r} (see list_models' `path`)", "path")


def _images_to_tiles(field: str, first: int) -> str:
    """A caption job's `images.N` is the toolbox's `tiles.{first + N}.image_b64`."""
    parts = field.split(".")
    if parts[0] == "images" and len(parts) > 1 and parts[1].isdigit():
        return f"tiles.{first + int(parts[1])}.image_b64"
    return field


def _stem(value: str) -> str:
    """A store id from a name or a path: the last part, without a weights suffix."""
    name = Path(value).name
    for suffix in (".safetensors", ".ckpt", ".pth", ".bin"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)].lower().replace(" ", "-")
    return name


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _gpu() -> tuple[str | None, float, float]:
    """The GPU's name, total and used memory in GiB (None, 0, 0 without CUDA)."""
    import torch  # the kinds load it anyway on the first job

    if not torch.cuda.is_available():
        return None, 0.0, 0.0
    free, total = torch.cuda.mem_get_info()
    return torch.cuda.get_device_name(0), round(total / GIB, 2), round((total - free) / GIB, 2)


# -- the process's worker ----------------------------------------------------------------------

_worker: RunpodWorker | None = None
_lock = threading.Lock()


def worker_settings(settings: Settings | None = None) -> Settings:
    """The settings, with the data directory on RunPod's network volume when running on RunPod
    and ASSETBOX_DATA_DIR does not say otherwise."""
    settings = settings or get_settings()
    if settings.runpod_endpoint_id and "data_dir" not in settings.model_fields_set:
        settings = settings.model_copy(update={"data_dir": RUNPOD_VOLUME / "assetbox"})
    return settings


def get_worker() -> RunpodWorker:
    """The process-wide worker, started on first use."""
    global _worker
    with _lock:
        if _worker is None:
            settings = worker_settings()
            report = None
            if settings.runpod_endpoint_id:  # progress_update posts to RunPod's job API
                import runpod

                report = runpod.serverless.progress_update
            _worker = RunpodWorker(settings, report)
        return _worker


def close_worker() -> None:
    """Stop the process-wide worker's engine (the next job starts a fresh one)."""
    global _worker
    with _lock:
        if _worker is not None:
            _worker.close()
            _worker = None


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod's handler: ``{"id": ..., "input": {"action": ...}}`` to the action's output."""
    return get_worker().handle(job)


def start() -> None:
    """`runpod.serverless.start` with this handler; runpod reads its own flags from the command
    line (``--rp_serve_api --rp_api_port N`` for a local API, ``--test_input JSON``)."""
    try:
        import runpod
    except ImportError as exc:
        raise SystemExit(
            "the RunPod worker needs the `runpod` extra: pip install 'assetbox[runpod]'"
        ) from exc
    get_worker()  # fail at start, not on the first job, when the settings or store are wrong
    runpod.serverless.start({"handler": handler})


__all__ = ["ACTIONS", "RunpodWorker", "close_worker", "handler", "start"]
