"""Job kind `simulate`: units that wait instead of computing (benchmarks and the engine's tests)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.errors import Cancelled, InvalidInput, OutOfMemory


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
    model: str | None = Field(
        default=None,
        description="a model name the units do not load; executors and the scheduler route by "
        "it as by a real kind's model (model affinity tests and benchmarks)",
    )
    wait_for_file: str | None = Field(
        default=None,
        description="units from `wait_from` on wait for this file to exist before their steps "
        "(stopping when asked): a job held mid-way, e.g. while a test adds a node",
    )
    wait_from: int = Field(default=0, ge=0)
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
        assert isinstance(request, SimulateRequest)
        index = int(payload["index"])
        if index in request.crash_units and request.marker_dir:
            marker = Path(request.marker_dir) / f"crashed-{index}"
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text("crashed once")
                os._exit(17)
        if request.wait_for_file and index >= request.wait_from:
            while not Path(request.wait_for_file).exists():
                if ctx.should_stop():
                    raise Cancelled(f"unit {index} cancelled while it waited")
                time.sleep(0.05)
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
