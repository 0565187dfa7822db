"""Executors give the engine workers.

- `ProcessExecutor` (engine/processes.py, the service's default, ``ASSETBOX_EXECUTOR=local``):
  one process per worker; a unit that does not stop when asked is killed with its process.
- `ThreadExecutor` (here, ``thread``): threads in this process; the CLI's in-process runs.
- `RayExecutor` (engine/ray_executor.py, ``ray``): one Ray actor per GPU.

A worker runs one unit at a time and keeps loaded models between units in a `ModelCache`.
Executors take a `UnitTask` and return a future of the unit's result bytes; `abort` gives up on a
unit that does not stop at its next step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from assetbox.engine.planners import Planner, UnitContext
from assetbox.errors import AssetboxError, Cancelled
from assetbox.models.cache import CacheStats, ModelCache


class WorkerDied(AssetboxError):
    """The worker running a unit went away (process killed, actor died); the unit may well
    succeed on another attempt."""

    code = "worker_died"


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs to run one unit (plain data, so it can cross processes)."""

    planner: Planner  # pickled by reference: the worker imports the kind's module
    request: dict[str, Any]
    payload: dict[str, Any]
    attempt: int
    data_dir: str = "."

    @property
    def kind(self) -> str:
        return self.planner.kind


def model_key(task: UnitTask) -> str | None:
    """The model a unit needs (its request's ``model``), for routing to a warm worker."""
    model = task.request.get("model")
    return str(model) if model is not None else None


def run_task(
    task: UnitTask,
    cache: dict[str, Any],
    models: ModelCache,
    should_stop: Callable[[], bool],
    report_step: Callable[[int, int], None],
) -> bytes:
    """Run one unit with its planner (what every worker does, wherever it lives)."""
    planner = task.planner
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

    def start(self) -> None:
        """Bring the workers up (an engine that never starts needs none)."""
        ...

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        """Run a unit on a free worker (the engine sends at most `workers` at once).
        `should_stop` is polled while it runs; when it turns true the unit is asked to stop at
        its next step (and raises Cancelled)."""
        ...

    def abort(self, future: Future[bytes]) -> None:
        """Give up on a unit that did not stop when asked: its future fails with Cancelled at
        once and its worker is replaced (killed where the executor can kill it)."""
        ...

    def begin_close(self) -> None:
        """Shutdown has begun: a worker lost from now on need not be replaced."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers; units still running after `timeout` seconds are killed or
        abandoned."""
        ...

    def cache_stats(self) -> CacheStats:
        """Loads, hits, evictions and resident bytes of the workers' model caches, summed."""
        ...

    def loaded_models(self) -> list[str]: ...

    def forget(self, model_id: str) -> None:
        """Drop a model deleted from the store from the workers' caches (idle ones)."""
        ...


def worker_cache(budget_bytes: int | None, *, share: int = 1, gpu_share: int = 1) -> ModelCache:
    """A worker's model cache: `budget_bytes`, or by default from its device (a CUDA GPU's
    memory split between the `gpu_share` workers that use it; on a CPU, RAM split between the
    `share` workers of one machine)."""
    from assetbox.models.cache import default_budget
    from assetbox.pipelines.upscale_gan import cuda_available

    if budget_bytes is None:
        device = "cuda:0" if cuda_available() else "cpu"
        budget_bytes = default_budget(device) // (share if device == "cpu" else gpu_share)
    return ModelCache(budget_bytes)


def forget_model(cache: ModelCache, model_id: str) -> None:
    """Drop a model's idle entries from `cache`. Kinds key what they load as
    ``<id>:<sha>...`` or ``<role>:<id>:<sha>...`` (``checkpoint:``, ``captioner:``), so the id
    is the key's first or second part, whichever kind loaded it."""
    for key in cache.keys():  # noqa: SIM118 (a snapshot: a ModelCache is no dict)
        if model_id in key.split(":")[:2]:
            cache.evict(key)


@dataclass
class _ThreadUnit:
    task: UnitTask
    should_stop: Callable[[], bool]
    report_step: Callable[[int, int], None]
    future: Future[bytes]


class ThreadExecutor:
    """`workers` threads in this process sharing one model cache (they share the device), each
    with its own scratch cache.

    A thread cannot be killed: `abort` fails the unit's future at once and starts a new thread in
    its place, while the abandoned one runs on until its unit returns (its result is dropped) and
    then ends. Use the process executor where units may hang.
    """

    def __init__(self, workers: int = 1, *, model_cache: ModelCache | None = None) -> None:
        self.workers = workers
        self.models = model_cache or worker_cache(None)
        self._queue: queue.Queue[_ThreadUnit | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._abandoned: set[int] = set()  # thread idents whose unit was given up
        self._running: dict[int, Future[bytes]] = {}  # thread ident -> its unit's future
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        for _ in range(self.workers):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._work, name="assetbox-worker", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        scratch: dict[str, Any] = {}
        me = threading.get_ident()
        while True:
            unit = self._queue.get()
            if unit is None:
                return
            with self._lock:  # one step with `abort`: a unit aborted before it started is
                if unit.future.done():  # skipped, one aborted after has its replacement
                    continue
                self._running[me] = unit.future
            try:
                result = run_task(
                    unit.task, scratch, self.models, unit.should_stop, unit.report_step
                )
            except BaseException as exc:
                if not unit.future.done():
                    unit.future.set_exception(exc)
            else:
                if not unit.future.done():
                    unit.future.set_result(result)
            with self._lock:
                self._running.pop(me, None)
                if me in self._abandoned:  # replaced already: leave
                    self._abandoned.discard(me)
                    return

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
        self.start()
        future: Future[bytes] = Future()
        future.set_running_or_notify_cancel()
        self._queue.put(_ThreadUnit(task, should_stop, report_step, future))
        return future

    def abort(self, future: Future[bytes]) -> None:
        with self._lock:
            owner = next((t for t, f in self._running.items() if f is future), None)
            if owner is not None:
                self._abandoned.add(owner)
            if not future.done():
                future.set_exception(Cancelled("the unit did not stop; its worker was abandoned"))
        if owner is not None and not self._closed:
            self._add_thread()

    def begin_close(self) -> None:
        self._closed = True

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:  # daemon threads: a stuck one does not hold the exit
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
