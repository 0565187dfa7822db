"""Executors give the engine workers. `LocalExecutor`: threads in this process (the default).

A worker runs one unit at a time and keeps a cache (loaded models) between units. Executors take
a `UnitTask` and return a future of the unit's result bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from assetbox.engine.planners import UnitContext, planner_for


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

    def loaded_models(self) -> list[str]: ...


class LocalExecutor:
    """`workers` threads in this process, each with its own cache."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="assetbox-worker")
        self._local = threading.local()
        self._caches: list[dict[str, Any]] = []
        self._caches_lock = threading.Lock()

    def _cache(self) -> dict[str, Any]:
        if not hasattr(self._local, "cache"):
            self._local.cache = {}
            with self._caches_lock:
                self._caches.append(self._local.cache)
        return self._local.cache

    def loaded_models(self) -> list[str]:
        """Models held by the workers' caches (``backend:<model>:<sha>:<engine>`` keys)."""
        with self._caches_lock:
            keys = {k for cache in self._caches for k in list(cache) if k.startswith("backend:")}
        return sorted(keys)

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        return self._pool.submit(lambda: run_task(task, self._cache(), should_stop, report_step))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
