"""Imported once by the forkserver that local worker processes are forked from
(engine/processes.py), so that every worker starts with the job kinds, torch, spandrel and the
diffusers pipelines already imported: together they take several seconds, which each worker
(and each one started after another was killed) would otherwise pay on its first unit. Nothing
here touches a device."""

from assetbox.engine.planners import planner_for
from assetbox.models.architectures import import_spandrel
from assetbox.pipelines.diffusion import _PIPELINES  # sets HF_HUB_OFFLINE before diffusers


def _preload() -> None:
    import diffusers

    planner_for("simulate")  # imports every job kind
    import_spandrel()
    for name in _PIPELINES.values():  # diffusers imports each pipeline class on first access
        getattr(diffusers, name)


_preload()
