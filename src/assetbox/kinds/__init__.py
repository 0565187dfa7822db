"""Job kinds: one module per kind (its request schema and planner), registered here, in one
place, and handed to the engine (`Engine(planners=PLANNERS)`), which knows no kind itself.

A planner is a stateless object whose class is importable by name: units carry it to the
workers (another process or another machine), where it is unpickled by reference.
"""

from __future__ import annotations

from collections.abc import Mapping

from assetbox.engine.planners import Planner
from assetbox.kinds.caption import CaptionPlanner
from assetbox.kinds.edit import EditPlanner
from assetbox.kinds.generate import GeneratePlanner
from assetbox.kinds.load import LoadPlanner
from assetbox.kinds.simulate import SimulatePlanner
from assetbox.kinds.upscale import UpscalePlanner

PLANNERS: Mapping[str, Planner] = {
    planner.kind: planner
    for planner in (
        UpscalePlanner(),
        GeneratePlanner(),
        EditPlanner(),
        CaptionPlanner(),
        SimulatePlanner(),
        LoadPlanner(),
    )
}
