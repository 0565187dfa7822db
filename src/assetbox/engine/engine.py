"""The job engine: durable jobs split into units, run by an executor's workers.

One scheduler thread owns the running jobs. It takes queued jobs as workers come free, plans each
job's units once (recorded in SQLite, planning on a thread of its own), hands units to free
workers by priority, then with a fair share between API keys, then between jobs (the job with
the fewest units running goes first, so a one-unit job gets a worker within about one unit's time
however long the others are), writes
each result atomically as it arrives and, when all are in, assembles the outputs (again on a
thread of its own). After a crash, `Engine()` on the same data directory puts interrupted jobs
back in the queue, and only their missing units run again.

Stopping is durable and bounded: a cancel is recorded at once (`cancelling`), running units are
asked to stop at their next step, and any still running `cancel_grace_s` later are abandoned with
their worker (the process executor kills the process and starts another). `close()` (SIGTERM,
SIGINT) stops taking units, asks running ones to stop, abandons them after `shutdown_grace_s`
and puts their jobs back in the queue, to resume at the next start.
"""

from __future__ import annotations

import asyncio
import queue
import resource
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from pydantic import BaseModel, ValidationError

from assetbox.atomic_files import write_atomically
from assetbox.config import Settings, get_settings
from assetbox.engine.blobs import collect_blobs, put_blob
from assetbox.engine.delivery import (
    check_delivery,
    send_webhook,
    upload_outputs,
    webhook_secret,
)
from assetbox.engine.executors import (
    Executor,
    ThreadExecutor,
    UnitTask,
    WorkerDied,
    request_model,
    worker_cache,
)
from assetbox.engine.jobs import (
    PRIORITIES,
    Delivery,
    Job,
    JobError,
    JobEvent,
    JobOutput,
    JobProgress,
    JobStatus,
    NsfwDetection,
    Priority,
    Unit,
    UnitStatus,
)
from assetbox.engine.owner import DataDirOwner
from assetbox.engine.planners import AssembledOutput, Planner, request_hash
from assetbox.engine.store import JobStore
from assetbox.errors import AssetboxError, Cancelled, InvalidInput, OutOfMemory, QueueFull
from assetbox.logs import get_logger
from assetbox.pipelines import nsfw

log = get_logger("engine")
# Inputs no job refers to (a refused submit's) are deleted at start once this old: a younger one
# may belong to a submit between storing its blob and queueing.
BLOB_GRACE_S = 3600.0

# After an abort, how long the executor has to resolve the abandoned units' futures.
ABORT_WAIT_S = 10.0
# Errors after which the same unit may well succeed: out of memory (another time, another
# worker) and a worker that died under it. Everything else is the input's fault.
TRANSIENT = (OutOfMemory, ConnectionError, TimeoutError)
# Model affinity: a job whose model a free worker holds ranks as this many units fewer in flight.
AFFINITY_BONUS = 1


def make_executor(settings: Settings, planners: Mapping[str, Planner]) -> Executor:
    """The executor the settings ask for.

    Raises:
        InvalidInput: the ray executor without Ray installed.
    """
    if settings.executor == "ray":
        from assetbox.engine.ray_executor import RayExecutor

        return RayExecutor(
            workers=settings.workers,
            address=settings.ray_address,
            cpus_per_worker=settings.ray_cpus_per_worker,
            gpus_per_worker=settings.ray_gpus_per_worker,
            model_cache_bytes=settings.model_cache_bytes,
            max_workers=settings.ray_max_workers or None,
            autoscale=settings.ray_autoscale,
            idle_s=settings.ray_idle_s,
            settings=settings,
        )
    if settings.executor == "thread":
        return ThreadExecutor(
            workers=settings.workers, model_cache=worker_cache(settings.model_cache_bytes)
        )
    from assetbox.engine.processes import ProcessExecutor
    from assetbox.logs import json_logs_configured

    # Worker processes import the kinds' modules once, before they are forked.
    preload = sorted({type(planner).__module__ for planner in planners.values()})
    return ProcessExecutor(settings, json_logs=json_logs_configured(), preload=preload)


Outcome = Literal["cancel", "fail", "shutdown"]


