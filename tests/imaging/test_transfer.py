from __future__ import annotations

import numpy as np
import pytest

from assetbox.errors import InvalidInput
from assetbox.imaging import from_working, to_working
from assetbox.imaging.transfer import linear_to_srgb, srgb_to_linear


def test_srgb_curve_known_values() -> None:
    np.testing.assert_allclose(
        srgb_to_linear(np.array([0.0, 0.5, 1.0])), [0, 0.214041, 1], atol=1e-5
    )
    np.testing.assert_allclose(
        linear_to_srgb(np.array([0.0, 0.214041, 1.0])), [0, 0.5, 1], atol=1e-5
    )


@pytest.mark.parametrize("transfer", ["srgb", "linear"])
def test_every_8bit_and_16bit_level_round_trips(transfer: str) -> None:
    levels8 = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(
        from_working(to_working(levels8, transfer), np.uint8, transfer), levels8
    )  # type: ignore[arg-type]
    levels16 = np.arange(65536, dtype=np.uint16)
    back = from_working(to_working(levels16, transfer), np.uint16, transfer)  # type: ignore[arg-type]
    assert np.abs(back.astype(int) - levels16).max() <= 1


def test_float_input_is_clipped() -> None:
    np.testing.assert_array_equal(to_working(np.array([-0.5, 1.5], np.float32), "linear"), [0, 1])


def test_unsupported_dtypes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="uint8, uint16 or float"):
        to_working(np.zeros(3, np.int32))
    with pytest.raises(InvalidInput, match="output dtype"):
        from_working(np.zeros(3, np.float32), np.int32)
