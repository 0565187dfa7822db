"""The FLUX.2-klein service's HTTP shape (the seed ran it on port 7000): ``POST /generate``,
``POST /upscale`` and its fields in ``GET /health``, translated to our generate and upscale jobs.

- `/generate`'s prompts become one generate job on the checkpoint the `compat_flux_model`
  setting names (default: the store's first flux2_klein), its `images` our FLUX.2 `references`;
  seeds run ``seed, seed+1, ...`` as ours do. `upscale: 2|4` is an upscale job per image with
  the built-in Real-ESRGAN, as the seed's was. Each image is then PUT to its upload URL by our
  delivery's `upload_outputs` (the same SSRF check and Content-Type as a job's `upload_urls`),
  called here so that its time is the seed's `timing_upload_ms`.
- Errors keep the seed's shapes: FastAPI's ``422 {"detail": [{loc, msg, type}]}`` for a body
  that does not validate, ``{"detail": "..."}`` for a request we refuse (no checkpoint: 503),
  and ``success: false`` with `error` for an image (or upscale) that failed.
- `/health` answers ours and the seed's fields together (see `health`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, model_validator

from assetbox.compat.service_jobs import failure, json_body, one_model, run_job
from assetbox.engine.delivery import upload_outputs
from assetbox.engine.inputs import check_url
from assetbox.engine.jobs import Job
from assetbox.errors import AssetboxError, InvalidInput, NotFound
from assetbox.imaging import probe_image
from assetbox.server.errors import status_for
from assetbox.server.routers import health as our_health
from assetbox.server.schemas import GenerateCreate, UpscaleCreate
from assetbox.server.submit import image_bytes

router = APIRouter(tags=["FLUX.2-klein service (compat)"])

SETTING = "compat_flux_model"
FAMILIES = ("flux2_klein",)
# Our field names in refusals, as the seed's request calls them.
_FIELDS = {"steps": "num_steps", "format": "output_format", "references": "images"}


class ReferenceImage(BaseModel):
    url: str
    weight: float = 1.0


class GenerateRequest(BaseModel):
    """The seed's batch request: one image per prompt, each PUT to its upload URL."""

    prompts: list[str] = Field(min_length=1)
    upload_urls: list[str]
    images: list[ReferenceImage] = Field(default_factory=list)
    width: int = 1024
    height: int = 1024
    num_steps: int = 4
    seed: int | None = None
    upscale: Literal[2, 4] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"

    @model_validator(mode="after")
    def _one_url_per_prompt(self) -> GenerateRequest:
        if len(self.prompts) != len(self.upload_urls):
            raise ValueError(
                f"prompts and upload_urls must have same length ({len(self.prompts)} prompts, "
                f"{len(self.upload_urls)} upload_urls)"
            )
        return self


class UpscaleRequest(BaseModel):
    image_url: str
    upload_url: str
    scale: Literal[2, 4] = 4
    output_format: Literal["png", "jpeg", "webp"] = "png"


