from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from assetbox.config import get_settings
from assetbox.errors import ImageTooLarge, InvalidInput, UnsupportedFormat
from assetbox.imaging import decode_base64, decode_image, encode_base64, encode_image, probe_image
from assetbox.imaging.codec import to_uint8
from tests.utils.images import encode_pil, encode_png16, jpeg_bomb, photo, png_bomb


@pytest.fixture
def rgb() -> np.ndarray:
    return photo("astronaut")[100:164, 200:296]  # 64 x 96, a real photo crop


# -- round trips ------------------------------------------------------------------------------


def test_png_round_trip_is_exact(rgb: np.ndarray) -> None:
    decoded = decode_image(encode_image(rgb, "png"))
    assert decoded.format == "png"
    assert decoded.alpha is None and not decoded.grayscale
    np.testing.assert_array_equal(decoded.rgb, rgb)


def test_rgba_keeps_alpha_apart_from_colour(rgb: np.ndarray) -> None:
    alpha = np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None, :].repeat(rgb.shape[0], 0)
    rgba = np.dstack([rgb, alpha])
    for fmt in ("png", "webp"):
        data = encode_image(rgba, fmt, lossless=True)  # type: ignore[arg-type]
        decoded = decode_image(data)
        assert decoded.rgb.shape == rgb.shape
        np.testing.assert_array_equal(decoded.alpha, alpha)
        np.testing.assert_array_equal(decoded.rgb, rgb)
        np.testing.assert_array_equal(decode_image(encode_image(decoded)).alpha, alpha)


def test_jpeg_round_trip_is_close(rgb: np.ndarray) -> None:
    decoded = decode_image(encode_image(rgb, "jpeg", quality=95))
    assert decoded.format == "jpeg"
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() < 3


def test_webp_lossy_round_trip_is_close(rgb: np.ndarray) -> None:
    decoded = decode_image(encode_image(rgb, "webp", quality=90))
    assert decoded.format == "webp"
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() < 4


def test_grayscale_png_stays_grayscale(rgb: np.ndarray) -> None:
    gray = rgb[..., 1]
    decoded = decode_image(encode_pil(gray))
    assert decoded.grayscale
    assert decoded.rgb.shape == (*gray.shape, 3)
    np.testing.assert_array_equal(decoded.rgb[..., 2], gray)
    assert Image.open(io.BytesIO(encode_image(decoded))).mode == "L"


def test_palette_png_with_transparency_becomes_rgba() -> None:
    im = Image.new("P", (4, 3))
    im.putpalette([255, 0, 0, 0, 255, 0])
    im.putpixel((1, 1), 1)
    out = io.BytesIO()
    im.save(out, "PNG", transparency=0)
    decoded = decode_image(out.getvalue())
    assert decoded.alpha is not None
    assert decoded.alpha[1, 1] == 255 and decoded.alpha[0, 0] == 0
    assert tuple(decoded.rgb[1, 1]) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb(rgb: np.ndarray) -> None:
    out = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(out, "JPEG")
    data = out.getvalue()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.rgb.shape == rgb.shape and decoded.rgb.dtype == np.uint8


# -- 16-bit -----------------------------------------------------------------------------------


def test_16bit_rgb_png_keeps_all_bits() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, size=(7, 9, 3), dtype=np.uint16)
    decoded = decode_image(encode_png16(pixels))
    assert decoded.rgb.dtype == np.uint16 and decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.rgb, pixels)


def test_16bit_rgba_and_gray_alpha_png() -> None:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 65536, size=(5, 6, 4), dtype=np.uint16)
    decoded = decode_image(encode_png16(rgba))
    np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
    np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])
    gray_alpha = rng.integers(0, 65536, size=(5, 6, 2), dtype=np.uint16)
    decoded = decode_image(encode_png16(gray_alpha))
    assert decoded.grayscale
    np.testing.assert_array_equal(decoded.rgb[..., 0], gray_alpha[..., 0])
    np.testing.assert_array_equal(decoded.alpha, gray_alpha[..., 1])


def test_16bit_gray_png_keeps_all_bits() -> None:
    gray = (np.arange(6 * 7, dtype=np.uint16).reshape(6, 7) * 1531).astype(np.uint16)
    decoded = decode_image(encode_png16(gray))
    assert decoded.grayscale and decoded.rgb.dtype == np.uint16
    np.testing.assert_array_equal(decoded.rgb[..., 0], gray)


def test_16bit_png_encodes_back_to_16bit() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65536, size=(4, 5, 4), dtype=np.uint16)
    decoded = decode_image(encode_image(pixels, "png"))
    np.testing.assert_array_equal(decoded.rgb, pixels[..., :3])
    np.testing.assert_array_equal(decoded.alpha, pixels[..., 3])


