"""Planners: one per job kind. A planner splits a job into units and assembles their results.

A planner is data plus three functions, run in three places: `plan` when the job starts (in the
engine), `run_unit` on a worker (any process, any machine), `assemble` when every unit is done (in
the engine). Unit payloads and results are plain JSON and bytes, so units travel to Ray workers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from assetbox.errors import Cancelled, InvalidInput
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


class Planner(Protocol):
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


# -- simulate: a kind whose units only wait ------------------------------------------------------


class SimulateRequest(BaseModel):
    """Units that sleep instead of computing, as a GPU-bound unit leaves the host idle.

    Used by bench/scheduler.py and the engine's tests; each unit's result is deterministic.
    """

    units: int = Field(default=4, ge=1, le=100_000)
    unit_seconds: float = Field(default=0.0, ge=0, le=3600)
    steps: int = Field(default=1, ge=1, le=1000)
    fail_units: list[int] = Field(default_factory=list, description="fail permanently")
    flaky_units: list[int] = Field(
        default_factory=list, description="fail with a transient error on their first attempt"
    )
    crash_units: list[int] = Field(
        default_factory=list,
        description="kill their worker process (os._exit) on the first attempt; Ray tests",
    )
    marker_dir: str | None = Field(
        default=None, description="where crash_units record their first attempt"
    )
    stuck_units: list[int] = Field(
        default_factory=list,
        description="block for an hour without a step or a look at cancellation, as a forward "
        "pass that never returns does",
    )


class SimulatePlanner:
    kind = "simulate"
    request_model = SimulateRequest

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        assert isinstance(request, SimulateRequest)
        return [{"index": i} for i in range(request.units)]

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        from assetbox.errors import OutOfMemory

        assert isinstance(request, SimulateRequest)
        index = int(payload["index"])
        if index in request.crash_units and request.marker_dir:
            marker = Path(request.marker_dir) / f"crashed-{index}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("crashed once")
                import os

                os._exit(17)
        if index in request.stuck_units:
            time.sleep(3600)
        if index in request.fail_units:
            raise InvalidInput(f"unit {index} is set to fail", field="fail_units")
        if index in request.flaky_units and ctx.attempt == 1:
            raise OutOfMemory(f"unit {index} fails on its first attempt")
        for step in range(request.steps):
            if ctx.should_stop():
                raise Cancelled(f"unit {index} cancelled at step {step}")
            if request.unit_seconds:
                time.sleep(request.unit_seconds / request.steps)
            ctx.report_step(step + 1, request.steps)
        return hashlib.sha256(f"unit {index}".encode()).digest()

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        return [AssembledOutput(b"".join(results), "application/octet-stream", "bin")]


PLANNERS: dict[str, Planner] = {SimulatePlanner.kind: SimulatePlanner()}


def planner_for(kind: str) -> Planner:
    """Raises InvalidInput for an unknown kind."""
    if not any(k != "simulate" for k in PLANNERS):
        from assetbox.engine.diffusion import EditPlanner, GeneratePlanner
        from assetbox.engine.upscale import UpscalePlanner  # registers the real kinds

        for planner in (UpscalePlanner(), GeneratePlanner(), EditPlanner()):
            PLANNERS.setdefault(planner.kind, planner)
    if kind not in PLANNERS:
        raise InvalidInput(
            f"`kind` must be one of {', '.join(sorted(PLANNERS))} but is {kind!r}", field="kind"
        )
    return PLANNERS[kind]
