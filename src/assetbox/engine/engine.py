"""The job engine: durable jobs split into units, run by an executor's workers.

One scheduler thread takes the oldest queued job, plans its units once (recorded in SQLite), sends
every unit that is not done yet to the executor, writes each result atomically as it arrives and,
when all are in, assembles the outputs. After a crash, `Engine()` on the same data directory puts
interrupted jobs back in the queue, and only their missing units run again.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, overload

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
from assetbox.engine.executors import Executor, LocalExecutor, UnitTask, worker_cache
from assetbox.engine.jobs import (
    Delivery,
    Job,
    JobError,
    JobEvent,
    JobOutput,
    JobProgress,
    JobStatus,
    UnitStatus,
)
from assetbox.engine.planners import planner_for, request_hash
from assetbox.engine.store import JobStore
from assetbox.errors import AssetboxError, Cancelled, InvalidInput, OutOfMemory, QueueFull
from assetbox.logs import get_logger

log = get_logger("engine")
# Inputs no job refers to (a refused submit's) are deleted at start once this old: a younger one
# may belong to a submit between storing its blob and queueing.
BLOB_GRACE_S = 3600.0

# Errors after which the same unit may well succeed: out of memory (another time, another
# worker) and a worker that died under it. Everything else is the input's fault.
TRANSIENT = (OutOfMemory, ConnectionError, TimeoutError)


class WorkerDied(AssetboxError):
    """The worker running a unit went away (process killed, actor died)."""

    code = "worker_died"


def make_executor(settings: Settings) -> Executor:
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
            model_cache_bytes=settings.model_cache_bytes,
        )
    return LocalExecutor(
        workers=settings.workers, model_cache=worker_cache(settings.model_cache_bytes)
    )


class Engine:
    """Submit, inspect, cancel and wait for jobs. Start it once per process and data directory."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        executor: Executor | None = None,
        start: bool = True,
    ) -> None:
        self.settings = settings or get_settings()
        self.data_dir = Path(self.settings.data_dir)
        self.files = self.data_dir / "jobs"
        self.store = JobStore(self.data_dir / "jobs.sqlite3")
        self.executor = executor or make_executor(self.settings)
        self._cancel: dict[str, threading.Event] = {}
        self._wake = threading.Condition()
        self._closing = threading.Event()
        self._durations: list[float] = []
        self._webhooks: list[threading.Thread] = []
        self._followed: set[str] = set()  # jobs whose every event goes to their webhook
        # Called with (kind, seconds, succeeded) after every unit, e.g. by the metrics.
        self.unit_observers: list[Callable[[str, float, bool], None]] = []
        self.recovered = self.store.requeue_interrupted()
        self._thread = threading.Thread(target=self._loop, name="assetbox-scheduler", daemon=True)
        if start:
            collect_blobs(self.data_dir, self.store.requests(), older_than_s=BLOB_GRACE_S)
            self._thread.start()
            for job_id in self.store.undelivered_webhooks():
                self._deliver_webhook(job_id)  # finished before a crash, never told

    # -- public API -----------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        request: dict[str, Any] | BaseModel,
        *,
        idempotency_key: str | None = None,
        delivery: Delivery | dict[str, Any] | None = None,
    ) -> Job:
        """Validate and queue a job.

        Raises:
            InvalidInput: unknown kind or an invalid request (the field is named).
            Conflict: the idempotency key was used for another request.
            QueueFull: too many queued jobs; `retry_after_s` says when to try again.
        """
        planner = planner_for(kind)
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
        job, new = self.store.create_job(
            kind, validated.model_dump(mode="json"), digest, idempotency_key, delivery
        )
        if new and self.settings.reuse_results and not drawn:  # a random draw is not a repeat
            earlier = self.store.find_reusable(kind, digest)
            if earlier is not None and earlier.id != job.id:
                job = self.store.finish(
                    job.id, JobStatus.SUCCEEDED, outputs=earlier.outputs, reused_from=earlier.id
                )
                self._deliver_webhook(job.id)
        with self._wake:
            self._wake.notify_all()
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
        """Cancel a job: a queued one at once, a running one between steps. Raises NotFound."""
        job = self.store.get(job_id)
        if job.status.is_terminal():
            return job
        self._cancel.setdefault(job_id, threading.Event()).set()
        if job.status == JobStatus.QUEUED:
            cancelled = self.store.finish(job_id, JobStatus.CANCELLED)
            self._deliver_webhook(job_id)
            return cancelled
        return self.wait(job_id, timeout=30)

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

    async def events(self, job_id: str, since: int = 0) -> AsyncIterator[JobEvent]:
        """Events after `since`, as they come, ending after the job's terminal status event."""
        self.store.get(job_id)
        while True:
            for event in self.store.events(job_id, since):
                since = event.seq
                yield event
                if event.type == "status" and JobStatus(event.data["status"]).is_terminal():
                    return
            await asyncio.sleep(0.05)

    def put_blob(self, data: bytes) -> str:
        """Store input bytes once (by content); returns the reference ``sha256:<hex>``."""
        return put_blob(self.data_dir, data)

    def output_path(self, job: Job, index: int) -> Path:
        # A reused job's outputs are the earlier job's files: follow the recorded path.
        return self.data_dir / job.outputs[index].path

    def close(self) -> None:
        """Stop taking jobs; the running one finishes its current units."""
        self._closing.set()
        with self._wake:
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        for thread in self._webhooks:
            thread.join(timeout=30)
        self.executor.close()
        self.store.close()

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
        recent = self._durations[-20:]
        per_job = sum(recent) / len(recent) if recent else 5.0
        return round(max(1.0, per_job * queued / max(self.executor.workers, 1)), 1)

    def _loop(self) -> None:
        while not self._closing.is_set():
            job = self.store.next_queued()
            if job is None:
                with self._wake:
                    self._wake.wait(timeout=0.2)
                continue
            started = time.monotonic()
            peak_before = _peak_rss_mb()
            self._deliver_webhook(job.id)  # webhook_events=all: follow it from its first event
            try:
                self._run(job)
            except Exception as exc:  # the scheduler must outlive any one job
                self.store.finish(
                    job.id,
                    JobStatus.FAILED,
                    error=JobError(code="internal", message=f"{type(exc).__name__}: {exc}"),
                )
            self._deliver_webhook(job.id)
            self._durations.append(time.monotonic() - started)
            finished = self.store.get(job.id)
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
                    "latency_ms": round((time.monotonic() - started) * 1000, 1),
                    "peak_rss_mb": max(peak_before, _peak_rss_mb()),
                    "error": finished.error.code if finished.error else None,
                },
            )
            with self._wake:
                self._wake.notify_all()

    def _run(self, job: Job) -> None:
        planner = planner_for(job.kind)
        request = planner.request_model.model_validate(job.request)
        stop = self._cancel.setdefault(job.id, threading.Event())
        units = self.store.units(job.id)
        if not units:
            try:
                units = self.store.add_units(job.id, planner.plan(request, self.data_dir))
            except AssetboxError as exc:
                self.store.finish(job.id, JobStatus.FAILED, error=_error(exc))
                return
        job_dir = self.files / job.id / "units"
        done = {u.index for u in units if u.status == UnitStatus.DONE and u.result_path}
        done = {i for i in done if (job_dir / f"{i}.bin").is_file()}
        progress = JobProgress(done=len(done), total=len(units), resumed=len(done))
        self.store.set_progress(job.id, progress)
        running: dict[Future[bytes], int] = {}
        todo = [u.index for u in units if u.index not in done]
        payloads = {u.index: u.payload for u in units}

        sent_at: dict[int, float] = {}

        def launch(index: int) -> None:
            attempt = self.store.start_unit(job.id, index)

            def report_step(step: int, steps: int) -> None:
                progress.step, progress.steps = step, steps
                self.store.set_progress(job.id, progress, event=False)

            task = UnitTask(job.kind, job.request, payloads[index], attempt, str(self.data_dir))
            sent_at[index] = time.monotonic()
            running[self.executor.submit(task, stop.is_set, report_step)] = index

        # Keep every worker busy, and no more: units not yet sent can still be cancelled.
        while todo or running:
            while todo and len(running) < self.executor.workers and not stop.is_set():
                launch(todo.pop(0))
            if stop.is_set() and not running:
                self.store.finish(job.id, JobStatus.CANCELLED)
                return
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                index = running.pop(future)
                elapsed = time.monotonic() - sent_at[index]
                for observe in self.unit_observers:
                    observe(job.kind, elapsed, future.exception() is None)
                try:
                    result = future.result()
                except Cancelled:
                    continue
                except Exception as exc:
                    error = _error(exc)
                    attempts = self.store.units(job.id)[index].attempts
                    transient = isinstance(exc, (*TRANSIENT, WorkerDied))
                    retry = transient and attempts < self.settings.unit_max_attempts
                    self.store.fail_unit(job.id, index, error, retry=retry)
                    if retry:
                        todo.insert(0, index)
                        continue
                    stop.set()  # no further units; wait for the running ones, then fail
                    for other in list(running):
                        other.exception()
                    self.store.finish(job.id, JobStatus.FAILED, error=error)
                    return
                path = job_dir / f"{index}.bin"
                write_atomically(path, result)
                self.store.finish_unit(job.id, index, str(path.relative_to(self.data_dir)))
                progress.done += 1
                self.store.set_progress(job.id, progress)
        if stop.is_set():
            self.store.finish(job.id, JobStatus.CANCELLED)
            return
        results = UnitResults([job_dir / f"{i}.bin" for i in range(len(units))])
        try:
            assembled = planner.assemble(request, results, self.data_dir)
        except AssetboxError as exc:
            self.store.finish(job.id, JobStatus.FAILED, error=_error(exc))
            return
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
                )
            )
        if job.delivery and job.delivery.upload_urls:
            files = [self.data_dir / o.path for o in outputs]
            outputs = upload_outputs(outputs, files, job.delivery.upload_urls, self.settings)
        self.store.finish(job.id, JobStatus.SUCCEEDED, outputs=outputs)
        shutil.rmtree(job_dir, ignore_errors=True)  # unit results are only needed until here


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


def _peak_rss_mb() -> float:
    # The process's peak so far (Linux reports KiB): what the job may have pushed it to.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _error(exc: BaseException) -> JobError:
    if isinstance(exc, AssetboxError):
        return JobError(code=exc.code, message=exc.message)
    return JobError(code="internal", message=f"{type(exc).__name__}: {exc}")
