"""The generation API's shape: model and LoRA loading, and generation over a WebSocket.

- ``POST /v1/models/load`` ``{"model_id"}``: a `load` job puts the checkpoint into a worker's
  model cache (kinds/load.py), and the model becomes the one this API's generations use when
  they name none. Answers when the job ended: ``{"success", "model_id", "job_id"}``.
- ``POST /v1/loras/load`` ``{"name", "weight"}``, ``POST /v1/loras/unload`` ``{"name"}``,
  ``GET /v1/loras/list``: the LoRAs "loaded" for later generations. Our LoRAs are per request,
  loaded by the worker that runs it, so here "loaded" keeps the seed's meaning as a set of
  active LoRAs with their weights, kept by this service (in memory, like the seed's pipeline)
  and given to every generation on the WebSocket that names no `loras` of its own. Loading
  checks the LoRA is in the store; its family is checked against the checkpoint at submit.
- ``/v1/generate/ws``: a client sends a generate request as JSON (our ``POST /v1/generate``
  fields; ``prompt`` stands for one prompt, ``model_id`` for ``model``), and gets
  ``{"type": "progress", "progress": 0..1, "step"}`` messages, then ``{"type": "result",
  "data"}`` (the finished job with its images as base64) or ``{"type": "error", "message"}``.
  The connection takes one request after another; a client that leaves cancels its job.

Paths: ``/v1/models/load`` is a POST beside our ``GET /v1/models``, ``DELETE
/v1/models/{id}`` and ``/v1/models/uploads...`` (no route of ours takes that method and path);
``/v1/loras/*`` and ``/v1/generate/ws`` are new. Refusals use our error shape (the seed's
generation API had none of its own that we know of), naming the field.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobProgress, JobStatus
from assetbox.errors import AssetboxError, InvalidInput, ModelError, NotFound
from assetbox.kinds.diffusion import LoraRef
from assetbox.models.store import model_store
from assetbox.server import auth
from assetbox.server.deps import EngineDep, SettingsDep
from assetbox.server.present import MAX_WAIT_S, present

router = APIRouter(prefix="/v1", tags=["generation API (compat)"])


class ActiveSet:
    """This service's loaded model and active LoRAs (name → weight), shared by its requests."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.loras: dict[str, float] = {}
        self.lock = threading.Lock()

    def lora_refs(self) -> list[dict[str, Any]]:
        with self.lock:
            return [{"name": name, "weight": weight} for name, weight in self.loras.items()]


def active_set(app: Any) -> ActiveSet:
    state = app.state
    if getattr(state, "generation_api", None) is None:
        state.generation_api = ActiveSet()
    return state.generation_api


class ModelLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(description="store id of a checkpoint")


class ModelLoaded(BaseModel):
    success: bool
    model_id: str
    job_id: str


class LoraLoad(LoraRef):
    model_config = ConfigDict(extra="forbid")


class LoraUnload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="store id of an active LoRA")


class LoraActive(BaseModel):
    name: str
    weight: float
    family: str | None = None


class LorasActive(BaseModel):
    loras: list[LoraActive]


@router.post("/models/load", response_model=ModelLoaded)
async def load_model(body: ModelLoad, request: Request, engine: EngineDep) -> ModelLoaded:
    """Load a checkpoint into a worker's model cache (a `load` job, waited for up to
    300 s); it becomes the model of this API's generations that name none."""
    try:
        job = await run_in_threadpool(engine.submit, "load", {"model": body.model_id})
    except (InvalidInput, NotFound) as exc:
        if exc.field == "model":  # named as the client sent it
            exc.field = "model_id"
        raise
    job = await run_in_threadpool(engine.wait, job.id, MAX_WAIT_S)
    if job.status != JobStatus.SUCCEEDED:
        message = job.error.message if job.error else f"the load job is {job.status.value}"
        raise ModelError(f"{body.model_id!r} did not load (job {job.id}): {message}")
    active = active_set(request.app)
    with active.lock:
        active.model = body.model_id
    return ModelLoaded(success=True, model_id=body.model_id, job_id=job.id)


@router.post("/loras/load", response_model=LorasActive)
def load_lora(body: LoraLoad, request: Request, settings: SettingsDep) -> LorasActive:
    """Make a LoRA (store id, weight) active for later generations; loading one again sets
    its weight."""
    model_store(settings).get(body.name, "lora", field="name")  # NotFound names `name`
    active = active_set(request.app)
    with active.lock:
        active.loras[body.name] = body.weight
    return _listing(request, settings)


@router.post("/loras/unload", response_model=LorasActive)
def unload_lora(body: LoraUnload, request: Request, settings: SettingsDep) -> LorasActive:
    """Drop a LoRA from the active set (404 naming `name` when it is not in it)."""
    active = active_set(request.app)
    with active.lock:
        if body.name not in active.loras:
            known = ", ".join(active.loras) or "none"
            raise NotFound(f"LoRA {body.name!r} is not loaded (loaded: {known})", field="name")
        del active.loras[body.name]
    return _listing(request, settings)


