"""Executors give the engine workers. `LocalExecutor`: threads in this process (the default).

A worker runs one unit at a time and keeps loaded models between units in a `ModelCache` (one per
device: the local executor's threads share one). Executors take a `UnitTask` and return a future
of the unit's result bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from assetbox.engine.planners import UnitContext, planner_for
from assetbox.models.cache import CacheStats, ModelCache


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs to run one unit (plain data, so it can cross processes)."""

    kind: str
    request: dict[str, Any]
    payload: dict[str, Any]
    attempt: int
    data_dir: str = "."


def run_task(
    task: UnitTask,
    cache: dict[str, Any],
    models: ModelCache,
    should_stop: Callable[[], bool],
    report_step: Callable[[int, int], None],
) -> bytes:
    """Run one unit with its planner (what every worker does, wherever it lives)."""
    planner = planner_for(task.kind)
    request = planner.request_model.model_validate(task.request)
    ctx = UnitContext(
        report_step=report_step,
        should_stop=should_stop,
        cache=cache,
        models=models,
        attempt=task.attempt,
        data_dir=Path(task.data_dir),
    )
    return planner.run_unit(request, task.payload, ctx)


class Executor(Protocol):
    workers: int

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]: ...

    def close(self) -> None: ...

    def cache_stats(self) -> CacheStats:
        """Loads, hits, evictions and resident bytes of the workers' model caches, summed."""
        ...

    def loaded_models(self) -> list[str]: ...

    def forget(self, model_id: str) -> None:
        """Drop a model deleted from the store from the workers' caches (idle ones)."""
        ...


def worker_cache(budget_bytes: int | None, *, share: int = 1) -> ModelCache:
    """A worker's model cache: `budget_bytes`, or by default from its device (a CUDA GPU's
    memory; on a CPU, RAM split between the `share` workers of one machine)."""
    from assetbox.models.cache import default_budget
    from assetbox.pipelines.upscale_gan import cuda_available

    if budget_bytes is None:
        device = "cuda:0" if cuda_available() else "cpu"
        budget_bytes = default_budget(device) // (share if device == "cpu" else 1)
    return ModelCache(budget_bytes)


def forget_model(cache: ModelCache, model_id: str) -> None:
    """Drop a model's idle entries (upscalers, checkpoints, ControlNets) from `cache`."""
    for prefix in (f"{model_id}:", f"checkpoint:{model_id}:", f"controlnet:{model_id}:"):
        cache.evict_matching(prefix)


class LocalExecutor:
    """`workers` threads in this process sharing one model cache (they share the device), each
    with its own scratch cache."""

    def __init__(self, workers: int = 1, *, model_cache: ModelCache | None = None) -> None:
        self.workers = workers
        self.models = model_cache or worker_cache(None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assetbox-worker")
        self._local = threading.local()

    def _cache(self) -> dict[str, Any]:
        if not hasattr(self._local, "cache"):
            self._local.cache = {}
        return self._local.cache

    def cache_stats(self) -> CacheStats:
        return self.models.stats()

    def loaded_models(self) -> list[str]:
        """Keys of the resident models (``<model>:<sha>:<engine>``), least recently used first."""
        return self.models.keys()

    def forget(self, model_id: str) -> None:
        forget_model(self.models, model_id)

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        return self._pool.submit(
            lambda: run_task(task, self._cache(), self.models, should_stop, report_step)
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
