"""The content check of image outputs (``ASSETBOX_NSFW``): NudeNet's detector, run with
onnxruntime on the ONNX weights its wheel ships, so it works offline.

NudeNet is AGPL-3.0, so it is an optional extra (`nsfw`) and imported only here, lazily.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from assetbox.config import Settings
from assetbox.errors import ContentBlocked, InvalidInput, ModelError

# The detector letterboxes every image to 320x320; a larger copy only costs memory (an 8K output
# would be copied whole by its padding step), so images are shrunk to this longest side first.
DETECT_SIDE = 640
# Flagged regions are pixelated into about this many blocks across their longer side.
BLUR_BLOCKS = 12


@dataclass(frozen=True)
class Detection:
    label: str  # one of NudeNet's classes, e.g. FACE_FEMALE
    score: float
    box: tuple[int, int, int, int]  # x, y, width, height in the output's pixels

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "box": list(self.box)}


@dataclass(frozen=True)
class Screening:
    """What the check found in one image: every detection, and whether a flagged class did."""

    detected: bool
    score: float  # the highest score of a flagged class, 0 when none was found
    detections: tuple[Detection, ...]
    rgb: np.ndarray  # the image, with the flagged regions pixelated under `blur`
    blurred: bool = False


def output_fields(screening: Screening | None) -> dict[str, Any]:
    """The fields of an assembled output (engine.planners.AssembledOutput) that carry a check."""
    if screening is None:
        return {}
    return {
        "nsfw_detected": screening.detected,
        "nsfw_score": screening.score,
        "nsfw_detections": tuple(d.as_dict() for d in screening.detections),
    }


def flagged_classes(settings: Settings) -> frozenset[str]:
    return frozenset(c.strip() for c in settings.nsfw_classes.split(",") if c.strip())


def require(settings: Settings) -> None:
    """Refuse, at start, a setting the check cannot honour.

    Raises ModelError naming ``ASSETBOX_NSFW`` when it is not ``off`` and the `nsfw` extra is
    missing; InvalidInput naming ``ASSETBOX_NSFW_CLASSES`` for a class NudeNet does not know.
    """
    if settings.nsfw == "off":
        return
    if importlib.util.find_spec("nudenet") is None:
        raise ModelError(
            f"ASSETBOX_NSFW={settings.nsfw} needs the `nsfw` extra (NudeNet, AGPL-3.0): "
            "pip install 'assetbox[nsfw]', or set ASSETBOX_NSFW=off"
        )
    unknown = sorted(flagged_classes(settings) - set(labels()))
    if unknown:
        raise InvalidInput(
            f"ASSETBOX_NSFW_CLASSES names classes NudeNet does not know: {', '.join(unknown)}; "
            f"it knows {', '.join(sorted(labels()))}",
            field="nsfw_classes",
        )


def labels() -> tuple[str, ...]:
    """NudeNet's classes, as its module lists them (a module-private name, hence vars())."""
    import nudenet.nudenet

    return tuple(vars(nudenet.nudenet)["__labels"])


@lru_cache(maxsize=1)
def _detector() -> Any:
    # Loading the ONNX session takes ~0.7 s; sessions are thread-safe, so one serves every
    # assembly thread of the process.
    from nudenet import NudeDetector

    return NudeDetector()


def detect(rgb: np.ndarray) -> list[Detection]:
    """Every detection NudeNet makes in an RGB image (uint8 or uint16), boxes in its pixels."""
    import cv2  # NudeNet's own dependency

    if rgb.dtype != np.uint8:
        rgb = (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb.astype(np.uint8)
    height, width = rgb.shape[:2]
    factor = min(1.0, DETECT_SIDE / max(height, width))
    small = rgb
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    # NudeNet reads arrays as OpenCV does files: BGR.
    found = _detector().detect(np.ascontiguousarray(small[..., ::-1]))
    detections = []
    for item in found:
        x, y, w, h = (v / factor for v in item["box"])
        box = (int(x), int(y), min(round(w), width - int(x)), min(round(h), height - int(y)))
        detections.append(Detection(item["class"], round(float(item["score"]), 4), box))
    return detections


def screen(rgb: np.ndarray, settings: Settings) -> Screening | None:
    """Check one output under ``settings.nsfw``; None when the check is off.

    Raises ContentBlocked under ``block`` when a flagged class scores at least
    ``settings.nsfw_threshold``.
    """
    if settings.nsfw == "off":
        return None
    require(settings)
    classes = flagged_classes(settings)
    detections = tuple(detect(rgb))
    flagged = [d for d in detections if d.label in classes and d.score >= settings.nsfw_threshold]
    score = max((d.score for d in detections if d.label in classes), default=0.0)
    if flagged and settings.nsfw == "block":
        found = ", ".join(sorted({d.label for d in flagged}))
        raise ContentBlocked(
            f"the output was withheld: the content check (ASSETBOX_NSFW=block) found {found} "
            f"(score {score:.2f}, threshold {settings.nsfw_threshold})"
        )
    blurred = bool(flagged) and settings.nsfw == "blur"
    if blurred:
        rgb = rgb.copy()
        for d in flagged:
            pixelate(rgb, d.box)
    return Screening(bool(flagged), score, detections, rgb, blurred)


def pixelate(rgb: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Replace a region with the means of coarse blocks, in place.

    A mosaic rather than PIL's Gaussian blur: it works on 16-bit outputs too, costs one pass
    whatever the region's size, and leaves nothing of the detail to sharpen back.
    """
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return
    block = max(1, -(-max(w, h) // BLUR_BLOCKS))
    region = rgb[y : y + h, x : x + w]
    for by in range(0, h, block):
        for bx in range(0, w, block):
            cell = region[by : by + block, bx : bx + block]
            cell[...] = cell.reshape(-1, cell.shape[-1]).mean(axis=0).round().astype(rgb.dtype)
