"""Request and response shapes of the API (named by role: `...Create`, `...Public`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from assetbox.engine.jobs import (
    PRIORITIES,
    Job,
    JobError,
    JobProgress,
    JobStatus,
    NsfwDetection,
    UnitStatus,
    UploadOutcome,
    WebhookOutcome,
)
from assetbox.kinds.caption import CaptionInputs
from assetbox.kinds.diffusion import GenerateOptions
from assetbox.kinds.edit import EditOptions
from assetbox.kinds.upscale import UpscaleOptions

# JobCreate's fields: how the job is run and delivered, not part of the kind's request.
DELIVERY_FIELDS = {"response_format", "webhook_url", "webhook_events", "upload_urls", "priority"}


class JobCreate(BaseModel):
    """The fields every job request has besides its kind's own: how results come back."""

    model_config = ConfigDict(extra="forbid")

    priority: Literal["low", "normal", "high"] = Field(
        default="normal",
        description="with the workers busy, a higher priority's units go first; among equal "
        "priorities workers are shared between API keys, then between jobs",
    )
    response_format: Literal["url", "b64"] = "url"
    webhook_url: str | None = Field(
        default=None, description="POSTed the terminal event, signed (X-Assetbox-Signature)"
    )
    webhook_events: Literal["terminal", "all"] = Field(
        default="terminal", description="`all`: every progress and status event is POSTed too"
    )
    upload_urls: list[str] = Field(
        default_factory=list, description="one per output: each output is PUT there"
    )

    def delivery(self) -> dict | None:
        if self.webhook_url is None and not self.upload_urls:
            return None
        return {
            "webhook_url": self.webhook_url,
            "webhook_events": self.webhook_events,
            "upload_urls": self.upload_urls,
        }


class UpscaleCreate(JobCreate, UpscaleOptions):
    """``POST /v1/upscale`` as JSON; the image is base64 (a ``data:`` URL prefix is fine)."""

    image: str = Field(description="base64 of a PNG, JPEG or WebP, or an http(s) URL of one")

    def options(self) -> dict:
        """The engine request's fields (without the image)."""
        return self.model_dump(exclude={"image", *DELIVERY_FIELDS}, exclude_none=True)


class CaptionCreate(JobCreate, CaptionInputs):
    """``POST /v1/caption``: `images` (base64 or http(s) URLs) → one caption each, or one
    `image` with `tiles` → one caption per tile of its upscaled plan."""

    def options(self) -> dict:
        """The engine request's fields; the images' places are kept for their blobs."""
        return self.model_dump(exclude={"image", *DELIVERY_FIELDS}, exclude_none=True)


class UpscalePlanCreate(BaseModel):
    """``POST /v1/upscale/plan``: the input's size and the grid over its upscaled output."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=1 << 20, description="the input's width")
    height: int = Field(ge=1, le=1 << 20, description="the input's height")
    scale: float = Field(default=2, ge=1, le=8)
    tile: int = Field(default=1024, ge=64, le=4096)
    overlap: int = Field(default=128, ge=0, le=2048)


class TilePublic(BaseModel):
    id: str = Field(description="'row_col'")
    box: list[int] = Field(description="[x, y, width, height] in output pixels")


class UpscalePlanPublic(BaseModel):
    width: int = Field(description="the output's width")
    height: int = Field(description="the output's height")
    rows: int
    cols: int
    tiles: list[TilePublic]


class GenerateCreate(JobCreate, GenerateOptions):
    """``POST /v1/generate``: text to image."""

    def options(self) -> dict:
        return self.model_dump(exclude=DELIVERY_FIELDS, exclude_none=True)


class EditCreate(JobCreate, EditOptions):
    """``POST /v1/edit``: img2img (`image`, `strength`), optionally with a ControlNet (whose
    image, base64 or an http(s) URL, defaults to the input image); or instruction edit
    (`instruction`, `images`) with Qwen-Image-Edit(-Plus) and FLUX.2."""

    image: str | None = Field(
        default=None,
        description="img2img: base64 of a PNG, JPEG or WebP, or an http(s) URL of one",
    )
    images: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="instruction edit: the input images, each base64 or an http(s) URL: 1 for "
        "qwen_image_edit, 1-3 for qwen_image_edit_plus, 1-16 for FLUX.2 (references of weight 1)",
    )

    def options(self) -> dict:
        return self.model_dump(exclude={"image", *DELIVERY_FIELDS}, exclude_none=True)


class OutputPublic(BaseModel):
    index: int
    url: str
    media_type: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    b64: str | None = None
    upload: UploadOutcome | None = None
    nsfw_detected: bool | None = Field(
        default=None,
        description="the content check (ASSETBOX_NSFW) found a flagged class; null when it is off",
    )
    nsfw_score: float | None = Field(
        default=None, description="the highest score of a flagged class (0 when none was found)"
    )
    nsfw_detections: list[NsfwDetection] = Field(
        default_factory=list, description="every region the detector found, flagged or not"
    )


class JobPublic(BaseModel):
    id: str
    kind: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: Literal["low", "normal", "high"] = Field(
        default="normal", description="the priority it was submitted with"
    )
    progress: JobProgress
    outputs: list[OutputPublic] = Field(default_factory=list)
    error: JobError | None = None
    webhook: WebhookOutcome | None = None
    result: dict[str, Any] | None = Field(
        default=None, description="what the job reports beside its files (a caption job's captions)"
    )

    @classmethod
    def from_job(cls, job: Job, outputs: list[OutputPublic]) -> JobPublic:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            priority=next((n for n, v in PRIORITIES.items() if v == job.priority), "normal"),
            progress=job.progress,
            outputs=outputs,
            error=job.error,
            webhook=job.webhook,
            result=job.result,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    limit: int
    offset: int


class UnitPublic(BaseModel):
    """One unit of a job: how far it is, and what it holds when its kind says (tiles)."""

    index: int
    status: UnitStatus
    attempts: int = Field(description="times a worker took it (a retried unit counts each)")
    error: JobError | None = Field(default=None, description="its last failure")
    tiles: list[str] | None = Field(
        default=None,
        description="tile ids (as `/v1/upscale/plan` names them) of a tiled upscale's or a tile "
        "caption job's unit",
    )


class UnitsPublic(BaseModel):
    data: list[UnitPublic] = Field(description="in unit order; empty until the job is planned")
