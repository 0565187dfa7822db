from __future__ import annotations

import numpy as np
import pytest

from assetbox.errors import InvalidInput
from assetbox.imaging import adain_color_fix, color_fix, wavelet_color_fix
from assetbox.imaging.color import low_frequencies
from tests.utils.images import photo


def drifted(image: np.ndarray) -> np.ndarray:
    """The photo with the kind of colour cast a diffusion pass adds: warmer and darker."""
    cast = image.astype(np.float32) * np.array([1.0, 0.85, 0.7]) + np.array([25.0, 5.0, -10.0])
    return np.clip(np.rint(cast), 0, 255).astype(np.uint8)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def high_frequencies(image: np.ndarray) -> np.ndarray:
    values = image.astype(np.float32) / 255
    return values - low_frequencies(values)


def test_wavelet_fix_of_an_image_by_itself_changes_nothing() -> None:
    image = photo("coffee")
    assert np.abs(wavelet_color_fix(image, image).astype(int) - image).max() <= 1


def test_wavelet_fix_removes_a_colour_cast_and_keeps_detail() -> None:
    reference = photo("astronaut")
    # Target: the reference's colour cast version, with extra fine detail (noise) the reference
    # lacks, as a diffusion pass would add.
    rng = np.random.default_rng(0)
    detail = rng.normal(0, 6, reference.shape)
    target = np.clip(drifted(reference) + detail, 0, 255).astype(np.uint8)
    fixed = wavelet_color_fix(target, reference)
    assert mean_abs(target, reference) > 20
    # Colour lives in the low frequencies: there the fixed image is the reference's.
    low = lambda a: low_frequencies(a.astype(np.float32))  # noqa: E731
    assert mean_abs(low(target), low(reference)) > 20
    assert mean_abs(low(fixed), low(reference)) < 1.5
    assert mean_abs(fixed, reference) < mean_abs(target, reference) / 2
    # The channel means now match the reference's.
    np.testing.assert_allclose(fixed.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=2)
    # The target's fine detail survives: high frequencies correlate with the target's, not lost.
    corr = np.corrcoef(high_frequencies(fixed).ravel(), high_frequencies(target).ravel())[0, 1]
    assert corr > 0.9


def test_wavelet_fix_in_bands_equals_the_whole_image() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 256, (150, 90, 3), dtype=np.uint8)
    reference = photo("chelsea")[:150, :90]
    whole = wavelet_color_fix(target, reference, band_rows=10_000)
    np.testing.assert_array_equal(wavelet_color_fix(target, reference, band_rows=37), whole)
    np.testing.assert_array_equal(wavelet_color_fix(target, reference, band_rows=1), whole)


def test_wavelet_fix_keeps_16bit_and_float() -> None:
    image16 = (photo("chelsea")[:64, :64].astype(np.uint16) * 257).astype(np.uint16)
    out = wavelet_color_fix(image16, image16)
    assert out.dtype == np.uint16 and np.abs(out.astype(int) - image16).max() <= 257
    imagef = image16.astype(np.float32) / 65535
    assert wavelet_color_fix(imagef, imagef).dtype == np.float32


def test_adain_matches_mean_and_std() -> None:
    reference = photo("astronaut")
    fixed = adain_color_fix(drifted(reference), reference, band_rows=100)
    np.testing.assert_allclose(fixed.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=1.5)
    np.testing.assert_allclose(fixed.std(axis=(0, 1)), reference.std(axis=(0, 1)), rtol=0.05)


def test_color_fix_dispatches_by_method() -> None:
    reference = photo("coffee")[:64, :64]
    target = drifted(reference)
    np.testing.assert_array_equal(
        color_fix(target, reference, "adain"), adain_color_fix(target, reference)
    )
    np.testing.assert_array_equal(
        color_fix(target, reference, "wavelet", levels=3),
        wavelet_color_fix(target, reference, levels=3),
    )
    with pytest.raises(InvalidInput, match="`color_fix` must be one of"):
        color_fix(target, reference, "histogram")  # type: ignore[arg-type]


def test_color_fix_refuses_mismatched_inputs() -> None:
    a = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InvalidInput, match="`reference` must have the target's shape") as info:
        wavelet_color_fix(a, np.zeros((10, 11, 3), np.uint8))
    assert info.value.field == "reference"
    with pytest.raises(InvalidInput, match="`target` must have shape"):
        wavelet_color_fix(np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(InvalidInput, match="`levels`"):
        wavelet_color_fix(a, a, levels=0)