def _invalid(exc: ValidationError) -> JSONResponse:
    """FastAPI's own answer to a body that does not validate (what the seed's clients read)."""
    errors = [
        {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        for e in exc.errors(include_url=False)
    ]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def _refused(exc: AssetboxError) -> JSONResponse:
    """A refusal as ``{"detail": text}``, our field named as the seed's request calls it."""
    field = getattr(exc, "field", None)
    message = exc.message
    if field:
        head, _, rest = field.partition(".")
        theirs = _FIELDS.get(head, head) + (f".{rest}" if rest else "")
        theirs = theirs.replace(".image", ".url") if head == "references" else theirs
        message = message.replace(f"`{field}`", f"`{theirs}`")
        if f"`{theirs}`" not in message:
            message = f"`{theirs}`: {message}"
    status = 503 if isinstance(exc, NotFound) and field == SETTING else status_for(exc)
    return JSONResponse({"detail": message}, status_code=status)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        return _invalid(exc)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _job_ms(job: Job) -> int | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return _ms((job.finished_at - job.started_at).total_seconds())


def _base_url(url: str) -> str:
    return url.split("?")[0]  # the seed's output_url: the upload URL without its signature


async def _upload(request: Request, job: Job, url: str) -> tuple[str | None, int]:
    """PUT the job's first output to `url`; (the error or None, milliseconds)."""
    engine = request.app.state.engine
    path = engine.output_path(job, 0)
    started = time.perf_counter()
    (done,) = await run_in_threadpool(
        upload_outputs, job.outputs[:1], [path], [url], request.app.state.settings
    )
    elapsed = _ms(time.perf_counter() - started)
    upload = done.upload
    if upload is None or upload.ok:
        return None, elapsed
    return f"upload to {_base_url(url)} failed: {upload.status or ''} {upload.error}", elapsed


async def _upscale_job(request: Request, data: bytes, scale: int, fmt: str) -> Job:
    """Our GAN upscale of one image, with the `compat_flux_upscaler` (Real-ESRGAN x4plus)."""
    model = request.app.state.settings.compat_flux_upscaler
    body = UpscaleCreate(image="-", model=model, scale=scale, format=fmt)  # type: ignore[call-arg]
    return await run_job(request, "upscale", body, {"image": data})


@router.post("/generate", openapi_extra=json_body(GenerateRequest))
async def generate(request: Request) -> JSONResponse:
    """The seed's batch generation: each prompt's image (upscaled when asked) PUT to its
    upload URL; results per image with its seed and timings."""
    started = time.perf_counter()
    body = await _parse(request, GenerateRequest)
    if isinstance(body, JSONResponse):
        return body
    settings = request.app.state.settings
    try:
        model = one_model(settings, settings.compat_flux_model, FAMILIES, SETTING)
        for n, url in enumerate(body.upload_urls):
            check_url(url, settings, field=f"upload_urls.{n}")
        references = {
            f"references.{n}.image": await image_bytes(request, ref.url, f"references.{n}.image")
            for n, ref in enumerate(body.images)
        }
        ours = GenerateCreate(
            model=model.id,
            prompts=body.prompts,
            width=body.width,
            height=body.height,
            steps=body.num_steps,
            seed=body.seed,
            references=[{"image": "-", "weight": ref.weight} for ref in body.images],
            format=body.output_format,
        )
        job = await run_job(request, "generate", ours, references)
    except ValidationError as exc:
        return _refused(InvalidInput.from_validation(exc, default_field="body"))
    except AssetboxError as exc:
        return _refused(exc)
    results = []
    why = failure(job)
    for index, url in enumerate(body.upload_urls):
        if why is not None:
            results.append({"index": index, "success": False, "error": why})
            continue
        results.append(await _deliver(request, job, index, url, body))
    return JSONResponse(
        {
            "success": all(r["success"] for r in results),
            "results": results,
            "timing_total_ms": _ms(time.perf_counter() - started),
        }
    )


async def _deliver(
    request: Request, job: Job, index: int, url: str, body: GenerateRequest
) -> dict[str, Any]:
    """One image's result: upscaled when asked, PUT to its URL."""
    output = job.outputs[index]
    result: dict[str, Any] = {
        "index": index,
        "success": False,
        "seed": output.seed,
        "timing_inference_ms": round(output.timings_ms.get("generate", 0)),
        "timing_upscale_ms": None,
        "timing_upload_ms": None,
    }
    source = job.model_copy(update={"outputs": [output.model_copy(update={"index": 0})]})
    if body.upscale:
        data = request.app.state.engine.output_path(job, index).read_bytes()
        try:
            upscaled = await _upscale_job(request, data, body.upscale, body.output_format)
        except AssetboxError as exc:
            return result | {"error": f"upscale: {exc.message}"}
        result["timing_upscale_ms"] = _job_ms(upscaled)
        if (why := failure(upscaled)) is not None:
            return result | {"error": f"upscale: {why}"}
        source = upscaled
    error, result["timing_upload_ms"] = await _upload(request, source, url)
    if error is not None:
        return result | {"error": error}
    final = source.outputs[0]
    return result | {
        "success": True,
        "output_url": _base_url(url),
        "width": final.width,
        "height": final.height,
    }


@router.post("/upscale", openapi_extra=json_body(UpscaleRequest))
async def upscale(request: Request) -> JSONResponse:
    """The seed's standalone upscale: fetch, Real-ESRGAN 2x or 4x, PUT to the upload URL."""
    started = time.perf_counter()
    body = await _parse(request, UpscaleRequest)
    if isinstance(body, JSONResponse):
        return body
    settings = request.app.state.settings
    try:
        check_url(body.upload_url, settings, field="upload_url")
        fetch_started = time.perf_counter()
        data = await image_bytes(request, body.image_url, "image_url")
        download_ms = _ms(time.perf_counter() - fetch_started)
        _, input_width, input_height = probe_image(data, field="image_url")
        job = await _upscale_job(request, data, body.scale, body.output_format)
    except AssetboxError as exc:
        return _refused(exc)
    if (why := failure(job)) is not None:
        return JSONResponse({"success": False, "error": why})
    error, upload_ms = await _upload(request, job, body.upload_url)
    if error is not None:
        return JSONResponse({"success": False, "error": error})
    output = job.outputs[0]
    scale = body.scale
    return JSONResponse(
        {
            "success": True,
            "output_url": _base_url(body.upload_url),
            "input_width": input_width,
            "input_height": input_height,
            "output_width": output.width,
            "output_height": output.height,
            "scale": scale,
            "timing_download_ms": download_ms,
            # We load on demand in a worker: the load is inside the job's time.
            "timing_load_ms": 0,
            "timing_upscale_ms": _job_ms(job),
            "timing_upload_ms": upload_ms,
            "timing_total_ms": _ms(time.perf_counter() - started),
        }
    )


def gpu() -> dict[str, Any]:
    """The seed's GPU fields, from nvidia-smi: the workers hold the device, in processes of
    their own, so its totals are the service's (this process never initialises CUDA)."""
    fields = {
        "gpu_available": False,
        "gpu_name": None,
        "gpu_memory_gb": None,
        "gpu_memory_used_gb": None,
    }
    if shutil.which("nvidia-smi") is None:
        return fields
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,memory.used",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return fields
    first = next((line for line in out.splitlines() if line.strip()), None)
    if first is None:
        return fields
    name, total, used = (part.strip() for part in first.split(","))
    return {
        "gpu_available": True,
        "gpu_name": name,
        "gpu_memory_gb": round(float(total) / 1024, 2),
        "gpu_memory_used_gb": round(float(used) / 1024, 2),
    }


@router.get("/health", include_in_schema=False)
def health(request: Request) -> dict:
    """Ours and the seed's fields in one answer, so that both clients keep working on the same
    path. `status` stays ours ("ok"): our client and the web UI read it, and the seed's client
    checks `flux_loaded`. `flux_loaded` says /generate can run: the checkpoint is in the store
    (we load it on the first request, into a worker, instead of at start); `flux_resident`
    says whether a worker holds it now."""
    engine = request.app.state.engine
    answer = our_health.health(engine)
    try:
        model = one_model(engine.settings, engine.settings.compat_flux_model, FAMILIES, SETTING)
    except AssetboxError:
        model = None
    resident = model is not None and any(
        key.startswith(f"{model.id}:") for key in engine.executor.loaded_models()
    )
    return answer | {
        "flux_loaded": model is not None,
        "flux_model": model.id if model is not None else None,
        "flux_resident": resident,
        **gpu(),
    }


def mount(app: FastAPI) -> None:
    """Add the routes ahead of ours: the first route of a path answers, and this `/health`
    must answer before ours (it includes ours)."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[:0] = added
