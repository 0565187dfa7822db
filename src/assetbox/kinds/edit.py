"""Job kind `edit`: img2img, optionally with a ControlNet (the shared run is in
kinds/diffusion.py). An edit without a size runs at its input's size, filled in at submit so
that the job records it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from assetbox.engine.blobs import blob_path
from assetbox.engine.planners import UnitContext
from assetbox.errors import InvalidInput
from assetbox.imaging import verify_image
from assetbox.kinds.diffusion import (
    DEFAULTS,
    MAX_SIZE,
    ControlNetRef,
    DiffusionPlanner,
    GenerateOptions,
    check_controlnet,
)
from assetbox.models.store import ModelManifest, ModelStore

# The largest family size multiple (Flux.1's 16): the smallest side every family can run.
MIN_EDIT_SIZE = 16


class EditOptions(GenerateOptions):
    """img2img: `strength` says how much of the input is redrawn (1: all of it)."""

    prompts: list[str] = Field(default_factory=lambda: [""], min_length=1, max_length=64)
    width: int | None = Field(
        default=None,
        ge=MIN_EDIT_SIZE,
        le=MAX_SIZE,
        multiple_of=8,
        description="output width; a multiple of 8 (16 for flux1); default: the input image's "
        "width rounded to that multiple, or, when only `height` is given, what keeps the input's "
        f"aspect ratio. An input wider than {MAX_SIZE} needs an explicit size. The size used is "
        "recorded in the job's request.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_EDIT_SIZE,
        le=MAX_SIZE,
        multiple_of=8,
        description="output height; a multiple of 8 (16 for flux1); default: the input image's "
        "height rounded to that multiple, or, when only `width` is given, what keeps the input's "
        f"aspect ratio. An input taller than {MAX_SIZE} needs an explicit size. The size used is "
        "recorded in the job's request.",
    )
    strength: float = Field(default=0.6, gt=0, le=1)
    controlnet: ControlNetRef | None = None


class EditRequest(EditOptions):
    image: str = Field(description="the input image (blob 'sha256:<hex>')")


def edit_size(
    width: int | None, height: int | None, image_size: tuple[int, int], multiple: int
) -> tuple[int, int]:
    """The size an edit runs at: the given sides, a missing one from the input image (its own
    side rounded to `multiple`, or, beside a given side, what keeps the input's aspect ratio).

    Raises:
        InvalidInput: a side taken from the input comes out above MAX_SIZE (naming it).
    """
    in_w, in_h = image_size

    def snap(value: float) -> int:
        return max(MIN_EDIT_SIZE, multiple, round(value / multiple) * multiple)

    out_w = width if width is not None else snap(in_w if height is None else height * in_w / in_h)
    out_h = height if height is not None else snap(in_h if width is None else width * in_h / in_w)
    for name, given, value in (("width", width, out_w), ("height", height, out_h)):
        if given is None and value > MAX_SIZE:
            # Refused rather than shrunk: a silent resize would hand back another size than the
            # caller's image, and the caller knows best which size to ask for instead.
            raise InvalidInput(
                f"`{name}` defaults to the input image's ({in_w}x{in_h}), which gives {value}, "
                f"above the maximum {MAX_SIZE}; give `width` and `height` explicitly",
                field=name,
            )
    return out_w, out_h


class EditPlanner(DiffusionPlanner):
    kind = "edit"
    request_model = EditRequest

    def _check_inputs(
        self, request: GenerateOptions, store: ModelStore, manifest: ModelManifest, data_dir: Path
    ) -> None:
        from assetbox.pipelines.diffusion import SIZE_MULTIPLE

        assert isinstance(request, EditRequest)
        family = manifest.family
        assert family is not None
        steps = request.steps or DEFAULTS[family]["steps"]
        if int(steps * request.strength) < 1:
            raise InvalidInput(
                f"`strength` {request.strength} of {steps} steps leaves no step to run: "
                f"use at least {1 / steps:.3g}",
                field="strength",
            )
        if request.controlnet is not None:
            check_controlnet(store, manifest, request.controlnet.model)
        self._check_images(request, data_dir, SIZE_MULTIPLE[family])

    @staticmethod
    def _check_images(request: EditRequest, data_dir: Path, multiple: int) -> None:
        """Input images decode completely; an edit without a size gets its input's.

        The size is filled in here, in place, because `check` is the one submit-time hook that
        sees the data directory (the input's size is in its blob) and runs before the engine
        hashes and stores the request: the job then records the size it runs at, and a request
        without a size and one that names the same size are the same request.
        """
        _, in_w, in_h = verify_image(blob_path(data_dir, request.image).read_bytes(), field="image")
        if request.controlnet is not None and request.controlnet.image is not None:
            ref = request.controlnet.image
            data = blob_path(data_dir, ref, field="controlnet.image").read_bytes()
            verify_image(data, field="controlnet.image")
        if request.width is None or request.height is None:
            request.width, request.height = edit_size(
                request.width, request.height, (in_w, in_h), multiple
            )

    def _inputs(
        self, request: GenerateOptions, params: Any, ctx: UnitContext
    ) -> ControlNetRef | None:
        assert isinstance(request, EditRequest)
        params.image = self._image(request.image, ctx, "image")
        params.strength = request.strength
        if request.controlnet is not None:
            params.conditioning_scale = request.controlnet.conditioning_scale
            if request.controlnet.image is not None:
                params.control_image = self._image(
                    request.controlnet.image, ctx, "controlnet.image"
                )
        return request.controlnet
