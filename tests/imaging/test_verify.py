"""verify_image: a whole decode at submit, bombs still refused from the header."""

from __future__ import annotations

import numpy as np
import pytest

from assetbox.errors import ImageTooLarge, InvalidInput
from assetbox.imaging import verify_image
from tests.utils.images import encode_pil, encode_png16, jpeg_bomb, photo, png_bomb


@pytest.fixture
def pixels() -> np.ndarray:
    return np.ascontiguousarray(photo("chelsea")[:120, :160])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_whole_files_pass_and_cut_ones_name_the_field(pixels: np.ndarray, fmt: str) -> None:
    data = encode_pil(pixels, fmt)
    assert verify_image(data) == (fmt.lower(), 160, 120)
    for keep in (0.5, 0.9, 0.99):
        with pytest.raises(InvalidInput) as caught:
            verify_image(data[: int(len(data) * keep)], field="controlnet.image")
        assert caught.value.field == "controlnet.image"


def test_a_cut_16_bit_png_is_refused(pixels: np.ndarray) -> None:
    data = encode_png16(pixels.astype(np.uint16) * 257)
    assert verify_image(data) == ("png", 160, 120)
    with pytest.raises(InvalidInput, match="truncated"):
        verify_image(data[: len(data) // 2])


@pytest.mark.parametrize("bomb", [png_bomb, jpeg_bomb])
def test_bombs_are_refused_from_the_header(bomb) -> None:
    with pytest.raises(ImageTooLarge):
        verify_image(bomb())


def test_the_size_is_the_upright_one(pixels: np.ndarray) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown rotated by 90 degrees
    data = encode_pil(pixels, "JPEG", exif=exif.tobytes())
    assert verify_image(data) == ("jpeg", 120, 160)