@dataclass
class _Run:
    """A job the scheduler is running: its units, which of them run where, what is left."""

    job: Job
    planner: Planner
    request: Any  # the validated request, once planned
    started: float
    peak_before: float
    phase: Literal["planning", "running", "assembling"] = "planning"
    todo: list[int] = field(default_factory=list)
    running: dict[Future[bytes], int] = field(default_factory=dict)
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    progress: JobProgress = field(default_factory=JobProgress)
    # Set once the job must stop taking units (cancelled, failed, shutting down): running units
    # see it through `should_stop` and stop at their next step.
    stop: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    error: JobError | None = None
    stop_asked_at: float | None = None
    aborted: bool = False
    ended: bool = False
    last_step_event: float = 0.0
    last_served: float = float("-inf")  # when it was last given a worker (never: -inf)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask_stop(self, outcome: Outcome, error: JobError | None = None) -> None:
        if self.outcome is None:
            self.outcome, self.error = outcome, error
        elif outcome == "cancel" and self.outcome == "shutdown":
            self.outcome = "cancel"  # a cancel during shutdown still ends the job
        if self.stop_asked_at is None:
            self.stop_asked_at = time.monotonic()
        self.stop.set()


class Engine:
    """Submit, inspect, cancel and wait for jobs. Start it once per process and data directory."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        planners: Mapping[str, Planner],
        executor: Executor | None = None,
        start: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        # ASSETBOX_NSFW without its extra is refused here, at start, not at the first output.
        nsfw.require(self.settings)
        self.planners = dict(planners)
        self.data_dir = Path(self.settings.data_dir)
        self.files = self.data_dir / "jobs"
        # Only an engine that runs jobs owns the directory (and may requeue what it finds).
        self._owner = DataDirOwner(self.data_dir) if start else None
        self.store = JobStore(self.data_dir / "jobs.sqlite3")
        self.executor = executor or make_executor(self.settings, self.planners)
        self._runs: dict[str, _Run] = {}  # owned by the scheduler thread
        # What the scheduler hears of: ("unit", run, future), ("planned", run, units | error),
        # ("assembled", run, outputs | error), ("cancel", job_id), ("wake",).
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._wake = threading.Condition()
        self._closing = threading.Event()
        self._durations: deque[float] = deque(maxlen=20)
        self._webhooks: list[threading.Thread] = []
        self._followed: set[str] = set()  # jobs whose every event goes to their webhook
        # Called with (kind, seconds, succeeded) after every unit, e.g. by the metrics.
        self.unit_observers: list[Callable[[str, float, bool], None]] = []
        self.recovered = self.store.requeue_interrupted() if start else []
        self._thread = threading.Thread(target=self._loop, name="assetbox-scheduler", daemon=True)
        self._closing_at: float | None = None
        if start:
            collect_blobs(self.data_dir, self.store.requests(), older_than_s=BLOB_GRACE_S)
            self.executor.start()
            self._thread.start()
            for job_id in self.store.undelivered_webhooks():
                self._deliver_webhook(job_id)  # finished before a crash, never told

    # -- public API -----------------------------------------------------------------------------

    def planner_for(self, kind: str) -> Planner:
        """Raises InvalidInput for a kind this engine was not given."""
        if kind not in self.planners:
            raise InvalidInput(
                f"`kind` must be one of {', '.join(sorted(self.planners))} but is {kind!r}",
                field="kind",
            )
        return self.planners[kind]

    def submit(
        self,
        kind: str,
        request: dict[str, Any] | BaseModel,
        *,
        idempotency_key: str | None = None,
        delivery: Delivery | dict[str, Any] | None = None,
        priority: Priority = "normal",
        api_key: str | None = None,
    ) -> Job:
        """Validate and queue a job. `priority` ranks it against other jobs (higher first);
        `api_key` is the id of the key that sent it, for the fair share between keys and
        `max_running_jobs_per_key`.

        Raises:
            InvalidInput: unknown kind or an invalid request (the field is named).
            Conflict: the idempotency key was used for another request.
            QueueFull: too many queued jobs; `retry_after_s` says when to try again.
        """
        planner = self.planner_for(kind)
        try:
            validated = planner.request_model.model_validate(
                request.model_dump() if isinstance(request, BaseModel) else request
            )
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc) from exc
        check = getattr(planner, "check", None)
        if check is not None:  # what needs the store (models exist, families match)
            check(validated, self.data_dir)
        if delivery is not None and not isinstance(delivery, Delivery):
            try:
                delivery = Delivery.model_validate(delivery)
            except ValidationError as exc:
                raise InvalidInput.from_validation(exc, default_field="delivery") from exc
        if delivery is not None:
            check_delivery(delivery, self.settings)
        digest = request_hash(kind, validated)
        fill = getattr(planner, "fill", None)
        drawn = False
        if fill is not None:  # what is drawn at queueing (seeds), after hashing the request
            filled = fill(validated)
            drawn, validated = filled is not validated, filled
        if idempotency_key is None:
            queued = self.store.count(JobStatus.QUEUED)
            if queued >= self.settings.max_queued_jobs:
                raise QueueFull(
                    f"{queued} jobs are queued (ASSETBOX_MAX_QUEUED_JOBS="
                    f"{self.settings.max_queued_jobs})",
                    retry_after_s=self._retry_after(queued),
                )
        if priority not in PRIORITIES:
            raise InvalidInput(
                f"`priority` must be one of low, normal, high but is {priority!r}",
                field="priority",
            )
        job, new = self.store.create_job(
            kind,
            validated.model_dump(mode="json"),
            digest,
            idempotency_key,
            delivery,
            priority=PRIORITIES[priority],
            api_key=api_key,
        )
        if new and self.settings.reuse_results and not drawn:  # a random draw is not a repeat
            earlier = self.store.find_reusable(kind, digest)
            if earlier is not None and earlier.id != job.id:
                job = self.store.finish(
                    job.id,
                    JobStatus.SUCCEEDED,
                    outputs=earlier.outputs,
                    reused_from=earlier.id,
                    result=earlier.result,
                )
                self._deliver_webhook(job.id)
        self._inbox.put(("wake",))
        return job

    def get(self, job_id: str) -> Job:
        """Raises NotFound."""
        return self.store.get(job_id)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first."""
        return self.store.list(status=status, kind=kind, limit=limit, offset=offset)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job. The cancel is recorded before this returns: a queued job is
        ``cancelled`` at once, a running one ``cancelling`` until its units have stopped at their
        next step (or, after `cancel_grace_s`, were abandoned with their workers); a restarted
        engine never runs it again. A finished job is returned as it is.

        Raises:
            NotFound: no such job.
        """
        before = self.store.get(job_id).status
        job = self.store.request_cancel(job_id)
        if before == JobStatus.QUEUED and job.status == JobStatus.CANCELLED:
            self._deliver_webhook(job_id)
            with self._wake:
                self._wake.notify_all()
        elif job.status == JobStatus.CANCELLING or job_id in self._runs:
            self._inbox.put(("cancel", job_id))
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it is terminal, or as it is when `timeout` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job.status.is_terminal():
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return job
            with self._wake:
                self._wake.wait(timeout=0.05 if left is None else min(0.05, left))

    def units(self, job_id: str) -> list[tuple[Unit, dict[str, Any]]]:
        """The job's units in order (none before it is planned), each with what its kind says
        the unit holds: the planner's optional ``describe_unit(request, payload)`` (e.g. the
        tile ids of a tiled upscale's batch), else nothing.

        Raises:
            NotFound: no such job.
        """
        job = self.store.get(job_id)
        units = self.store.units(job_id)
        describe = getattr(self.planners.get(job.kind), "describe_unit", None)
        if describe is None or not units:
            return [(unit, {}) for unit in units]
        request = self.planners[job.kind].request_model.model_validate(job.request)
        return [(unit, describe(request, unit.payload)) for unit in units]

    async def events(self, job_id: str, since: int = 0) -> AsyncIterator[JobEvent]:
        """Events after `since`, as they come, ending after the job's terminal status event
        (or when the engine closes: a client resumes with ``since`` at the next start)."""
        self.store.get(job_id)
        while True:
            for event in self.store.events(job_id, since):
                since = event.seq
                yield event
                if event.type == "status" and JobStatus(event.data["status"]).is_terminal():
                    return
            if self._closing.is_set():
                return
            await asyncio.sleep(0.05)

    def put_blob(self, data: bytes) -> str:
        """Store input bytes once (by content); returns the reference ``sha256:<hex>``."""
        return put_blob(self.data_dir, data)

    def output_path(self, job: Job, index: int) -> Path:
        # A reused job's outputs are the earlier job's files: follow the recorded path.
        return self.data_dir / job.outputs[index].path

    def begin_close(self) -> None:
        """Start stopping without waiting (e.g. from a signal handler): no further units go
        out, running ones are asked to stop, event streams end. `close` finishes the job."""
        self._closing.set()
        self.executor.begin_close()  # workers that die from now on are not replaced
        self._inbox.put(("wake",))

    def close(self) -> None:
        """Stop: take no more units, ask running ones to stop at their next step, abandon any
        still running after `shutdown_grace_s` (killing their worker processes), and put their
        jobs back in the queue (they resume at the next start, finished units kept). Returns
        within a few seconds of the grace period whatever the units do."""
        self.begin_close()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.shutdown_grace_s + 5)
        self.executor.close(timeout=1.0)
        deadline = time.monotonic() + 2.0  # webhooks not sent by then go out at the next start
        for thread in self._webhooks:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self.store.close()
        if self._owner is not None:
            self._owner.release()

    # -- delivery -------------------------------------------------------------------------------

    def _terminal_payload(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(job_id)
        terminal = [e for e in self.store.events(job_id) if e.type == "status"][-1]
        return {
            "job_id": job.id,
            "kind": job.kind,
            "status": job.status.value,
            "outputs": [o.model_dump(mode="json") for o in job.outputs],
            "error": job.error.model_dump() if job.error else None,
            "event": terminal.model_dump(mode="json"),
        }

    def _deliver_webhook(self, job_id: str) -> None:
        """Send a job's webhook on its own thread (retries must not hold the queue).

        `webhook_events: terminal` sends the finished job once. `all` starts (once per job and
        process, when the job starts or is cancelled while queued) a follower that POSTs every
        event in order, then the finished job; it records the last event sent, so after a
        restart it goes on from there (the job is queued again and followed when it runs).
        """
        job = self.store.get(job_id)
        if not (job.delivery and job.delivery.webhook_url):
            return
        url = job.delivery.webhook_url
        secret = webhook_secret(self.settings, self.data_dir)
        if job.delivery.webhook_events == "all":
            with self._wake:
                if job_id in self._followed:
                    return
                self._followed.add(job_id)
            target = lambda: self._follow_events(job_id, url, secret)  # noqa: E731
        elif job.status.is_terminal():
            payload = self._terminal_payload(job_id)
            target = lambda: self.store.set_webhook(  # noqa: E731
                job_id, send_webhook(url, payload, secret, self.settings)
            )
        else:
            return
        thread = threading.Thread(target=target, name=f"webhook-{job_id[:8]}", daemon=True)
        self._webhooks = [t for t in self._webhooks if t.is_alive()]
        self._webhooks.append(thread)
        thread.start()

    def _follow_events(self, job_id: str, url: str, secret: bytes) -> None:
        try:
            self._follow(job_id, url, secret)
        except Exception:  # a store or network surprise must not pass silently
            log.exception("webhook follower stopped", extra={"job_id": job_id})
        finally:
            with self._wake:
                self._followed.discard(job_id)

    def _follow(self, job_id: str, url: str, secret: bytes) -> None:
        job = self.store.get(job_id)
        since = (job.webhook.last_seq or 0) if job.webhook else 0
        failed = job.webhook.events_failed if job.webhook else 0
        while True:
            for event in self.store.events(job_id, since):
                since = event.seq
                if event.type == "status" and JobStatus(event.data["status"]).is_terminal():
                    outcome = send_webhook(
                        url, self._terminal_payload(job_id), secret, self.settings
                    )
                    self.store.set_webhook(
                        job_id,
                        outcome.model_copy(update={"last_seq": since, "events_failed": failed}),
                    )
                    return
                # Progress is not worth a retry: the next event supersedes it.
                payload = {
                    "job_id": job_id,
                    "kind": job.kind,
                    "event": event.model_dump(mode="json"),
                }
                sent = send_webhook(url, payload, secret, self.settings, retry=False)
                failed += not sent.ok
                self.store.set_webhook(
                    job_id, sent.model_copy(update={"last_seq": since, "events_failed": failed})
                )
            if self._closing.is_set():
                return  # the next start follows on from `last_seq`
            if self.store.get(job_id).status.is_terminal() and not any(
                True for _ in self.store.events(job_id, since)
            ):
                return  # its terminal event went out before (an earlier follower)
            time.sleep(0.1)

    # -- scheduling -----------------------------------------------------------------------------

    def _retry_after(self, queued: int) -> float:
        recent = list(self._durations)
        per_job = sum(recent) / len(recent) if recent else 5.0
        return round(max(1.0, per_job * queued / max(self.executor.workers, 1)), 1)

    def _loop(self) -> None:
        while True:
            try:
                item: tuple[Any, ...] | None = self._inbox.get(timeout=0.1)
            except queue.Empty:
                item = None
            while item is not None:
                self._handle(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            try:
                if self._closing.is_set():
                    if self._wind_down():
                        return
                else:
                    self._abandon_overdue(self.settings.cancel_grace_s)
                    self._dispatch()
            except Exception:  # the scheduler must outlive any one job's surprise
                log.exception("scheduler pass failed")
            with self._wake:
                self._wake.notify_all()

    def _handle(self, item: tuple[Any, ...]) -> None:
        match item:
            case ("unit", _Run() as run, Future() as future):
                step = self._unit_done
                args: tuple[Any, ...] = (run, future)
            case ("planned", _Run() as run, result):
                step, args = self._planned, (run, result)
            case ("assembled", _Run() as run, result):
                step, args = self._assembled, (run, result)
            case ("cancel", str(job_id)):
                run = self._runs.get(job_id)
                if run is None:
                    return
                step, args = self._cancelled, (run,)
            case _:
                return
        try:
            step(*args)
        except Exception as exc:  # the scheduler must outlive any one job
            log.exception("scheduler step failed", extra={"job_id": run.job.id})
            self._fail_run(run, exc)

    def _fail_run(self, run: _Run, exc: BaseException) -> None:
        """Fail a job after a surprise in its handling: its running units are stopped (and
        abandoned after the grace) like any failure's, so no worker is left double-booked."""
        run.ask_stop("fail", _error(exc))
        try:
            self._settle(run)
        except Exception:
            log.exception("cannot settle a failed job", extra={"job_id": run.job.id})
            if not run.running:
                self._runs.pop(run.job.id, None)

    # Fair share: every free worker goes to the best-ranked job: the highest priority first;
    # among equals, the job whose API key has the fewest units in flight (a key with one job is
    # not starved by a key with twenty); then the job with the fewest units in flight, then the
    # one served least recently (round robin), then the oldest. A queued job ranks as a job
    # with none in flight that was never served, so it is taken (planned) as soon as a worker
    # frees up if it ranks above every running job's next unit, even with one worker behind a
    # long job; while it plans, that worker waits for it (planning takes a moment, a unit of
    # the long job may take a minute). One job plans at a time. A key at
    # `max_running_jobs_per_key` running jobs has its queued ones wait. Model affinity: a job
    # whose model a free worker holds (the executor's optional `idle_models`) counts as
    # AFFINITY_BONUS unit fewer in flight, though never fewer than none, and each launch uses up
    # one free worker's model. So a warm worker keeps its job where it would tie or lose by one
    # unit, yet a job with nothing in flight still ranks level with it (round robin decides):
    # affinity saves a model load, it never starves a job.
    def _dispatch(self) -> None:
        demand = getattr(self.executor, "demand", None)
        if demand is not None:  # an executor that grows with the work (Ray's autoscaling)
            waiting = sum(len(r.running) + len(r.todo) for r in self._runs.values())
            demand(waiting + self.store.count(JobStatus.QUEUED))
        free = self.executor.workers - sum(len(r.running) for r in self._runs.values())
        idle_models = getattr(self.executor, "idle_models", None)
        warm = list(idle_models()) if idle_models is not None and free > 0 else []
        while free > 0:
            in_flight: dict[str | None, int] = {}
            jobs_of: dict[str | None, int] = {}
            for r in self._runs.values():
                in_flight[r.job.api_key] = in_flight.get(r.job.api_key, 0) + len(r.running)
                jobs_of[r.job.api_key] = jobs_of.get(r.job.api_key, 0) + 1

            def rank(
                job: Job, running: int, last_served: float, load: dict[str | None, int] = in_flight
            ) -> tuple[Any, ...]:
                key_load = load.get(job.api_key, 0)
                model = request_model(job.request)
                if model is not None and model in warm:
                    running = max(running - AFFINITY_BONUS, 0)
                return (-job.priority, key_load, running, last_served, job.created_at, job.id)

            candidates = [
                r
                for r in self._runs.values()
                if not r.stop.is_set()
                and ((r.phase == "running" and r.todo) or r.phase == "planning")
            ]
            best = min(
                candidates,
                key=lambda r: rank(r.job, len(r.running), r.last_served),
                default=None,
            )
            planning = any(r.phase == "planning" for r in self._runs.values())
            if not planning:
                limit = self.settings.max_running_jobs_per_key
                heads = [
                    job
                    for job in self.store.queued_heads()  # a read; the write only to take one
                    if not limit or jobs_of.get(job.api_key, 0) < limit
                ]
                head = min(heads, key=lambda j: rank(j, 0, float("-inf")), default=None)
                if head is not None and (
                    best is None
                    or rank(head, 0, float("-inf"))
                    < rank(best.job, len(best.running), best.last_served)
                ):
                    job = self.store.next_queued(head.id)
                    if job is not None:
                        try:
                            self._activate(job)
                        except Exception as exc:  # e.g. a kind this version no longer has
                            self._runs.pop(job.id, None)
                            self.store.finish(job.id, JobStatus.FAILED, error=_error(exc))
                    continue  # it is a candidate now (planning)
            if best is None or best.phase == "planning":
                return  # the worker waits for the job that plans
            self._launch(best, best.todo.pop(0))
            best.last_served = time.monotonic()
            free -= 1
            if warm:  # the worker it takes: one of its model's, else the executor's first pick
                model = request_model(best.job.request)
                warm.remove(model if model in warm else warm[0])

    def _activate(self, job: Job) -> None:
        run = _Run(
            job=job,
            planner=self.planner_for(job.kind),
            request=None,
            started=time.monotonic(),
            peak_before=_peak_rss_mb(),
        )
        self._runs[job.id] = run
        threading.Thread(
            target=self._plan, args=(run,), name=f"plan-{job.id[:8]}", daemon=True
        ).start()
        try:
            self._deliver_webhook(job.id)  # webhook_events=all: follow it from its first event
        except Exception:  # delivery is best effort here; the terminal one is retried
            log.exception("cannot start the webhook follower", extra={"job_id": job.id})

    def _plan(self, run: _Run) -> None:
        """On a thread of its own (planning may decode a big image): the request and units."""
        try:
            run.request = run.planner.request_model.model_validate(run.job.request)
            units = self.store.units(run.job.id)
            if not units:
                payloads = run.planner.plan(run.request, self.data_dir)
                units = self.store.add_units(run.job.id, payloads)
            result: Any = units
        except Exception as exc:
            result = exc
        self._inbox.put(("planned", run, result))

    def _planned(self, run: _Run, result: Any) -> None:
        if run.ended:
            return
        if isinstance(result, BaseException):
            self._end(run, JobStatus.FAILED, error=_error(result))
            return
        job_dir = self.files / run.job.id / "units"
        done = {u.index for u in result if u.status == UnitStatus.DONE and u.result_path}
        done = {i for i in done if (job_dir / f"{i}.bin").is_file()}
        run.payloads = {u.index: u.payload for u in result}
        run.todo = [u.index for u in result if u.index not in done]
        run.progress = JobProgress(done=len(done), total=len(result), resumed=len(done))
        run.phase = "running"
        self.store.set_progress(run.job.id, run.progress)
        self._settle(run)

    def _launch(self, run: _Run, index: int) -> None:
        job = run.job

        def report_step(step: int, steps: int) -> None:
            self._report_step(run, index, step, steps)

        try:
            attempt = self.store.start_unit(job.id, index)
            task = UnitTask(
                run.planner, job.request, run.payloads[index], attempt, str(self.data_dir)
            )
            run.sent_at[index] = time.monotonic()
            future = self.executor.submit(task, run.stop.is_set, report_step)
        except Exception as exc:  # a store or an executor that cannot take it: fail cleanly
            run.todo.insert(0, index)
            self._fail_run(run, exc)
            return
        run.running[future] = index
        future.add_done_callback(lambda done: self._inbox.put(("unit", run, done)))

    def _report_step(self, run: _Run, index: int, step: int, steps: int) -> None:
        """A unit's step (on an executor's thread): an event at most `progress_events_per_s`
        times a second per job, and always for a unit's last step."""
        with run.lock:
            if run.ended:
                return
            run.progress.step, run.progress.steps, run.progress.unit = step, steps, index
            now = time.monotonic()
            interval = 1.0 / self.settings.progress_events_per_s
            if step < steps and now - run.last_step_event < interval:
                return
            run.last_step_event = now
            # Under the lock: `_end` marks the run ended under it too, so no step event can
            # follow the job's terminal one.
            self.store.set_progress(run.job.id, run.progress.model_copy())

    def _unit_done(self, run: _Run, future: Future[bytes]) -> None:
        index = run.running.pop(future, None)
        if index is None or run.ended:
            return
        job = run.job
        elapsed = time.monotonic() - run.sent_at.pop(index, time.monotonic())
        exc = future.exception()
        for observe in self.unit_observers:
            observe(job.kind, elapsed, exc is None)
        if exc is None:
            path = self.files / job.id / "units" / f"{index}.bin"
            write_atomically(path, future.result())
            self.store.finish_unit(job.id, index, str(path.relative_to(self.data_dir)))
            with run.lock:
                run.progress.done += 1
                snapshot = run.progress.model_copy()
            self.store.set_progress(job.id, snapshot)
        # A unit that stopped because its job asked it to is no failure: the job ends (or is
        # requeued) once nothing of it runs.
        elif not (isinstance(exc, Cancelled) and run.outcome is not None):
            self._unit_failed(run, index, exc)
        self._settle(run)

    def _unit_failed(self, run: _Run, index: int, exc: BaseException) -> None:
        """Retry a transient failure (until the attempt limit); anything else fails the job."""
        error = _error(exc)
        attempts = self.store.units(run.job.id)[index].attempts
        transient = isinstance(exc, (*TRANSIENT, WorkerDied))
        retry = transient and attempts < self.settings.unit_max_attempts
        retry = retry and not run.stop.is_set()
        self.store.fail_unit(run.job.id, index, error, retry=retry)
        if retry:
            run.todo.insert(0, index)
        else:
            run.ask_stop("fail", error)  # no further units; the running ones stop

    def _cancelled(self, run: _Run) -> None:
        run.ask_stop("cancel")
        self._settle(run)

    def _settle(self, run: _Run) -> None:
        """End, requeue or assemble a job once nothing of it runs."""
        if run.ended or run.running:
            return
        if run.outcome == "cancel":
            self._end(run, JobStatus.CANCELLED)
        elif run.outcome == "fail":
            self._end(run, JobStatus.FAILED, error=run.error)
        elif run.outcome == "shutdown":
            self._requeue(run)  # a plan or an assembly still under way is dropped with it
        elif run.phase == "running" and not run.todo:
            run.phase = "assembling"
            threading.Thread(
                target=self._assemble, args=(run,), name=f"assemble-{run.job.id[:8]}", daemon=True
            ).start()

    def _assemble(self, run: _Run) -> None:
        """On a thread of its own (an 8K image takes a while): outputs written, uploads done."""
        job = run.job
        try:
            units = len(run.payloads)
            job_dir = self.files / job.id / "units"
            results = UnitResults([job_dir / f"{i}.bin" for i in range(units)])
            assembled = run.planner.assemble(run.request, results, self.data_dir)
            outputs = self._write_outputs(job, assembled)
            if job.delivery and job.delivery.upload_urls:
                files = [self.data_dir / o.path for o in outputs]
                outputs = upload_outputs(outputs, files, job.delivery.upload_urls, self.settings)
            summary = next((a.summary for a in assembled if a.summary is not None), None)
            result: Any = (outputs, summary)
        except Exception as exc:
            result = exc
        self._inbox.put(("assembled", run, result))

    def _write_outputs(self, job: Job, assembled: list[AssembledOutput]) -> list[JobOutput]:
        outputs = []
        for n, item in enumerate(assembled):
            path = self.files / job.id / "outputs" / f"{n}.{item.extension}"
            write_atomically(path, item.data)
            outputs.append(
                JobOutput(
                    index=n,
                    path=str(path.relative_to(self.data_dir)),
                    media_type=item.media_type,
                    width=item.width,
                    height=item.height,
                    seed=item.seed,
                    timings_ms=item.timings_ms or {},
                    nsfw_detected=item.nsfw_detected,
                    nsfw_score=item.nsfw_score,
                    nsfw_detections=[NsfwDetection(**d) for d in item.nsfw_detections],
                )
            )
        return outputs

    def _assembled(self, run: _Run, result: Any) -> None:
        if run.ended:
            return
        if run.outcome is not None:
            self._settle(run)  # cancelled or shutting down while assembling
        elif isinstance(result, BaseException):
            self._end(run, JobStatus.FAILED, error=_error(result))
        else:
            outputs, summary = result
            self._end(run, JobStatus.SUCCEEDED, outputs=outputs, result=summary)
            # unit results are only needed until here
            shutil.rmtree(self.files / run.job.id / "units", ignore_errors=True)

    def _abandon_overdue(self, grace_s: float) -> None:
        """Units still running `grace_s` after their job asked them to stop are abandoned with
        their workers (the executor kills and replaces them); their futures fail at once."""
        now = time.monotonic()
        for run in list(self._runs.values()):
            if run.stop_asked_at is None or not run.running:
                continue
            if run.aborted and now - run.stop_asked_at >= grace_s + ABORT_WAIT_S:
                # The executor never resolved the aborted units: stop waiting for them.
                log.error(
                    "aborted units never came back; the job ends without them",
                    extra={"job_id": run.job.id, "units": sorted(run.running.values())},
                )
                run.running.clear()
                self._settle(run)
                continue
            if not run.aborted and now - run.stop_asked_at >= grace_s:
                run.aborted = True
                log.warning(
                    "abandoning units that did not stop",
                    extra={"job_id": run.job.id, "units": sorted(run.running.values())},
                )
                for future in list(run.running):
                    self.executor.abort(future)

    def _wind_down(self) -> bool:
        """One scheduler pass while closing; True once no job runs any more."""
        if self._closing_at is None:
            self._closing_at = time.monotonic()
            for run in list(self._runs.values()):
                run.ask_stop("shutdown")
                self._settle(run)
        self._abandon_overdue(self.settings.shutdown_grace_s)
        if time.monotonic() - self._closing_at > self.settings.shutdown_grace_s + 2:
            for run in list(self._runs.values()):  # an executor that never answered
                run.running.clear()
                self._settle(run)
        return not self._runs

    def _requeue(self, run: _Run) -> None:
        with run.lock:
            run.ended = True
        self._runs.pop(run.job.id, None)
        if self.store.requeue(run.job.id, "shutdown"):
            log.info(
                "job requeued at shutdown",
                extra={"job_id": run.job.id, "kind": run.job.kind, "done": run.progress.done},
            )

    def _end(
        self,
        run: _Run,
        status: JobStatus,
        *,
        outputs: list[JobOutput] | None = None,
        error: JobError | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        with run.lock:
            if run.ended:
                return
            run.ended = True
        job = run.job
        self._runs.pop(job.id, None)
        finished = self.store.finish(job.id, status, outputs=outputs, error=error, result=result)
        self._deliver_webhook(job.id)
        self._durations.append(time.monotonic() - run.started)
        log.info(
            "job finished",
            extra={
                "job_id": job.id,
                "kind": job.kind,
                "status": finished.status.value,
                "model": job.request.get("model"),
                "seed": job.request.get("seed"),
                "units": finished.progress.total,
                "resumed": finished.progress.resumed,
                "latency_ms": round((time.monotonic() - run.started) * 1000, 1),
                "peak_rss_mb": max(run.peak_before, _peak_rss_mb()),
                "error": finished.error.code if finished.error else None,
                **generation_fields(job.request, finished.outputs, finished.error),
            },
        )


class UnitResults(Sequence[bytes]):
    """Unit results read from their files one at a time, so assembling a big job never holds
    every unit's result in memory at once."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [path.read_bytes() for path in self._paths[index]]
        return self._paths[index].read_bytes()


def generation_fields(
    request: dict[str, Any], outputs: Sequence[JobOutput], error: JobError | None = None
) -> dict[str, Any]:
    """What the log line of a finished job says of the generation (the generation API's
    fields): ``prompt`` (a job of one prompt: the text; of several: the list; an instruction
    edit's instruction), ``model_id``, ``vram_peak_mb`` (the largest output's peak on CUDA; null
    off CUDA) and ``nsfw_detected`` (any output flagged, or the job blocked for it; null with
    the check off). Read from the request's and outputs' common fields, so that the engine
    still knows no kind."""
    prompts = request.get("prompts") or request.get("instruction")
    if isinstance(prompts, list) and len(prompts) == 1:
        prompts = prompts[0]
    peaks = [o.timings_ms["peak_vram_mb"] for o in outputs if "peak_vram_mb" in o.timings_ms]
    checked = [o.nsfw_detected for o in outputs if o.nsfw_detected is not None]
    if error is not None and error.code == "nsfw_blocked":  # no output is stored then
        checked.append(True)
    return {
        "prompt": prompts,
        "model_id": request.get("model"),
        "vram_peak_mb": max(peaks) if peaks else None,
        "nsfw_detected": any(checked) if checked else None,
    }


def _peak_rss_mb() -> float:
    # The process's peak so far (Linux reports KiB): what the job may have pushed it to.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _error(exc: BaseException) -> JobError:
    if isinstance(exc, AssetboxError):
        return JobError(code=exc.code, message=exc.message)
    return JobError(code="internal", message=f"{type(exc).__name__}: {exc}")
