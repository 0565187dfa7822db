"""ProcessExecutor: one process per worker, so a unit that will not stop dies with its process.

Why processes (see docs/DESIGN-NOTES.md): a unit stuck inside one forward pass (a long CUDA
kernel, a ten-minute convolution on a CPU) never reaches its next step, and a Python thread
cannot be stopped from outside. A process can be killed, the operating system takes back its
memory (GPU memory included), and a new one takes its place while the service goes on; cog and
the Ray executor have the same shape.

Parent and child talk over a pipe in small tuples:

    parent -> child   ("run", serial, UnitTask) | ("cancel", serial) | ("stats", token)
                      | ("forget", model_id) | ("exit",)
    child -> parent   ("step", serial, step, steps) | ("done", serial, bytes)
                      | ("error", serial, AssetboxError) | ("stats", token, CacheStats)

The child runs its unit on a thread, so a cancel or a stats request is answered while the unit
runs. In the parent, one thread per worker starts its process, sends and receives, relays a cancel
when the engine's `should_stop` turns true, and starts a new process when one dies or is killed.
On machines without an NVIDIA device, workers are forked from a forkserver that imported torch,
diffusers and the job kinds once (engine/preload.py and the kinds' modules), so a replacement
is ready in milliseconds; with one, each worker is spawned afresh, since CUDA must not be
touched before a fork.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for
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
from assetbox.errors import AssetboxError, Cancelled
from assetbox.logs import get_logger
from assetbox.models.cache import CacheStats

log = get_logger("workers")

YOUNG_S = 10.0  # a worker that dies sooner without a word is restarted with a back-off
POLL_S = 0.05  # how often a worker's thread looks at its pipe, outbox and the unit's cancel
STATS_TIMEOUT_S = 2.0
PRELOAD = ["assetbox.engine.preload"]


def nvidia_present() -> bool:
    """Whether this machine has an NVIDIA device, judged from /dev without touching CUDA."""
    dev = Path("/dev")
    return (dev / "nvidiactl").exists() or any(dev.glob("nvidia[0-9]*"))


def start_method(choice: str) -> str:
    if choice != "auto":
        return choice
    return "spawn" if nvidia_present() else "forkserver"


def _visible_gpus() -> list[str]:
    """Device ids a worker may be given (CUDA_VISIBLE_DEVICES, else what nvidia-smi lists)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    if not nvidia_present() or shutil.which("nvidia-smi") is None:
        return []
    try:  # nvidia-smi, not torch: the parent should not initialise CUDA for a count
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process is started with (plain data: it is pickled to the child)."""

    index: int
    settings: Settings
    environment: dict[str, str]
    threads: int | None
    budget_bytes: int | None
    share: int  # workers on this machine's CPU
    gpu_share: int  # workers on this worker's GPU
    json_logs: bool


def worker_specs(settings: Settings, workers: int, json_logs: bool) -> list[WorkerSpec]:
    """One spec per worker: GPUs dealt round-robin (each worker sees one), the model-cache
    budget (per device) and the CPU threads split between the workers that share them."""
    gpus = _visible_gpus()
    threads = settings.worker_threads or max(1, (os.cpu_count() or 1) // workers)
    specs = []
    for index in range(workers):
        environment = dict(os.environ)
        gpu_share = 1
        budget = settings.model_cache_bytes
        if gpus:
            device = gpus[index % len(gpus)]
            environment["CUDA_VISIBLE_DEVICES"] = device
            gpu_share = sum(1 for i in range(workers) if gpus[i % len(gpus)] == device)
            budget = budget // gpu_share if budget else None
        elif budget:
            budget //= workers
        specs.append(
            WorkerSpec(
                index=index,
                settings=settings,
                environment=environment,
                threads=threads,
                budget_bytes=budget,
                share=workers,
                gpu_share=gpu_share,
                json_logs=json_logs,
            )
        )
    return specs


# -- the child ------------------------------------------------------------------------------------


def _portable(exc: BaseException) -> BaseException:
    """An error that pickles and unpickles: ours and Python's own (ConnectionError and
    TimeoutError are retried) as they are, anything else as its type and message."""
    if isinstance(exc, AssetboxError):
        return exc
    if type(exc).__module__ == "builtins" and isinstance(exc, Exception):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            pass
    return AssetboxError(f"{type(exc).__name__}: {exc}")


def worker_main(conn: Any, spec: WorkerSpec) -> None:
    """A worker process's body: serve the parent's messages until it says exit or goes away."""
    # The parent decides when workers stop: Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked from the forkserver, the environment is the forkserver's: take the parent's (and
    # this worker's GPU) before anything reads it.
    os.environ.clear()
    os.environ.update(spec.environment)
    from assetbox.config import pin_settings

    pin_settings(spec.settings)
    if spec.json_logs:
        from assetbox.logs import configure_json_logs

        configure_json_logs()
    if spec.threads:
        try:
            import torch

            torch.set_num_threads(spec.threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
    models = worker_cache(spec.budget_bytes, share=spec.share, gpu_share=spec.gpu_share)
    scratch: dict[str, Any] = {}
    send_lock = threading.Lock()
    current: list[tuple[int, threading.Event] | None] = [None]

    def send(message: tuple) -> None:
        try:
            with send_lock:
                conn.send(message)
        except OSError:
            os._exit(0)  # the parent is gone

    def run(serial: int, task: UnitTask, stop: threading.Event) -> None:
        message: tuple
        try:
            result = run_task(
                task,
                scratch,
                models,
                stop.is_set,
                lambda step, steps: send(("step", serial, step, steps)),
            )
            message = ("done", serial, result)
        except BaseException as exc:
            message = ("error", serial, _portable(exc))
        # Before the answer: the parent may send the next unit as soon as it has it.
        if current[0] is not None and current[0][0] == serial:
            current[0] = None
        try:
            send(message)
        except Exception as exc:  # e.g. an error whose state does not pickle
            send(("error", serial, AssetboxError(f"{type(exc).__name__}: {exc}")))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone (killed): nobody wants our results
        match message:
            case ("run", int(serial), UnitTask() as task):
                stop = threading.Event()
                current[0] = (serial, stop)
                threading.Thread(
                    target=run, args=(serial, task, stop), name="unit", daemon=True
                ).start()
            case ("cancel", int(serial)):
                running = current[0]
                if running is not None and running[0] == serial:
                    running[1].set()
            case ("stats", str(token)):
                send(("stats", token, models.stats()))
            case ("forget", str(model_id)):
                forget_model(models, model_id)
            case ("exit",):
                os._exit(0)


# -- the parent -----------------------------------------------------------------------------------


@dataclass
class _Unit:
    serial: int
    task: UnitTask
    future: Future[bytes]
    should_stop: Callable[[], bool]
    report_step: Callable[[int, int], None]
    sent: bool = False  # to the process; an aborted unit never is
    cancel_sent: bool = False
    aborted: bool = False


@dataclass
class _Slot:
    spec: WorkerSpec
    outbox: queue.Queue[tuple] = field(default_factory=queue.Queue)
    unit: _Unit | None = None
    warm: str | None = None  # the model of the last unit it ran
    process: Any = None
    ready: bool = False
    answered: bool = False  # its current process has sent something
    stats: dict[str, Future[CacheStats]] = field(default_factory=dict)
    thread: threading.Thread | None = None
    # A pipe that wakes the worker's thread when there is something to send (a unit, a stats
    # request), so it need not wait out its poll: 50 ms a unit otherwise.
    wake: tuple[int, int] = field(default_factory=lambda: os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))

    def nudge(self) -> None:
        # Full: it is awake anyway; closed: shutting down.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.wake[1], b"!")


class ProcessExecutor:
    """`workers` worker processes on this machine, each with its own model cache."""

    def __init__(
        self,
        settings: Settings,
        workers: int | None = None,
        *,
        json_logs: bool = False,
        preload: Sequence[str] = (),
    ) -> None:
        """`preload`: modules the forkserver imports before it forks workers (the job kinds)."""
        self.workers = workers or settings.workers
        self._method = start_method(settings.worker_start)
        self._context = multiprocessing.get_context(self._method)
        if self._method == "forkserver":
            # Takes effect when this process starts its forkserver (once); a later call with
            # the same list is harmless. The forkserver inherits this environment.
            self._context.set_forkserver_preload([*PRELOAD, *preload])
            if json_logs:
                os.environ["ASSETBOX_WORKER_JSON_LOGS"] = "1"
            else:  # an earlier engine of this process may have set it (children inherit it)
                os.environ.pop("ASSETBOX_WORKER_JSON_LOGS", None)
        self._slots = [_Slot(spec) for spec in worker_specs(settings, self.workers, json_logs)]
        self._lock = threading.Lock()
        self._serials = itertools.count(1)
        self._started = False
        self._closed = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        for slot in self._slots:
            slot.thread = threading.Thread(
                target=self._keep_alive,
                args=(slot,),
                name=f"assetbox-worker-{slot.spec.index}",
                daemon=True,
            )
            slot.thread.start()

    def begin_close(self) -> None:
        """From now on a worker that dies is not replaced (shutdown has begun)."""
        self._closed.set()

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker: idle ones exit at once; any still running a unit after
        `timeout` seconds (the engine asked them to stop already) are killed."""
        self._closed.set()
        for slot in self._slots:
            slot.outbox.put(("exit",))
            slot.nudge()
        deadline = time.monotonic() + timeout  # one deadline for all, not one each
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        alive = [s.process for s in self._slots if s.process is not None and s.process.is_alive()]
        for process in alive:
            process.kill()
        for process in alive:
            process.join(timeout=2)
        for slot in self._slots:
            if slot.thread is None or not slot.thread.is_alive():
                for fd in slot.wake:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    # -- units ------------------------------------------------------------------------------

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
        with self._lock:
            free = self._free()
            if not free:
                raise RuntimeError("no free worker: the engine sends at most `workers` units")
            slot = next((s for s in free if key is not None and s.warm == key), free[0])
            unit = _Unit(next(self._serials), task, future, should_stop, report_step)
            slot.unit, slot.warm = unit, key
        slot.nudge()
        return future

    def _free(self) -> list[_Slot]:
        """Free workers (under the lock) in the order a unit of a model none of them holds takes
        them: a running process before one starting, a fresh one before one holding a model."""
        free = [s for s in self._slots if s.unit is None]
        return sorted(free, key=lambda s: (not s.ready, s.warm is not None))

    def idle_models(self) -> list[str | None]:
        """The model each free worker last ran (None: fresh), in `_free`'s order."""
        with self._lock:
            return [slot.warm for slot in self._free()]

    def abort(self, future: Future[bytes]) -> None:
        with self._lock:
            slot = next((s for s in self._slots if s.unit and s.unit.future is future), None)
            if slot is None or slot.unit is None:
                return
            slot.unit.aborted = True
            process = slot.process
        log.warning(
            "killing a worker whose unit did not stop",
            extra={"worker": slot.spec.index, "pid": getattr(process, "pid", None)},
        )
        if process is not None and process.is_alive():
            process.kill()  # its thread sees the pipe close, fails the unit, starts a new one
        else:
            self._finish(slot, error=Cancelled("the unit was abandoned"))

    # -- the models -------------------------------------------------------------------------

    def cache_stats(self) -> CacheStats:
        """The workers' caches, summed (a worker that is starting or does not answer within
        2 s is left out)."""
        asks = []
        for slot in self._slots:
            if not slot.ready:
                continue
            token = uuid.uuid4().hex
            answer: Future[CacheStats] = Future()
            slot.stats[token] = answer
            slot.outbox.put(("stats", token))
            slot.nudge()
            asks.append((slot, token, answer))
        total = CacheStats()
        for slot, token, answer in asks:
            try:
                total = total + answer.result(timeout=STATS_TIMEOUT_S)
            except FutureTimeout:
                pass
            finally:
                slot.stats.pop(token, None)
        return total

    def loaded_models(self) -> list[str]:
        return self.cache_stats().models

    def forget(self, model_id: str) -> None:
        for slot in self._slots:
            slot.outbox.put(("forget", model_id))
            slot.nudge()

    # -- one worker's thread ----------------------------------------------------------------

    def _keep_alive(self, slot: _Slot) -> None:
        """Start the worker's process, serve it, and start another when it goes away; a
        worker that keeps dying young is restarted ever more slowly (up to a minute apart)."""
        young_deaths = 0
        while not self._closed.is_set():
            born = time.monotonic()
            try:
                answered = self._live_once(slot)  # fails the unit of a process that went away
            except Exception:  # never leave a slot without its thread
                log.exception("worker thread failed", extra={"worker": slot.spec.index})
                self._fail_unit(slot, WorkerDied(f"worker {slot.spec.index} went away"))
                answered = False
            if answered or time.monotonic() - born > YOUNG_S:
                young_deaths = 0
                continue
            young_deaths += 1
            delay = min(60.0, 0.5 * 2**young_deaths)
            log.error(
                "worker process died young; restarting later",
                extra={"worker": slot.spec.index, "deaths": young_deaths, "delay_s": delay},
            )
            self._closed.wait(delay)

    def _live_once(self, slot: _Slot) -> bool:
        """One process's life: start it, serve it until it goes away; returns whether it ever
        answered (a worker that dies before that is dying young)."""
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(child_end, slot.spec),
            name=f"assetbox-worker-{slot.spec.index}",
            daemon=True,  # never outlives the service, even when it exits without close()
        )
        try:
            process.start()
        except Exception:
            log.exception("cannot start a worker process", extra={"worker": slot.spec.index})
            return False
        finally:
            child_end.close()
        slot.process, slot.ready, slot.answered = process, True, False
        try:
            self._serve(slot, process, parent_end)
        finally:
            slot.ready = False
            parent_end.close()
            if process.is_alive() and self._closed.is_set():
                process.kill()
            process.join(timeout=5)
            for answer in list(slot.stats.values()):
                if not answer.done():
                    answer.set_exception(WorkerDied("the worker went away"))
            slot.warm = None  # a new process holds no model
            unit = slot.unit
            if unit is not None:
                self._fail_unit(
                    slot,
                    Cancelled("the unit did not stop; its worker was killed")
                    if unit.aborted
                    else WorkerDied(
                        f"worker {slot.spec.index} exited (code {process.exitcode}) during a unit"
                    ),
                )
        return slot.answered

    def _serve(self, slot: _Slot, process: Any, conn: Any) -> None:
        while True:
            try:
                while True:
                    message = slot.outbox.get_nowait()
                    conn.send(message)
                    if message == ("exit",):
                        process.join(timeout=2)
                        return
            except queue.Empty:
                pass
            except OSError:
                return  # the process is gone
            unit = slot.unit
            try:
                if unit is not None and not unit.sent:
                    # Sent from here, and only while it is still this slot's unit: a unit
                    # aborted before its process was up never reaches one.
                    unit.sent = True
                    conn.send(("run", unit.serial, unit.task))
                if unit is not None and not unit.cancel_sent and unit.should_stop():
                    unit.cancel_sent = True
                    conn.send(("cancel", unit.serial))
                ready = wait_for([conn, slot.wake[0]], timeout=POLL_S)
                if slot.wake[0] in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(slot.wake[0], 4096)
                if conn in ready:
                    message = conn.recv()
                    slot.answered = True
                    self._receive(slot, message)
                elif not ready and not process.is_alive():
                    return
            except (EOFError, OSError):
                return

    def _receive(self, slot: _Slot, message: tuple) -> None:
        unit = slot.unit
        match message:
            case ("step", int(serial), int(step), int(steps)):
                if unit is not None and unit.serial == serial:
                    try:
                        unit.report_step(step, steps)
                    except Exception:  # progress is not worth losing the unit over
                        log.exception("step report failed", extra={"worker": slot.spec.index})
            case ("done", int(serial), bytes() as result):
                if unit is not None and unit.serial == serial:
                    self._finish(slot, result=result)
            case ("error", int(serial), BaseException() as error):
                if unit is not None and unit.serial == serial:
                    self._finish(slot, error=error)
            case ("stats", str(token), CacheStats() as stats):
                answer = slot.stats.get(token)
                if answer is not None and not answer.done():
                    answer.set_result(stats)

    def _fail_unit(self, slot: _Slot, error: BaseException) -> None:
        if slot.unit is not None:
            self._finish(slot, error=error)

    def _finish(
        self, slot: _Slot, *, result: bytes | None = None, error: BaseException | None = None
    ) -> None:
        # Free the slot before the engine hears of it: it may send the next unit at once.
        with self._lock:
            unit, slot.unit = slot.unit, None
        if unit is None or unit.future.done():
            return
        if error is not None:
            unit.future.set_exception(error)
        else:
            assert result is not None
            unit.future.set_result(result)
