"""What the foreign HTTP shapes share: the checkpoint a one-model service stands for, and a job
submitted through the same path as our routes (server/submit.py) and waited for."""

from __future__ import annotations

import json
from collections.abc import Sequence

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.engine.jobs import Job
from assetbox.errors import NotFound
from assetbox.models.store import ModelManifest, model_store
from assetbox.server.present import MAX_WAIT_S
from assetbox.server.schemas import JobCreate
from assetbox.server.submit import inline_schema, submit_job

# The seeds answered when the work was done; so do we, for as long as our own wait allows.
WAIT = f"wait={MAX_WAIT_S}"


def one_model(
    settings: Settings, chosen: str | None, families: Sequence[str], setting: str
) -> ModelManifest:
    """The checkpoint a seed's one-model service stands for: `chosen` (the `setting`), or the
    store's first (by id) checkpoint of `families`.

    Raises:
        NotFound: `chosen` is no checkpoint of `families`, or none is in the store (naming the
            setting, ``ASSETBOX_<SETTING>``).
    """
    env = f"ASSETBOX_{setting.upper()}"
    wanted = " or ".join(families)
    store = model_store(settings)
    if chosen:
        manifest = store.get(chosen, "checkpoint", field=setting)
        if manifest.family not in families:
            raise NotFound(
                f"{env} names {chosen!r}, a {manifest.family} checkpoint; it must be {wanted}",
                field=setting,
            )
        return manifest
    found = [m for m in store.list("checkpoint") if m.family in families]
    if not found:
        raise NotFound(
            f"no {wanted} checkpoint in the store: import one, or name one with {env}",
            field=setting,
        )
    return found[0]


async def run_job(request: Request, kind: str, body: JobCreate, images: dict[str, bytes]) -> Job:
    """Submit `body` as our route does and wait for it (up to `MAX_WAIT_S`).

    Raises:
        AssetboxError: what the submit refused (invalid input, unknown model, full queue).
    """
    engine: Engine = request.app.state.engine
    options = body.options()  # type: ignore[attr-defined]
    response = await submit_job(engine, kind, body, options, images, WAIT, None)
    job_id = json.loads(bytes(response.body))["id"]
    return await run_in_threadpool(engine.get, job_id)


def failure(job: Job) -> str | None:
    """Why a finished job gave no outputs (None when it succeeded)."""
    if job.status == "succeeded":
        return None
    if job.error is not None:
        return f"{job.error.code}: {job.error.message}"
    return f"the job is {job.status} after {MAX_WAIT_S} s (job {job.id})"


def json_body(model: type[BaseModel]) -> dict:
    """A route's JSON request body for the OpenAPI: the shapes read theirs by hand, to answer an
    invalid one in the seed's own error shape."""
    schema = {"application/json": {"schema": inline_schema(model)}}
    return {"requestBody": {"content": schema, "required": True}}