def test_16bit_to_jpeg_rounds_to_8bit() -> None:
    pixels = np.full((8, 8, 3), 65535 // 2, dtype=np.uint16)
    decoded = decode_image(encode_image(pixels, "jpeg"))
    assert decoded.rgb.dtype == np.uint8
    assert abs(int(decoded.rgb.mean()) - 128) <= 1


def test_to_uint8_rounds_to_nearest() -> None:
    values = np.array([0, 128, 129, 257, 65535], dtype=np.uint16)
    np.testing.assert_array_equal(to_uint8(values), np.rint(values / 257).astype(np.uint8))


# -- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_like_pillow(orientation: int, fmt: str) -> None:
    pixels = photo("chelsea")[:30, :50]  # not square, so transposes change the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode_pil(pixels, fmt, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded.rgb, expected)
    if orientation >= 5:
        assert (decoded.height, decoded.width) == (50, 30)


def test_orientation_applies_to_16bit_png() -> None:
    # Pillow cannot write 16-bit colour, so add an eXIf chunk to a pypng file by hand.
    from tests.utils.images import _chunk

    pixels = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3000
    data = encode_png16(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    end = data.index(b"IEND") - 4
    data = (
        data[:end]
        + _chunk(
            b"eXIf", exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
        )
        + data[end:]
    )
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded.rgb, np.rot90(pixels, k=-1))


# -- base64 -----------------------------------------------------------------------------------


def test_base64_round_trip_and_data_url(rgb: np.ndarray) -> None:
    data = encode_image(rgb)
    text = encode_base64(data)
    assert decode_base64(text) == data
    assert decode_base64("data:image/png;base64," + text) == data
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64(wrapped) == data
    assert decode_base64(base64.urlsafe_b64encode(data).decode()) == data


def test_base64_bad_padding_is_a_clear_error() -> None:
    with pytest.raises(InvalidInput, match="padding") as info:
        decode_base64("iVBORw0KGgo", field="init_image")
    assert info.value.field == "init_image"
    assert "init_image" in str(info.value)


def test_base64_stray_characters_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64("iVBO*w0KGgo=")


def test_base64_with_non_ascii_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64("iVBOR\u0080w0KGgo=")


def test_base64_empty_is_refused() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_base64("data:image/png;base64,")


# -- bad files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"hello, world", b"GIF89a" + b"\x00" * 40, encode_pil(np.zeros((4, 4, 3), np.uint8), "BMP")],
    ids=["text", "gif", "bmp"],
)
def test_unknown_formats_are_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat, match="not a PNG, JPEG or WebP") as info:
        decode_image(data, field="image")
    assert info.value.field == "image"


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_truncated_files_are_refused(rgb: np.ndarray, fmt: str) -> None:
    data = encode_image(rgb, fmt)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=r"truncated|corrupt") as info:
        decode_image(data[: len(data) // 2], field="image")
    assert info.value.field == "image"


def test_truncated_16bit_png_is_refused() -> None:
    data = encode_png16(np.full((40, 40, 3), 1000, np.uint16))
    with pytest.raises(InvalidInput, match="truncated or corrupt 16-bit PNG"):
        decode_image(data[: len(data) // 2])


def test_corrupt_png_header_is_refused() -> None:
    data = bytearray(encode_image(np.zeros((4, 4, 3), np.uint8)))
    data[16:20] = b"\xff\xff\xff\xff"  # width with a bad CRC
    with pytest.raises(InvalidInput):
        decode_image(bytes(data))


# -- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bomb", [png_bomb, jpeg_bomb], ids=["png", "jpeg"])
def test_decompression_bomb_is_refused_before_decoding(
    bomb, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    data = bomb()
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert len(data) < 200_000
    with pytest.raises(ImageTooLarge, match=r"pixels; the limit is") as info:
        decode_image(data, field="image")
    assert info.value.field == "image"
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageTooLarge):
        probe_image(data)


def test_pixel_limit_comes_from_settings(monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray) -> None:
    data = encode_image(rgb)
    monkeypatch.setenv("ASSETBOX_MAX_IMAGE_PIXELS", str(rgb.shape[0] * rgb.shape[1] - 1))
    get_settings.cache_clear()
    with pytest.raises(ImageTooLarge, match="ASSETBOX_MAX_IMAGE_PIXELS"):
        decode_image(data)
    assert decode_image(data, max_pixels=rgb.shape[0] * rgb.shape[1]).width == rgb.shape[1]


def test_byte_limit_comes_from_settings(monkeypatch: pytest.MonkeyPatch, rgb: np.ndarray) -> None:
    data = encode_image(rgb)
    monkeypatch.setenv("ASSETBOX_MAX_IMAGE_BYTES", str(len(data) - 1))
    get_settings.cache_clear()
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(data)


def test_probe_reads_the_header(rgb: np.ndarray) -> None:
    assert probe_image(encode_image(rgb, "webp")) == ("webp", rgb.shape[1], rgb.shape[0])


# -- encoding errors --------------------------------------------------------------------------


def test_jpeg_refuses_alpha(rgb: np.ndarray) -> None:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    with pytest.raises(InvalidInput, match="JPEG cannot store alpha") as info:
        encode_image(rgba, "jpeg")
    assert info.value.field == "format"


def test_encode_refuses_bad_arguments(rgb: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="`format` must be one of"):
        encode_image(rgb, "gif")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="`quality`"):
        encode_image(rgb, "jpeg", quality=0)
    with pytest.raises(InvalidInput, match="shape"):
        encode_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(InvalidInput, match="uint8 or uint16"):
        encode_image(np.zeros((2, 2, 3), np.float32))
