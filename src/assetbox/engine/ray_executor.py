"""RayExecutor: one Ray actor per GPU (or per CPU slot on CPU-only clusters), same worker code.

Units go to a free actor, preferring one that ran a unit of the same model last (its cache holds
the model). An actor that dies is replaced, and its unit comes back to the engine as
`WorkerDied`, which the engine retries. While a unit runs, a watcher thread relays its step
progress and a cancel to the actor every `WATCH_INTERVAL_S`. Ray is an optional extra, imported
only here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from assetbox.engine.executors import (
    UnitTask,
    WorkerDied,
    forget_model,
    model_key,
    run_task,
    worker_cache,
)
from assetbox.errors import Cancelled, InvalidInput
from assetbox.models.cache import CacheStats


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise InvalidInput(
            "ASSETBOX_EXECUTOR=ray needs Ray: pip install 'assetbox[ray]'", field="executor"
        ) from exc
    return ray


class _Worker:
    """The actor's body: runs units with caches that live as long as the actor.

    The actor is threaded (`max_concurrency=2`) so that `stats`, `progress` and `cancel`
    answer while a unit runs; the executor still sends it one unit at a time.
    """

    def __init__(self, budget_bytes: int | None, share: int) -> None:
        self.cache: dict[str, Any] = {}
        self.models = worker_cache(budget_bytes, share=share)
        self._stop = threading.Event()
        self._step = (0, 0)

    def ping(self) -> int:
        return os.getpid()

    def stats(self) -> CacheStats:
        return self.models.stats()

    def forget(self, model_id: str) -> None:
        forget_model(self.models, model_id)

    def run(self, task: UnitTask) -> bytes:
        self._stop.clear()
        self._step = (0, 0)

        def report(step: int, steps: int) -> None:
            self._step = (step, steps)

        try:
            return run_task(task, self.cache, self.models, self._stop.is_set, report)
        finally:
            self._step = (0, 0)  # no stale progress for the next unit's watcher

    def progress(self) -> tuple[int, int]:
        """(step, steps) of the running unit."""
        return self._step

    def cancel(self) -> None:
        """Stop the running unit at its next step."""
        self._stop.set()


WATCH_INTERVAL_S = 0.2  # how often a running unit's progress and cancellation are relayed


class RayExecutor:
    """`workers` actors on a Ray cluster (`address`, or a local instance started here)."""

    def __init__(
        self,
        workers: int = 1,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1,
        model_cache_bytes: int | None = None,
    ) -> None:
        ray = _ray()
        self._ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                cpus = max(workers * cpus_per_worker, os.cpu_count() or 1)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        options = {"num_gpus": 1} if gpus >= 1 else {"num_cpus": cpus_per_worker}
        self._actor_class = ray.remote(
            max_restarts=0, max_task_retries=0, max_concurrency=2, **options
        )(_Worker)
        # CPU actors on one machine split its RAM; each GPU actor owns its device's memory.
        self._actor_args = (model_cache_bytes, workers)
        self.workers = workers
        self._lock = threading.Lock()
        self._actors = [self._actor_class.remote(*self._actor_args) for _ in range(workers)]
        self._busy = [False] * workers
        self._running: list[Future | None] = [None] * workers  # each slot's unit
        self._aborted: set[int] = set()  # slots whose actor was killed on purpose
        self._warm: list[str | None] = [None] * workers
        ray.get([actor.ping.remote() for actor in self._actors])  # all started before work

    def _pick(self, key: str | None) -> int:
        free = [i for i, busy in enumerate(self._busy) if not busy]
        if not free:
            raise RuntimeError("no free Ray worker: the engine sends at most `workers` units")
        warm = [i for i in free if key is not None and self._warm[i] == key]
        return (warm or free)[0]

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        key = model_key(task)
        with self._lock:
            slot = self._pick(key)
            self._busy[slot] = True
            self._warm[slot] = key
            actor = self._actors[slot]
        result: Future[bytes] = Future()
        with self._lock:
            self._running[slot] = result
        try:
            ref_future = actor.run.remote(task).future()
        except BaseException:
            with self._lock:
                self._busy[slot], self._running[slot] = False, None
            raise

        def done(ref_done: Future) -> None:
            error: BaseException | None = None
            value = b""
            with self._lock:  # an abort that came after the unit ended leaves no mark
                aborted = slot in self._aborted
                self._aborted.discard(slot)
            try:
                value = ref_done.result()
            except self._ray.exceptions.RayActorError as exc:
                with self._lock:  # replace the dead actor before the unit is retried
                    self._actors[slot] = self._actor_class.remote(*self._actor_args)
                    self._warm[slot] = None
                error = (
                    Cancelled("the unit did not stop; its Ray worker was killed")
                    if aborted
                    else WorkerDied(f"Ray worker {slot} died: {exc}")
                )
            except self._ray.exceptions.RayTaskError as exc:
                error = exc.as_instanceof_cause()
            except BaseException as exc:
                error = exc
            # Free the slot before the engine hears of it: it may send the next unit at once.
            with self._lock:
                self._busy[slot] = False
                self._running[slot] = None
            if error is None:
                result.set_result(value)
            else:
                result.set_exception(error)

        ref_future.add_done_callback(done)
        threading.Thread(
            target=self._watch,
            args=(actor, ref_future, should_stop, report_step),
            name="ray-unit-watch",
            daemon=True,
        ).start()
        return result

    def _watch(
        self,
        actor: Any,
        running: Future,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> None:
        """While a unit runs: relay its step progress, and a cancel to the actor."""
        last = (0, 0)
        cancelled = False
        while not running.done():
            try:
                if should_stop() and not cancelled:
                    actor.cancel.remote()
                    cancelled = True
                step = tuple(self._ray.get(actor.progress.remote(), timeout=5))
            except Exception:  # the actor died or is busy: the unit's own future tells
                step = last
            if step != last and step[1]:
                report_step(*step)
                last = step
            try:
                running.result(timeout=WATCH_INTERVAL_S)
            except Exception:  # not done yet (TimeoutError), or failed: checked above
                continue

    def cache_stats(self) -> CacheStats:
        """The actors' model caches, summed (an actor that does not answer in 2 s is left out)."""
        with self._lock:
            actors = list(self._actors)
        total = CacheStats()
        for actor in actors:
            try:
                total = total + self._ray.get(actor.stats.remote(), timeout=2)
            except Exception:  # a dying or stuck actor must not break /metrics or /health
                continue
        return total

    def loaded_models(self) -> list[str]:
        """The models the actors hold."""
        return self.cache_stats().models

    def forget(self, model_id: str) -> None:
        with self._lock:
            actors = list(self._actors)
        for actor in actors:
            actor.forget.remote(model_id)  # no wait: a busy actor drops it when it is idle

    def start(self) -> None:
        """The actors start in the constructor."""

    def begin_close(self) -> None:
        """Nothing to do: dead actors are replaced only when a unit of theirs ends."""

    def abort(self, future: Future[bytes]) -> None:
        """Kill the actor running `future`'s unit; it is replaced, and the unit fails with
        Cancelled."""
        with self._lock:
            slot = next((i for i, f in enumerate(self._running) if f is future), None)
            if slot is None:
                return
            self._aborted.add(slot)
            actor = self._actors[slot]
        self._ray.kill(actor, no_restart=True)

    def close(self, timeout: float = 5.0) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
