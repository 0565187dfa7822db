"""``/health``: is the service up, and what does it have."""

from __future__ import annotations

import shutil

from fastapi import APIRouter

from assetbox import __version__
from assetbox.engine.jobs import JobStatus
from assetbox.server.deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(engine: EngineDep) -> dict:
    usage = shutil.disk_usage(engine.data_dir)
    return {
        "status": "ok",
        "version": __version__,
        "executor": engine.settings.executor,
        "workers": engine.executor.workers,
        "queue_depth": engine.store.count(JobStatus.QUEUED),
        "running": engine.store.count(JobStatus.RUNNING),
        "free_disk_bytes": usage.free,
    }
