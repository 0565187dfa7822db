"""The content check (ASSETBOX_NSFW) with NudeNet's real detector on a real photo."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from skimage import data

from assetbox.config import Settings
from assetbox.errors import ContentBlocked, InvalidInput, ModelError
from assetbox.pipelines import nsfw


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def settings(mode: str, classes: str | None = None) -> Settings:
    fields = {"nsfw": mode} | ({"nsfw_classes": classes} if classes else {})
    return Settings(**fields)


def test_the_detector_reports_the_face_and_no_nudity(astronaut: np.ndarray) -> None:
    screening = nsfw.screen(astronaut, settings("flag"))
    assert screening is not None
    (face,) = [d for d in screening.detections if d.label == "FACE_FEMALE"]
    assert face.score > 0.5
    x, y, w, h = face.box  # her face: around (170..275, 80..180) of the 512x512 photo
    assert 140 < x + w / 2 < 260 and 90 < y + h / 2 < 170
    assert not screening.detected and screening.score == 0.0
    assert screening.rgb is astronaut and not screening.blurred
    assert nsfw.screen(astronaut, settings("off")) is None


def test_a_flagged_class_marks_blurs_or_blocks(astronaut: np.ndarray) -> None:
    flagged = nsfw.screen(astronaut, settings("flag", "FACE_FEMALE,BUTTOCKS_EXPOSED"))
    assert flagged is not None and flagged.detected and flagged.score > 0.5
    assert np.array_equal(flagged.rgb, astronaut)

    blurred = nsfw.screen(astronaut, settings("blur", "FACE_FEMALE"))
    assert blurred is not None and blurred.detected and blurred.blurred
    (face,) = [d for d in blurred.detections if d.label == "FACE_FEMALE"]
    x, y, w, h = face.box
    changed = np.any(blurred.rgb != astronaut, axis=2)
    assert changed[y : y + h, x : x + w].mean() > 0.5
    changed[y : y + h, x : x + w] = False
    assert not changed.any()  # nothing outside the face's box
    assert nsfw.screen(blurred.rgb, settings("flag", "FACE_FEMALE")).score < face.score

    with pytest.raises(ContentBlocked, match=r"ASSETBOX_NSFW=block.*FACE_FEMALE"):
        nsfw.screen(astronaut, settings("block", "FACE_FEMALE"))
    # Below the threshold nothing is flagged.
    high = Settings(nsfw="block", nsfw_classes="FACE_FEMALE", nsfw_threshold=0.99)
    assert not nsfw.screen(astronaut, high).detected


def test_a_16_bit_output_is_checked_too(astronaut: np.ndarray) -> None:
    deep = astronaut.astype(np.uint16) * 257
    screening = nsfw.screen(deep, settings("blur", "FACE_FEMALE"))
    assert screening is not None and screening.detected and screening.rgb.dtype == np.uint16


def test_without_the_extra_the_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    nsfw.require(settings("off"))
    nsfw.require(settings("block"))
    with pytest.raises(InvalidInput, match=r"ASSETBOX_NSFW_CLASSES.*FACE_ALIEN"):
        nsfw.require(settings("flag", "FACE_ALIEN,FACE_FEMALE"))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nudenet" else find_spec(name, *a),
    )
    nsfw.require(settings("off"))
    with pytest.raises(ModelError, match=r"ASSETBOX_NSFW=blur needs the `nsfw` extra"):
        nsfw.require(settings("blur"))
