"""``/v1/jobs``: list, inspect, list units, cancel, download outputs, follow events (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, StreamingResponse

from assetbox.engine.engine import Engine
from assetbox.engine.jobs import JobStatus
from assetbox.errors import NotFound
from assetbox.server import auth
from assetbox.server.deps import EngineDep
from assetbox.server.present import prefer_wait, present
from assetbox.server.schemas import JobPublic, JobsPublic, UnitPublic, UnitsPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobsPublic)
def list_jobs(
    engine: EngineDep,
    status: JobStatus | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobsPublic:
    jobs = engine.list(status=status, kind=kind, limit=limit, offset=offset)
    return JobsPublic(data=[present(j, engine) for j in jobs], limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic, response_model_exclude_none=True)
def get_job(job_id: str, engine: EngineDep) -> JobPublic:
    return present(engine.get(job_id), engine)


@router.get("/{job_id}/units", response_model=UnitsPublic, response_model_exclude_none=True)
def get_units(job_id: str, engine: EngineDep) -> UnitsPublic:
    """The job's units in order, each with its status, attempts, last error and, for a tiled
    upscale or a tile caption job, the ids of the tiles it holds (so a client can show each
    tile's progress from the `unit` and `progress` events, which name units by index). Empty
    until the job is planned."""
    return UnitsPublic(
        data=[
            UnitPublic(
                index=unit.index,
                status=unit.status,
                attempts=unit.attempts,
                error=unit.error,
                **shown,
            )
            for unit, shown in engine.units(job_id)
        ]
    )


@router.post("/{job_id}/cancel", response_model=JobPublic, response_model_exclude_none=True)
def cancel_job(
    job_id: str, engine: EngineDep, prefer: Annotated[str | None, Header()] = None
) -> JobPublic:
    """Cancel a job. The cancel is recorded before the answer: a queued job is `cancelled`, a
    running one `cancelling` until its units stop at their next step (a unit that does not stop
    within `ASSETBOX_CANCEL_GRACE_S` is killed with its worker), then `cancelled`; it never runs
    again, also after a restart. With ``Prefer: wait=N`` the answer waits up to N seconds for
    the job to end."""
    job = engine.cancel(job_id)
    wait_s = prefer_wait(prefer)
    if wait_s and not job.status.is_terminal():
        job = engine.wait(job_id, timeout=wait_s)
    return present(job, engine)


@router.get("/{job_id}/outputs/{index}", response_class=FileResponse)
def get_output(job_id: str, index: int, engine: EngineDep) -> FileResponse:
    job = engine.get(job_id)
    if not 0 <= index < len(job.outputs):
        raise NotFound(f"job {job_id} has no output {index} ({len(job.outputs)} outputs)")
    output = job.outputs[index]
    return FileResponse(engine.output_path(job, index), media_type=output.media_type)


@router.get("/{job_id}/events")
def job_events(
    job_id: str,
    engine: EngineDep,
    since: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events from `since` (or `Last-Event-ID`), closing after the terminal one."""
    engine.get(job_id)  # 404 before the stream starts
    start = last_event_id if last_event_id is not None else since

    async def stream() -> AsyncIterator[str]:
        async for event in engine.events(job_id, since=start):
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.websocket("/{job_id}/ws")
async def job_events_ws(websocket: WebSocket, job_id: str, since: int = 0) -> None:
    """The same events as the SSE stream, one JSON message each; closes after the terminal one.
    Refused (closed with 4401/4403) without the `Authorization` the API asks for."""
    if await auth.refuse_websocket(websocket):
        return
    engine: Engine = websocket.app.state.engine
    try:
        engine.get(job_id)
    except NotFound:
        await websocket.close(code=4404, reason=f"no job {job_id!r}")
        return
    await websocket.accept()
    try:
        async for event in engine.events(job_id, since=since):
            await websocket.send_json(event.model_dump(mode="json"))
    except WebSocketDisconnect:
        return
    await websocket.close()
