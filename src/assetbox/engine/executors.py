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

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
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


def request_model(request: Mapping[str, Any]) -> str | None:
    """The model a job's request names (its ``model``), or None: what a warm worker holds."""
    model = request.get("model")
    return str(model) if model is not None else None


def model_key(task: UnitTask) -> str | None:
    """The model a unit needs (its request's ``model``), for routing to a warm worker."""
    return request_model(task.request)


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
    """What the engine needs of an executor.

    Optional: ``idle_models() -> list[str | None]``, the model key (`model_key`) each free
    worker last ran, None for a fresh one, in the order the executor hands free workers to a
    unit whose model none of them holds. The engine's scheduler prefers jobs whose model a free
    worker holds (model affinity); an executor without it is taken to have no warm worker.
    Optional: ``demand(units: int)``, told every scheduler pass how many units run and wait
    (queued jobs count one each): an executor that grows with the work (Ray's autoscaling)
    follows it. Its `workers` may then change between passes, so such an executor queues a
    unit sent while none of its workers is free (RayExecutor does).
    """

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


@dataclass
class _ThreadSlot:
    """One worker thread: its inbox, the unit given to it (waiting or running), its model."""

    index: int
    inbox: queue.Queue[_ThreadUnit | None] = field(default_factory=queue.Queue)
    unit: _ThreadUnit | None = None
    warm: str | None = None  # the model of the last unit it took
    thread: threading.Thread | None = None


class ThreadExecutor:
    """`workers` threads in this process sharing one model cache (they share the device), each
    with its own scratch cache. A unit goes to a free thread that ran its model last, else to a
    fresh one, else to any free one (as the process executor routes).

    A thread cannot be killed: `abort` fails the unit's future at once and starts a new thread in
    its place, while the abandoned one runs on until its unit returns (its result is dropped) and
    then ends. Use the process executor where units may hang.
    """

    def __init__(self, workers: int = 1, *, model_cache: ModelCache | None = None) -> None:
        self.workers = workers
        self.models = model_cache or worker_cache(None)
        self._lock = threading.Lock()
        self._slots: list[_ThreadSlot] = []  # the live workers (abandoned ones leave it)
        self._threads: list[threading.Thread] = []  # every thread started, to join at close
        self._names = itertools.count(1)
        self._started = False
        self._closed = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            slots = [self._new_slot() for _ in range(self.workers)]
        for slot in slots:
            assert slot.thread is not None
            slot.thread.start()

    def _new_slot(self) -> _ThreadSlot:
        """A worker (under the lock; its thread is started by the caller, after it)."""
        slot = _ThreadSlot(next(self._names))
        slot.thread = threading.Thread(
            target=self._work, args=(slot,), name=f"assetbox-worker-{slot.index}", daemon=True
        )
        self._slots.append(slot)
        self._threads.append(slot.thread)
        return slot

    def _free(self) -> list[_ThreadSlot]:
        """Free workers (under the lock), fresh ones first: the order a unit of a model none of
        them holds takes them in."""
        return sorted((s for s in self._slots if s.unit is None), key=lambda s: s.warm is not None)

    def _work(self, slot: _ThreadSlot) -> None:
        scratch: dict[str, Any] = {}
        while True:
            unit = slot.inbox.get()
            if unit is None:
                return
            with self._lock:  # one step with `abort`: a unit aborted before it started is
                if unit.future.done():  # skipped (its worker was replaced already)
                    if slot.unit is unit:
                        slot.unit = None
                    if slot not in self._slots:
                        return
                    continue
            error: BaseException | None = None
            result = b""
            try:
                result = run_task(
                    unit.task, scratch, self.models, unit.should_stop, unit.report_step
                )
            except BaseException as exc:
                error = exc
            with self._lock:  # free before the engine hears of it: it may send the next at once
                if slot.unit is unit:
                    slot.unit = None
                abandoned = slot not in self._slots
            with contextlib.suppress(InvalidStateError):  # `abort` may have failed it meanwhile
                if error is not None:
                    unit.future.set_exception(error)
                else:
                    unit.future.set_result(result)
            if abandoned:  # replaced already: leave
                return

    def cache_stats(self) -> CacheStats:
        return self.models.stats()

    def loaded_models(self) -> list[str]:
        """Keys of the resident models (``<model>:<sha>:<engine>``), least recently used first."""
        return self.models.keys()

    def idle_models(self) -> list[str | None]:
        """The model each free worker last ran (None: fresh), fresh ones first."""
        with self._lock:
            return [slot.warm for slot in self._free()]

    def forget(self, model_id: str) -> None:
        forget_model(self.models, model_id)

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        self.start()
        key = model_key(task)
        future: Future[bytes] = Future()
        future.set_running_or_notify_cancel()
        unit = _ThreadUnit(task, should_stop, report_step, future)
        with self._lock:
            free = self._free()
            if not free:
                raise RuntimeError("no free worker: the engine sends at most `workers` units")
            slot = next((s for s in free if key is not None and s.warm == key), free[0])
            slot.unit, slot.warm = unit, key
        slot.inbox.put(unit)
        return future

    def abort(self, future: Future[bytes]) -> None:
        replacement = None
        with self._lock:
            slot = next((s for s in self._slots if s.unit and s.unit.future is future), None)
            if slot is not None:  # abandoned: it ends once its unit returns
                self._slots.remove(slot)
                if not self._closed:
                    replacement = self._new_slot()
            if not future.done():
                future.set_exception(Cancelled("the unit did not stop; its worker was abandoned"))
        if replacement is not None and replacement.thread is not None:
            replacement.thread.start()

    def begin_close(self) -> None:
        self._closed = True

    def close(self, timeout: float = 5.0) -> None:
        self._closed = True
        with self._lock:
            slots, threads = list(self._slots), list(self._threads)
        for slot in slots:
            slot.inbox.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:  # daemon threads: a stuck one does not hold the exit
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
