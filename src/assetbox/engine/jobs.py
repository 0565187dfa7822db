"""The job model: statuses, errors, progress, events (plain data, no I/O)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field


class JobStatus(StrEnum):
    """``queued → running → succeeded | failed | cancelled``; a running job that is asked to
    stop is ``cancelling`` until its units have stopped (or were abandoned), then
    ``cancelled``. A queued job is cancelled at once."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class UnitStatus(StrEnum):
    """A unit is ``pending`` until a worker takes it, then ``running``, then ``done``/``failed``."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobError(BaseModel):
    code: str
    message: str


class JobProgress(BaseModel):
    done: int = 0  # units finished
    total: int = 0  # units planned (0 until planned)
    step: int = 0  # the step of the unit that reported last
    steps: int = 0
    unit: int | None = None  # which unit `step` belongs to
    resumed: int = 0  # units kept from before a restart


class JobOutput(BaseModel):
    index: int
    path: str
    media_type: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    upload: UploadOutcome | None = None
    nsfw_detected: bool | None = None
    nsfw_score: float | None = None
    nsfw_detections: list[NsfwDetection] = Field(default_factory=list)


class NsfwDetection(BaseModel):
    """One region the content check's detector found (ASSETBOX_NSFW)."""

    label: str = Field(description="NudeNet's class, e.g. FACE_FEMALE or BUTTOCKS_EXPOSED")
    score: float
    box: tuple[int, int, int, int] = Field(description="x, y, width, height in the output")


class UploadOutcome(BaseModel):
    """What happened when an output was PUT to its `upload_urls` entry."""

    url: str
    ok: bool
    status: int | None = None
    error: str | None = None


class Delivery(BaseModel):
    """Where a job's results go besides the store: a webhook and one upload URL per output."""

    webhook_url: str | None = Field(
        default=None, description="POSTed the job's terminal event, signed (HMAC-SHA256)"
    )
    webhook_events: Literal["terminal", "all"] = Field(
        default="terminal",
        description="`all`: every event is POSTed too, in order (each once, no retries); the "
        "terminal one is retried with backoff either way",
    )
    upload_urls: list[str] = Field(default_factory=list)


class WebhookOutcome(BaseModel):
    """The terminal POST's outcome; with `webhook_events: all`, also how far the events got."""

    url: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    last_seq: int | None = Field(default=None, description="last event POSTed (all events)")
    events_failed: int = 0


class Job(BaseModel):
    id: str
    kind: str
    status: JobStatus
    request: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    outputs: list[JobOutput] = Field(default_factory=list)
    error: JobError | None = None
    idempotency_key: str | None = None
    reused_from: str | None = None
    delivery: Delivery | None = None
    webhook: WebhookOutcome | None = None
    # What the kind reports beside its files, e.g. a caption job's captions.
    result: dict[str, Any] | None = None
    priority: int = 1  # PRIORITIES' value: 0 low, 1 normal, 2 high
    api_key: str | None = None  # the id (not the secret) of the API key that submitted it


# A job request's `priority`, as the scheduler ranks it (higher first).
PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
Priority = Literal["low", "normal", "high"]


class Unit(BaseModel):
    job_id: str
    index: int
    status: UnitStatus
    payload: dict[str, Any]
    attempts: int = 0
    error: JobError | None = None
    result_path: str | None = None


class JobEvent(BaseModel):
    """One event of a job; `seq` counts from 1 per job, so a stream resumes with ``since=seq``."""

    job_id: str
    seq: int
    type: str  # "status", "progress", "unit", "output"
    data: dict[str, Any]
    at: datetime
