"""RayExecutor: one Ray actor per GPU (or per CPU slot on CPU-only clusters), same worker code.

The actors follow the cluster: every `poll_s` the executor counts the GPUs (or CPU slots) of the
nodes alive and starts an actor for each one it lacks (up to `max_workers`), so a machine that
joins with ``ray start --address=HEAD`` gets units as soon as its actor answers; the actors of a
machine that leaves die with it, and the unit each ran comes back to the engine as `WorkerDied`,
which the engine runs again elsewhere. With `autoscale`, the actors follow the engine's demand
instead (units running and waiting): the executor asks Ray's autoscaler for that many workers'
resources (``ray.autoscaler.sdk.request_resources``), and after `idle_s` without demand it stops
its idle actors and withdraws the request, so that idle nodes can go.

Units go to a free actor, preferring one that ran a unit of the same model last (its cache holds
it), then one on a node that has the model's files. Joined to a cluster by address, workers share
no disk with the head: a unit's input images and models travel through the object store (see
`engine/shipping.py`) and its result comes back as bytes, which the engine alone writes. A local
instance started here runs on this machine and reads the data directory itself.

While a unit runs, a watcher thread relays its step progress and a cancel to the actor every
`WATCH_INTERVAL_S`. Ray is an optional extra, imported only here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assetbox.config import Settings
from assetbox.engine.executors import (
    UnitTask,
    WorkerDied,
    forget_model,
    model_key,
    run_task,
    worker_cache,
)
from assetbox.engine.shipping import NodeFiles, Parcel, Shipper
from assetbox.errors import Cancelled, InvalidInput
from assetbox.models.cache import CacheStats

log = logging.getLogger(__name__)


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
    answer while a unit runs; the executor still sends it one unit at a time. `ship`: its
    files come in parcels into its node's own directory (`ASSETBOX_WORKER_DIR`, read from the
    environment of the machine it runs on), never from the head's.
    """

    def __init__(
        self,
        budget_bytes: int | None,
        cpus_per_worker: float,
        ship: bool,
        settings: Settings | None = None,
    ) -> None:
        import ray

        from assetbox.config import get_settings, pin_settings

        if settings is not None:
            # The head's settings govern the units (quantization, image limits, attempts);
            # where this node keeps its files is its own.
            local = get_settings()
            node_local = ("data_dir", "worker_dir", "shared_models_dir")
            pin_settings(settings.model_copy(update={k: getattr(local, k) for k in node_local}))

        self.node = ray.get_runtime_context().get_node_id()
        node_cpus = next(
            (n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == self.node), 1
        )
        # CPU actors of one machine split its RAM; each GPU actor owns its device's memory.
        self.models = worker_cache(budget_bytes, share=max(1, int(node_cpus // cpus_per_worker)))
        self.cache: dict[str, Any] = {}
        settings = get_settings()
        self.files = (
            NodeFiles(ray, Path(settings.worker_dir), settings.shared_models_dir) if ship else None
        )
        self._stop = threading.Event()
        self._step = (0, 0)

    def ping(self) -> tuple[int, str]:
        return os.getpid(), self.node

    def stats(self) -> CacheStats:
        return self.models.stats()

    def forget(self, model_id: str) -> None:
        forget_model(self.models, model_id)

    def run(self, task: UnitTask, parcel: Parcel | None) -> bytes:
        self._stop.clear()
        self._step = (0, 0)

        def report(step: int, steps: int) -> None:
            self._step = (step, steps)

        try:
            if self.files is not None and parcel is not None:
                task = dataclasses.replace(task, data_dir=str(self.files.unpack(parcel)))
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


@dataclass
class _Slot:
    """One actor: starting (its ping not back yet), idle, or running `unit`."""

    actor: Any
    starting: bool = True
    node: str | None = None
    warm: str | None = None  # the model of the last unit it ran
    unit: Future | None = None
    aborted: bool = False


@dataclass
class _Waiting:
    task: UnitTask
    should_stop: Callable[[], bool]
    report_step: Callable[[int, int], None]
    result: Future = field(default_factory=Future)


class RayExecutor:
    """Actors on a Ray cluster (`address`, or a local instance of `workers` started here)."""

    def __init__(
        self,
        workers: int = 1,
        *,
        address: str | None = None,
        cpus_per_worker: float = 1,
        gpus_per_worker: float | None = None,
        model_cache_bytes: int | None = None,
        max_workers: int | None = None,
        autoscale: bool = False,
        idle_s: float = 60.0,
        poll_s: float = 1.0,
        ship_files: bool | None = None,
        settings: Settings | None = None,
    ) -> None:
        ray = _ray()
        self._ray = ray
        if not ray.is_initialized():
            # ray.init replaces SIGTERM's handler with one that exits at once (status 15): the
            # service's own (uvicorn's graceful shutdown, which requeues running jobs) is put back.
            on_sigterm = signal.getsignal(signal.SIGTERM)
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                cpus = max(workers * cpus_per_worker, os.cpu_count() or 1)
                ray.init(
                    address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False
                )
            if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
                signal.signal(signal.SIGTERM, on_sigterm)
        # A local instance is this machine: it holds `workers` actors and reads the data dir.
        self.max_workers = (
            (workers if address is None else 0) if max_workers is None else max_workers
        )
        self._ship = address is not None if ship_files is None else ship_files
        self._cpus = cpus_per_worker
        self._gpus = gpus_per_worker
        self._budget = model_cache_bytes
        self._settings = settings
        self.autoscale = autoscale
        self.idle_s = idle_s
        self.poll_s = poll_s
        self._actor_classes: dict[float, Any] = {}
        self._shippers: dict[str, Shipper] = {}
        self._node_models: dict[str, set[str]] = {}  # node -> models its disk holds
        self.units_by_node: Counter[str] = Counter()  # units started on each node
        self.workers_lost = 0  # actors that died running a unit (not killed on purpose)
        self._slots: list[_Slot] = []
        self._waiting: deque[_Waiting] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._kicked = False
        self._closed = threading.Event()
        self._demand = 0
        self._busy_at = time.monotonic()  # last time units ran or waited
        self._requested: int | None = None  # workers asked of the autoscaler
        self._reconciled = 0.0
        self._reconcile()
        if not autoscale:  # the first actors answer before any work (those that can start)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(s.starting for s in self._slots):
                with self._cond:
                    self._cond.wait(0.05)
        self._thread = threading.Thread(target=self._loop, name="ray-executor", daemon=True)
        self._thread.start()

    # -- the engine's side ----------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Actors that answered and may take units now (the number changes with the cluster)."""
        with self._cond:
            return sum(1 for s in self._slots if not s.starting)

    def demand(self, units: int) -> None:
        """Units running and waiting (the engine's count); what `autoscale` follows."""
        with self._cond:
            if units > 0:
                self._busy_at = time.monotonic()
            grew = units > self._demand
            self._demand = units
            if grew:
                self._kick()

    def submit(
        self,
        task: UnitTask,
        should_stop: Callable[[], bool],
        report_step: Callable[[int, int], None],
    ) -> Future[bytes]:
        waiting = _Waiting(task, should_stop, report_step)
        with self._cond:
            self._waiting.append(waiting)
            self._kick()
        return waiting.result

    def idle_models(self) -> list[str | None]:
        """The model each idle actor ran last (None: none yet), for the scheduler's affinity."""
        with self._cond:
            return [s.warm for s in self._slots if not s.starting and s.unit is None]

    def abort(self, future: Future[bytes]) -> None:
        """Kill the actor running `future`'s unit (the unit fails with Cancelled); a unit not
        started yet is dropped."""
        with self._cond:
            waiting = next((w for w in self._waiting if w.result is future), None)
            if waiting is not None:
                self._waiting.remove(waiting)
            slot = next((s for s in self._slots if s.unit is future), None)
            if slot is not None:
                slot.aborted = True
        if waiting is not None:
            waiting.result.set_exception(Cancelled("the unit was dropped before it started"))
        elif slot is not None:
            self._ray.kill(slot.actor, no_restart=True)

    def cache_stats(self) -> CacheStats:
        """The actors' model caches, summed (an actor that does not answer in 2 s is left out)."""
        total = CacheStats()
        for actor in self._ready_actors():
            try:
                total = total + self._ray.get(actor.stats.remote(), timeout=2)
            except Exception:  # a dying or stuck actor must not break /metrics or /health
                continue
        return total

    def loaded_models(self) -> list[str]:
        """The models the actors hold."""
        return self.cache_stats().models

    def forget(self, model_id: str) -> None:
        for shipper in list(self._shippers.values()):
            shipper.forget(model_id)
        for actor in self._ready_actors():
            actor.forget.remote(model_id)  # no wait: a busy actor drops it when it is idle

    def start(self) -> None:
        """The actors start in the constructor."""

    def begin_close(self) -> None:
        """No actor is started from now on."""
        with self._cond:
            self._closing = True

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            slots, self._slots = self._slots, []
            waiting, self._waiting = list(self._waiting), deque()
            self._kick()
        self._closed.set()
        for item in waiting:
            item.result.set_exception(Cancelled("the executor closed before the unit started"))
        for slot in slots:
            self._ray.kill(slot.actor)
        if self.autoscale and self._requested:
            self._request(0)

    # -- the executor's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed.is_set():
            with self._cond:
                if not self._kicked:
                    self._cond.wait(timeout=self.poll_s)
                self._kicked = False
            if self._closed.is_set():
                return
            try:
                if time.monotonic() - self._reconciled >= self.poll_s or self._short():
                    self._reconcile()
                self._pump()
            except Exception:  # the executor must outlive a flaky GCS answer
                log.exception("Ray executor pass failed")

    def _kick(self) -> None:
        """Wake the executor's thread (the caller holds `_cond`); a wake-up that comes while
        it is busy is kept for its next wait."""
        self._kicked = True
        self._cond.notify_all()

    def _short(self) -> bool:
        """Units wait and every actor is taken: look for more at once (autoscale)."""
        with self._cond:
            wanted = min(self.max_workers or math.inf, self._demand)
            return self.autoscale and bool(self._waiting) and len(self._slots) < wanted

    def _ready_actors(self) -> list[Any]:
        with self._cond:
            return [s.actor for s in self._slots if not s.starting]

    def _resources(self, nodes: list[dict[str, Any]]) -> tuple[dict[str, float], int]:
        """One actor's resources, and how many actors the alive `nodes` hold."""
        gpus = self._gpus
        if gpus is None:
            gpus = 1.0 if any(n["Resources"].get("GPU", 0) >= 1 for n in nodes) else 0.0
        if gpus:
            per = {"GPU": gpus}
            fits = sum(math.floor(n["Resources"].get("GPU", 0) / gpus) for n in nodes)
        else:
            per = {"CPU": self._cpus}
            fits = sum(math.floor(n["Resources"].get("CPU", 0) / self._cpus) for n in nodes)
        return per, fits

    def _reconcile(self) -> None:
        """Start or stop actors so that their number follows the cluster (or the demand)."""
        self._reconciled = time.monotonic()
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        alive = {n["NodeID"] for n in nodes}
        per, fits = self._resources(nodes)
        cap = self.max_workers or math.inf
        stop: list[_Slot] = []
        with self._cond:
            # Idle actors of a node that left (a busy one's unit fails and removes it).
            gone = [s for s in self._slots if s.node is not None and s.node not in alive]
            for slot in gone:
                if slot.unit is None:
                    self._slots.remove(slot)
                    log.warning(
                        "Ray node gone: its idle worker is dropped", extra={"node": slot.node}
                    )
            if self.autoscale:
                idle_for = time.monotonic() - self._busy_at
                if self._demand > 0:  # actors not yet placed beyond the demand go, not ready ones
                    wanted: int | None = int(min(cap, self._demand))
                    target = max(wanted, sum(1 for s in self._slots if not s.starting))
                elif idle_for >= self.idle_s:
                    target, wanted = 0, 0
                else:
                    target, wanted = len(self._slots), self._requested
            else:
                target, wanted = int(min(cap, fits)), None
            if self._closing:
                target = len(self._slots)
            extra = len(self._slots) - target
            if extra > 0:  # not yet placed first, then idle ones; busy ones finish their unit
                for slot in sorted(self._slots, key=lambda s: not s.starting):
                    if extra and (slot.starting or slot.unit is None):
                        stop.append(slot)
                        extra -= 1
                for slot in stop:
                    self._slots.remove(slot)
            new = max(0, target - len(self._slots))
        for slot in stop:
            self._ray.kill(slot.actor)
        for _ in range(new):
            self._add_actor(per)
        if self.autoscale and wanted is not None and wanted != self._requested:
            self._request(wanted, per)

    def _request(self, workers: int, per: dict[str, float] | None = None) -> None:
        """Ask the autoscaler for `workers` actors' resources (0: withdraw the request)."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(per or {})] * workers if workers else [])
        self._requested = workers

    def _add_actor(self, per: dict[str, float]) -> None:
        options = {"num_gpus": per["GPU"]} if "GPU" in per else {"num_cpus": per["CPU"]}
        key = per.get("GPU", 0.0)
        if key not in self._actor_classes:
            self._actor_classes[key] = self._ray.remote(
                max_restarts=0, max_task_retries=0, max_concurrency=2, **options
            )(_Worker)
        actor = self._actor_classes[key].remote(
            self._budget, self._cpus, self._ship, self._settings
        )
        slot = _Slot(actor)
        with self._cond:
            self._slots.append(slot)

        def answered(ping: Future) -> None:
            with self._cond:
                try:
                    slot.node = ping.result()[1]
                    slot.starting = False
                    log.info("Ray worker ready", extra={"node": slot.node})
                except Exception:  # never placed, or died starting: the next pass replaces it
                    if slot in self._slots:
                        self._slots.remove(slot)
                self._kick()

        actor.ping.remote().future().add_done_callback(answered)

    def _pump(self) -> None:
        """Give waiting units to idle actors."""
        while True:
            with self._cond:
                free = [s for s in self._slots if not s.starting and s.unit is None]
                if not free or not self._waiting:
                    return
                waiting = self._waiting.popleft()
                key = model_key(waiting.task)
                slot = self._pick(free, key)
                slot.unit, slot.warm = waiting.result, key
            if waiting.should_stop():
                self._free(slot)
                waiting.result.set_exception(Cancelled("the job stopped before the unit started"))
                continue
            self._start(slot, waiting, key)

    def _pick(self, free: list[_Slot], key: str | None) -> _Slot:
        warm = [s for s in free if key is not None and s.warm == key]
        near = [s for s in free if key is not None and key in self._node_models.get(s.node, ())]
        return (warm or near or free)[0]

    def _free(self, slot: _Slot) -> None:
        with self._cond:
            slot.unit = None
            self._kick()

    def _start(self, slot: _Slot, waiting: _Waiting, key: str | None) -> None:
        task, result = waiting.task, waiting.result
        try:
            parcel = self._parcel(task) if self._ship else None
            ref_future = slot.actor.run.remote(task, parcel).future()
        except BaseException as exc:
            self._free(slot)
            result.set_exception(exc)
            return
        if slot.node is not None:
            self.units_by_node[slot.node] += 1
            if key is not None:
                self._node_models.setdefault(slot.node, set()).add(key)

        def done(ref_done: Future) -> None:
            error: BaseException | None = None
            value = b""
            try:
                value = ref_done.result()
            except self._ray.exceptions.RayActorError as exc:
                with self._cond:  # it is gone: the next pass starts another where there is room
                    if slot in self._slots:
                        self._slots.remove(slot)
                if slot.aborted:
                    error = Cancelled("the unit did not stop; its Ray worker was killed")
                else:
                    error = WorkerDied(f"Ray worker on node {slot.node} died: {exc}")
                    self.workers_lost += 1
                    log.warning(
                        "Ray worker lost with its unit; the unit runs again",
                        extra={"node": slot.node},
                    )
            except self._ray.exceptions.RayTaskError as exc:
                error = exc.as_instanceof_cause()
            except BaseException as exc:
                error = exc
            # Free the actor before the engine hears of it: it may send the next unit at once.
            self._free(slot)
            if error is None:
                result.set_result(value)
            else:
                result.set_exception(error)

        ref_future.add_done_callback(done)
        threading.Thread(
            target=self._watch,
            args=(slot.actor, ref_future, waiting.should_stop, waiting.report_step),
            name="ray-unit-watch",
            daemon=True,
        ).start()

    def _parcel(self, task: UnitTask) -> Parcel:
        shipper = self._shippers.get(task.data_dir)
        if shipper is None:
            shipper = self._shippers[task.data_dir] = Shipper(self._ray, Path(task.data_dir))
        return shipper.parcel(task.request, task.payload)

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