@router.get("/loras/list", response_model=LorasActive)
def list_loras(request: Request, settings: SettingsDep) -> LorasActive:
    """The active LoRAs with their weights and families."""
    return _listing(request, settings)


def _listing(request: Request, settings: Any) -> LorasActive:
    store = model_store(settings)
    listed = []
    for ref in active_set(request.app).lora_refs():
        try:
            family = store.get(ref["name"], "lora").family
        except NotFound:  # deleted from the store since: still listed, so it can be unloaded
            family = None
        listed.append(LoraActive(**ref, family=family))
    return LorasActive(loras=listed)


# -- the WebSocket -------------------------------------------------------------------------------

# Image inputs come as base64 or URLs, which POST /v1/generate reads and stores; this socket
# takes text-to-image requests only.
WS_REFUSED = ("references", "ip_adapter")


def generate_request(message: Any, active: ActiveSet) -> dict[str, Any]:
    """Our generate request from a socket message: ``prompt`` → ``prompts``, ``model_id`` →
    ``model`` (default: the loaded model), ``loras`` default: the active set.

    Raises:
        InvalidInput: not an object, a field given twice, image inputs, no model (naming it).
    """
    if not isinstance(message, dict):
        raise InvalidInput("a generate request is a JSON object", field="body")
    request = dict(message)
    for ours, theirs in (("prompts", "prompt"), ("model", "model_id")):
        if theirs in request and ours in request:
            raise InvalidInput(f"give `{theirs}` or `{ours}`, not both", field=theirs)
    if "prompt" in request:
        prompt = request.pop("prompt")
        request["prompts"] = [prompt] if isinstance(prompt, str) else prompt
    if "model_id" in request:
        request["model"] = request.pop("model_id")
    for field in WS_REFUSED:
        if field in request:
            raise InvalidInput(f"`{field}` takes images: use POST /v1/generate", field=field)
    if "model" not in request:
        with active.lock:
            model = active.model
        if model is None:
            raise InvalidInput(
                "no model loaded: name one (`model_id`) or POST /v1/models/load first",
                field="model_id",
            )
        request["model"] = model
    if "loras" not in request:
        request["loras"] = active.lora_refs()
    return request


def error_text(exc: AssetboxError, message: Any) -> str:
    """A refusal's message naming the field as the client wrote it (`model_id`, `prompt`)."""
    field = getattr(exc, "field", None)
    text = exc.message
    if field is None:
        return text
    named = field
    if isinstance(message, dict):
        for ours, theirs in (("model", "model_id"), ("prompts", "prompt")):
            if theirs in message and (field == ours or field.startswith(f"{ours}.")):
                named = theirs + field[len(ours) :]
                if theirs == "prompt" and isinstance(message[theirs], str):
                    named = theirs  # `prompts.0` was the one `prompt`
    prefix = f"`{field}`: "
    return f"`{named}`: {text.removeprefix(prefix)}"


def progress_fraction(progress: JobProgress) -> float:
    """How far a job is, 0..1: finished units, and the reporting unit's steps."""
    if not progress.total:
        return 0.0
    steps = max(progress.steps, 1)
    return min(1.0, (progress.done * steps + progress.step) / (progress.total * steps))


@router.websocket("/generate/ws")
async def generate_ws(websocket: WebSocket) -> None:
    """Generate over a WebSocket: send a request, receive progress, then the result or an
    error; repeat. Closes with 4401/4403 when the auth refuses the `Authorization` header."""
    if await auth.refuse_websocket(websocket):
        return
    await websocket.accept()
    engine: Engine = websocket.app.state.engine
    active = active_set(websocket.app)
    try:
        while True:
            try:
                message = await websocket.receive_json()
            except ValueError:
                await websocket.send_json({"type": "error", "message": "not JSON"})
                continue
            await _generate(websocket, engine, message, active)
    except WebSocketDisconnect:
        return


async def _generate(websocket: WebSocket, engine: Engine, message: Any, active: ActiveSet) -> None:
    try:
        request = generate_request(message, active)
        job = await run_in_threadpool(engine.submit, "generate", request)
    except AssetboxError as exc:
        await websocket.send_json({"type": "error", "message": error_text(exc, message)})
        return
    shown = 0.0
    try:
        async for event in engine.events(job.id):
            if event.type == "progress":
                progress = JobProgress.model_validate(event.data)
                shown = max(shown, progress_fraction(progress))  # units overlap: never back
                await websocket.send_json(
                    {"type": "progress", "progress": round(shown, 4), "step": progress.step}
                )
    except (WebSocketDisconnect, asyncio.CancelledError):
        engine.cancel(job.id)  # a brief store write; no await in a task being cancelled
        raise
    job = engine.get(job.id)
    if job.status == JobStatus.SUCCEEDED:
        data = present(job, engine, b64=True).model_dump(mode="json", exclude_none=True)
        await websocket.send_json({"type": "result", "data": data})
    else:
        message_text = job.error.message if job.error else f"the job was {job.status.value}"
        await websocket.send_json({"type": "error", "message": message_text})
