"""Job kind `edit`, in two forms (the shared run is in kinds/diffusion.py):

- img2img (sd15, sdxl, flux1): `image` and `strength`, optionally a ControlNet. Without a size it
  runs at its input's size.
- instruction edit (qwen_image_edit: 1 image, qwen_image_edit_plus: 1-3, flux2_klein and flux2:
  1-16, as references of weight 1): `instruction` and `images`. Without a size it runs at the
  last image's aspect ratio and about `condition_pixels` pixels, as the pipelines do.

A request mixing the forms, or using the one its checkpoint's family lacks, is refused naming
the field. Sizes and defaults are filled in at submit so that the job records them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

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
    _store,
    check_controlnet,
)
from assetbox.models.store import ModelManifest, ModelStore

# The largest family size multiple (Flux.1's 16): the smallest side every family can run.
MIN_EDIT_SIZE = 16
DEFAULT_STRENGTH = 0.6
MAX_EDIT_IMAGES = 16


class EditOptions(GenerateOptions):
    """img2img: `strength` says how much of the input is redrawn (1: all of it)."""

    prompts: list[str] = Field(default_factory=lambda: [""], min_length=1, max_length=64)
    width: int | None = Field(
        default=None,
        ge=MIN_EDIT_SIZE,
        le=MAX_SIZE,
        multiple_of=8,
        description="output width; a multiple of 8 (16 for the flow families); default: the "
        "input image's width rounded to that multiple (instruction edit: the last image's aspect "
        "ratio at `condition_pixels`), or, when only `height` is given, what keeps the input's "
        f"aspect ratio. An input wider than {MAX_SIZE} needs an explicit size. The size used is "
        "recorded in the job's request.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_EDIT_SIZE,
        le=MAX_SIZE,
        multiple_of=8,
        description="output height; a multiple of 8 (16 for the flow families); default: the "
        "input image's height rounded to that multiple (instruction edit: the last image's "
        "aspect ratio at `condition_pixels`), or, when only `width` is given, what keeps the "
        f"input's aspect ratio. An input taller than {MAX_SIZE} needs an explicit size. The size "
        "used is recorded in the job's request.",
    )
    strength: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=f"img2img: how much of `image` is redrawn (1: all of it); default "
        f"{DEFAULT_STRENGTH}",
    )
    controlnet: ControlNetRef | None = Field(default=None, description="img2img only")
    instruction: str | None = Field(
        default=None,
        max_length=4000,
        description="instruction edit (qwen_image_edit, qwen_image_edit_plus, flux2_klein, "
        "flux2): what to do with `images`, e.g. 'make the sky red'",
    )
    true_cfg_scale: float | None = Field(
        default=None,
        ge=0,
        le=50,
        description="Qwen-Image-Edit(-Plus): the true CFG scale (another name for `guidance`; "
        "acts only above 1 and with a `negative_prompt`); default 4, 1 with a speed LoRA",
    )
    condition_pixels: int | None = Field(
        default=None,
        ge=32 * 32,
        le=4096 * 4096,
        description="Qwen-Image-Edit(-Plus): the area in pixels each input image is resized to "
        "(keeping its aspect ratio) before the model sees it; default 1048576 (1 MP) as the model "
        "makers do. Plus gives its vision encoder 384x384/1 MP of it. Smaller is faster and "
        "keeps less detail; the output size is `width` x `height` either way.",
    )


class EditRequest(EditOptions):
    image: str | None = Field(
        default=None, description="img2img: the input image (blob 'sha256:<hex>')"
    )
    images: list[str] = Field(
        default_factory=list,
        max_length=MAX_EDIT_IMAGES,
        description="instruction edit: the input images (blobs): 1 for qwen_image_edit, 1-3 for "
        "qwen_image_edit_plus, 1-16 for FLUX.2 (references of weight 1)",
    )


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


def instruction_size(
    width: int | None, height: int | None, image_size: tuple[int, int], area: int, multiple: int
) -> tuple[int, int]:
    """The size an instruction edit runs at: the given sides; without either, the input's aspect
    ratio at about `area` pixels (as the pipelines' own default), sides rounded to `multiple`;
    one side given: the other keeps the input's aspect ratio (`edit_size`)."""
    if width is not None or height is not None:
        return edit_size(width, height, image_size, multiple)
    ratio = image_size[0] / image_size[1]
    out_w = math.sqrt(area * ratio)

    def snap(value: float) -> int:
        return min(MAX_SIZE, max(MIN_EDIT_SIZE, multiple, round(value / multiple) * multiple))

    return snap(out_w), snap(out_w / ratio)


def _refuse(field: str, message: str) -> None:
    raise InvalidInput(message, field=field)


class EditPlanner(DiffusionPlanner):
    kind = "edit"
    request_model = EditRequest

    def check(self, request: BaseModel, data_dir: Path) -> None:
        """`true_cfg_scale` becomes `guidance` (one value, checked as the family's guidance)."""
        assert isinstance(request, EditRequest)
        if request.true_cfg_scale is not None:
            from assetbox.pipelines.diffusion import QWEN_FAMILIES

            family = _store(data_dir).get(request.model, "checkpoint", field="model").family
            if family not in QWEN_FAMILIES:
                _refuse(
                    "true_cfg_scale",
                    f"`true_cfg_scale` is Qwen-Image's; {family} takes `guidance`",
                )
            if request.guidance is not None and request.guidance != request.true_cfg_scale:
                _refuse(
                    "true_cfg_scale",
                    "give `true_cfg_scale` or `guidance` (the same value for Qwen-Image), not both",
                )
            request.guidance = request.true_cfg_scale
        super().check(request, data_dir)

    def _check_inputs(
        self, request: GenerateOptions, store: ModelStore, manifest: ModelManifest, data_dir: Path
    ) -> None:
        from assetbox.pipelines.diffusion import (
            IMG2IMG_FAMILIES,
            INSTRUCTION_EDIT_IMAGES,
            SIZE_MULTIPLE,
        )
        from assetbox.pipelines.flux2 import FLUX2_FAMILIES

        assert isinstance(request, EditRequest)
        family = manifest.family
        assert family is not None
        if family in INSTRUCTION_EDIT_IMAGES or family in FLUX2_FAMILIES:
            self._check_instruction(request, manifest, data_dir)
            return
        if request.images or request.instruction is not None:
            field = "images" if request.images else "instruction"
            _refuse(
                field,
                f"`{field}` is for instruction edit (qwen_image_edit, qwen_image_edit_plus, "
                f"flux2_klein, flux2); {manifest.id!r} is {family}: give `image` and `strength`",
            )
        if family not in IMG2IMG_FAMILIES:
            _refuse(
                "image" if request.image is not None else "model",
                f"{manifest.id!r} is {family}, which has no image-to-image pipeline: "
                "use POST /v1/generate",
            )
        for name in ("condition_pixels", "true_cfg_scale"):
            if getattr(request, name) is not None:
                _refuse(name, f"`{name}` is for Qwen-Image-Edit; {manifest.id!r} is {family}")
        if request.image is None:
            _refuse("image", "img2img needs `image` (the input image)")
        if request.strength is None:
            request.strength = DEFAULT_STRENGTH
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
        assert request.image is not None
        _, in_w, in_h = verify_image(blob_path(data_dir, request.image).read_bytes(), field="image")
        if request.controlnet is not None and request.controlnet.image is not None:
            ref = request.controlnet.image
            data = blob_path(data_dir, ref, field="controlnet.image").read_bytes()
            verify_image(data, field="controlnet.image")
        if request.width is None or request.height is None:
            request.width, request.height = edit_size(
                request.width, request.height, (in_w, in_h), multiple
            )

    def _check_instruction(
        self, request: EditRequest, manifest: ModelManifest, data_dir: Path
    ) -> None:
        """The instruction form: `instruction` and 1 to the family's number of `images` (for
        FLUX.2 with the request's `references`), nothing of img2img's; fills the size, the
        conditioning area and `prompts` (the instruction) in."""
        from assetbox.pipelines.diffusion import (
            DEFAULT_CONDITION_PIXELS,
            INSTRUCTION_EDIT_IMAGES,
            SIZE_MULTIPLE,
        )
        from assetbox.pipelines.flux2 import MAX_REFERENCES, check_reference_size

        family = manifest.family
        assert family is not None
        for name, value in (("image", request.image), ("strength", request.strength)):
            if value is not None:
                _refuse(
                    name,
                    f"`{name}` is for img2img; {manifest.id!r} ({family}) edits by instruction: "
                    "give `instruction` and `images`",
                )
        if request.controlnet is not None:
            _refuse("controlnet", f"{family} takes no ControlNet")
        limit = INSTRUCTION_EDIT_IMAGES.get(family, MAX_REFERENCES)
        if not request.images:
            _refuse("images", f"{family} edits 1 to {limit} `images`; none given")
        if len(request.images) + len(request.references) > limit:
            extra = " (with `references`)" if request.references else ""
            _refuse(
                "images",
                f"{family} edits at most {limit} images, this request has "
                f"{len(request.images) + len(request.references)}{extra}",
            )
        if request.instruction is None:
            _refuse("instruction", "instruction edit needs `instruction` (what to change)")
        if request.prompts not in ([""], [request.instruction]):
            _refuse("prompts", "instruction edit takes its text from `instruction`, not `prompts`")
        qwen = family in INSTRUCTION_EDIT_IMAGES
        if request.condition_pixels is not None and not qwen:
            _refuse("condition_pixels", f"`condition_pixels` is Qwen-Image-Edit's, not {family}'s")
        sizes = []
        for n, ref in enumerate(request.images):
            field = f"images.{n}"
            _, width, height = verify_image(
                blob_path(data_dir, ref, field=field).read_bytes(), field=field
            )
            if not qwen:
                check_reference_size(width, height, field)
            sizes.append((width, height))
        if qwen and request.condition_pixels is None:
            request.condition_pixels = DEFAULT_CONDITION_PIXELS
        area = request.condition_pixels or DEFAULT_CONDITION_PIXELS
        request.width, request.height = instruction_size(
            request.width, request.height, sizes[-1], area, SIZE_MULTIPLE[family]
        )
        assert request.instruction is not None
        request.prompts = [request.instruction]

    def _inputs(
        self, request: GenerateOptions, params: Any, ctx: UnitContext
    ) -> ControlNetRef | None:
        assert isinstance(request, EditRequest)
        if request.images:
            from assetbox.pipelines.flux2 import FLUX2_FAMILIES

            images = [self._image(ref, ctx, f"images.{n}") for n, ref in enumerate(request.images)]
            family = _store(ctx.data_dir).get(request.model, "checkpoint", field="model").family
            if family in FLUX2_FAMILIES:  # references of weight 1, before the request's own
                params.references = [(image, 1.0) for image in images] + list(params.references)
            else:
                params.images = images
                params.condition_pixels = request.condition_pixels
            return None
        assert request.image is not None and request.strength is not None
        params.image = self._image(request.image, ctx, "image")
        params.strength = request.strength
        if request.controlnet is not None:
            params.conditioning_scale = request.controlnet.conditioning_scale
            if request.controlnet.image is not None:
                params.control_image = self._image(
                    request.controlnet.image, ctx, "controlnet.image"
                )
        return request.controlnet
