"""Job kind `generate`: text to image (the shared run is in kinds/diffusion.py)."""

from __future__ import annotations

from assetbox.kinds.diffusion import DiffusionPlanner, GenerateOptions


class GenerateRequest(GenerateOptions):
    """A text-to-image job's request."""


class GeneratePlanner(DiffusionPlanner):
    kind = "generate"
    request_model = GenerateRequest
