"""Job kind `load`: put a checkpoint into a worker's model cache ahead of the jobs that use it.

One unit, which takes the checkpoint from the worker's cache as a generate unit would (loading
it on a miss) and releases it at once: the model stays resident until the cache's memory budget
evicts it. Units are routed to a worker that already holds their model, so the generate jobs
that follow go to the worker this one warmed. With several workers, one of them holds it.
No output; the job's success means the checkpoint loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from assetbox.engine.planners import AssembledOutput, UnitContext
from assetbox.kinds.diffusion import checkpoint_lease
from assetbox.models.store import ModelManifest, ModelStore


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="store id of a checkpoint")


class LoadPlanner:
    kind = "load"
    request_model = LoadRequest

    def check(self, request: BaseModel, data_dir: Path) -> None:
        """Raises NotFound (naming ``model``): no such checkpoint in the store."""
        assert isinstance(request, LoadRequest)
        _checkpoint(request, data_dir)

    def fill(self, request: BaseModel) -> BaseModel:
        """A copy, so the engine treats the request as drawn at queueing: with
        ``ASSETBOX_REUSE_RESULTS`` an identical earlier job's outputs stand in for a new job,
        but a load's point is its effect on the worker, which an earlier job does not give."""
        return request.model_copy()

    def plan(self, request: BaseModel, data_dir: Path) -> list[dict[str, Any]]:
        return [{}]

    def run_unit(self, request: BaseModel, payload: dict[str, Any], ctx: UnitContext) -> bytes:
        assert isinstance(request, LoadRequest)
        manifest = _checkpoint(request, ctx.data_dir)
        with checkpoint_lease(manifest, ctx):
            ctx.report_step(1, 1)
        return b""

    def assemble(
        self, request: BaseModel, results: Sequence[bytes], data_dir: Path
    ) -> list[AssembledOutput]:
        return []


def _checkpoint(request: LoadRequest, data_dir: Path) -> ModelManifest:
    return ModelStore(data_dir / "models").get(request.model, "checkpoint", field="model")
