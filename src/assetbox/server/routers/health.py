"""``/health``: is the service up, and what does it have."""

from __future__ import annotations

import shutil
import sys

import psutil
from fastapi import APIRouter

from assetbox import __version__
from assetbox.engine.jobs import JobStatus
from assetbox.server.deps import EngineDep

router = APIRouter(tags=["health"])


def _device() -> str:
    # Without importing torch when it is not loaded yet: health must stay cheap.
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def _memory() -> dict[str, int | None]:
    return {
        "process_rss_bytes": psutil.Process().memory_info().rss,
        "available_bytes": psutil.virtual_memory().available,
    }


@router.get("/health")
def health(engine: EngineDep) -> dict:
    usage = shutil.disk_usage(engine.data_dir)
    return {
        "status": "ok",
        "version": __version__,
        "device": _device(),
        "memory": _memory(),
        "loaded_models": engine.executor.loaded_models(),
        "executor": engine.settings.executor,
        "workers": engine.executor.workers,
        "queue_depth": engine.store.count(JobStatus.QUEUED),
        "running": engine.store.count(JobStatus.RUNNING) + engine.store.count(JobStatus.CANCELLING),
        "free_disk_bytes": usage.free,
    }
