"""What a job kind gives the engine: a planner splits a job into units and assembles their
results. The kinds themselves live in `assetbox.kinds` and are handed to the engine.

A planner is data plus three functions, run in three places: `plan` when the job starts (in the
engine), `run_unit` on a worker (any process, any machine), `assemble` when every unit is done (in
the engine). Unit payloads and results are plain JSON and bytes, so units travel to Ray workers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from assetbox.models.cache import ModelCache


@dataclass
class UnitContext:
    """What a running unit may use: progress per step, cancellation, the worker's caches.

    `models` holds loaded models under the memory budget (shared by the device's workers);
    `cache` is the worker's own scratch (e.g. the decoded input image).
    """

    report_step: Callable[[int, int], None]
    should_stop: Callable[[], bool]
    cache: dict[str, Any]
    models: ModelCache
    attempt: int = 1
    data_dir: Path = Path(".")  # where the job's input blobs live


@dataclass(frozen=True)
class AssembledOutput:
    data: bytes
    media_type: str
    extension: str
    width: int | None = None
    height: int | None = None
    timings_ms: dict[str, float] | None = None
    seed: int | None = None
    # Shown on the job itself as its `result` (e.g. captions), beside the file; at most one of a
    # job's outputs carries it.
    summary: dict[str, Any] | None = None
    # The content check (ASSETBOX_NSFW, pipelines/nsfw.py); None when it is off. Detections are
    # {label, score, box: [x, y, w, h]}, every class NudeNet found, flagged or not.
    nsfw_detected: bool | None = None
    nsfw_score: float | None = None
    nsfw_detections: tuple[dict[str, Any], ...] = ()


class Planner(Protocol):
    """The three steps every kind has. Optional methods, found with `getattr`: ``check(request,
    data_dir)`` (refusals at submit), ``fill(request)`` (draws at queueing, e.g. seeds) and
    ``describe_unit(request, payload) -> dict`` (what a unit holds in the kind's own terms, shown
    by ``GET /v1/jobs/{id}/units``, e.g. ``{"tiles": [ids]}``; it must not fail for a payload its
    `plan` made)."""

    kind: str
    request_model: type[BaseModel]

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        """Unit payloads for a validated request."""
        ...

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        """Compute one unit. Raises Cancelled when `ctx.should_stop()` turns true."""
        ...

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        """Outputs from every unit's result, in unit order."""
        ...


def request_hash(kind: str, request: BaseModel) -> str:
    """Canonical hash of a validated request (defaults filled in, keys sorted)."""
    canonical = json.dumps(
        {"kind": kind, "request": request.model_dump(mode="json")}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
