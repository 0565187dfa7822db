"""How a job is shown over HTTP, and how long a request may wait for one (used by the routers and
by the submit helpers, so it lives beside them rather than in a router)."""

from __future__ import annotations

import re

from assetbox.engine.engine import Engine
from assetbox.engine.jobs import Job
from assetbox.imaging import encode_base64
from assetbox.server.schemas import JobPublic, OutputPublic

MAX_WAIT_S = 300


def prefer_wait(prefer: str | None) -> float:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), at most `MAX_WAIT_S`."""
    match = re.search(r"wait\s*=\s*(\d+(?:\.\d+)?)", prefer or "")
    return min(float(match.group(1)), MAX_WAIT_S) if match else 0.0


def present(job: Job, engine: Engine, *, b64: bool = False) -> JobPublic:
    """The public view of a job: outputs with download URLs (and inline base64 if asked)."""
    outputs = [
        OutputPublic(
            index=o.index,
            url=f"/v1/jobs/{job.id}/outputs/{o.index}",
            media_type=o.media_type,
            width=o.width,
            height=o.height,
            seed=o.seed,
            timings_ms=o.timings_ms,
            b64=encode_base64(engine.output_path(job, o.index).read_bytes()) if b64 else None,
            upload=o.upload,
            nsfw_detected=o.nsfw_detected,
            nsfw_score=o.nsfw_score,
            nsfw_detections=o.nsfw_detections,
        )
        for o in job.outputs
    ]
    return JobPublic.from_job(job, outputs)
