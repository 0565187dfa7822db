"""Decoding and encoding of images: PNG, JPEG and WebP, with limits checked before decoding.

A decoded image keeps colour and alpha apart (`DecodedImage.rgb`, `DecodedImage.alpha`) because
every processing step treats them differently: colour is blended in linear light, alpha is not, and
upscalers see only colour. Native bit depth is kept (``uint8`` or ``uint16``) so that 16-bit inputs
lose nothing before processing.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import png  # pypng: Pillow reads 16-bit RGB(A) PNGs as 8-bit, pypng keeps all 16 bits
from PIL import Image, UnidentifiedImageError

from assetbox.config import get_settings
from assetbox.errors import ImageTooLarge, InvalidInput, UnsupportedFormat

# Our own pixel limit (checked from the header, below) replaces Pillow's global one, which would
# otherwise refuse legitimate 16K images and warn on 8K ones.
Image.MAX_IMAGE_PIXELS = None

ImageFormat = Literal["png", "jpeg", "webp"]
FORMATS: tuple[ImageFormat, ...] = ("png", "jpeg", "webp")
MEDIA_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+)?(;[\w.+-]+=[\w.+-]+)*;base64,", re.I)


@dataclass(frozen=True)
class DecodedImage:
    """Pixels of one image, upright (EXIF orientation applied), colour and alpha apart.

    `rgb` is ``(H, W, 3)`` and `alpha` is ``(H, W)`` or None; both ``uint8`` or both ``uint16``.
    `grayscale` remembers that the source had one colour channel, so it can be written back as such.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: ImageFormat
    grayscale: bool = False

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def bit_depth(self) -> int:
        return 16 if self.rgb.dtype == np.uint16 else 8


def decode_base64(text: str, *, field: str = "image") -> bytes:
    """Bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix.

    Both the standard and the URL-safe alphabet are accepted; whitespace is ignored.

    Raises:
        InvalidInput: the text is not valid base64 (bad padding, stray characters) or is empty.
    """
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    text = "".join(text.split())
    if not text:
        raise InvalidInput(f"`{field}` is empty: expected a base64-encoded image", field=field)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters in the text
        reason = "bad padding" if "padding" in str(exc).lower() else str(exc)
        raise InvalidInput(
            f"`{field}` is not valid base64 ({reason}); length {len(text)}", field=field
        ) from exc


def encode_base64(data: bytes) -> str:
    """Standard base64 text of `data` (no data-URL prefix, no line breaks)."""
    return base64.b64encode(data).decode("ascii")


def probe_image(
    data: bytes, *, field: str = "image", max_pixels: int | None = None
) -> tuple[ImageFormat, int, int]:
    """Format, width and height of an encoded image, read from its header only.

    Raises:
        UnsupportedFormat: not a PNG, JPEG or WebP file.
        ImageTooLarge: the header claims more pixels than `max_pixels` (default: the setting).
    """
    with _open(data, field) as im:
        fmt = _PIL_FORMATS[im.format or ""]
        width, height = im.size
    _check_pixels(width, height, field, max_pixels)
    return fmt, width, height


def decode_image(
    data: bytes, *, field: str = "image", max_pixels: int | None = None
) -> DecodedImage:
    """Decode PNG, JPEG or WebP bytes into upright pixels with colour and alpha apart.

    The size limits are checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing. 16-bit PNGs decode to ``uint16``, everything else to ``uint8``; palette,
    grayscale and CMYK images become RGB (`grayscale` remembers a single-channel source).

    Raises:
        InvalidInput: empty or truncated/corrupt data (`field` names the request field).
        UnsupportedFormat: not a PNG, JPEG or WebP file.
        ImageTooLarge: more bytes than ``max_image_bytes`` or more pixels than `max_pixels`.
    """
    _check_bytes(data, field)
    with _open(data, field) as im:
        fmt = _PIL_FORMATS[im.format or ""]
        _check_pixels(im.width, im.height, field, max_pixels)
        orientation = _orientation(im)
        if fmt == "png" and _png_is_16bit_colour(data):
            channels, grayscale = _decode_png16(data, field)
        else:
            channels, grayscale = _decode_pillow(im, field)
    channels = _apply_orientation(channels, orientation)
    rgb = np.ascontiguousarray(channels[..., :3])
    alpha = np.ascontiguousarray(channels[..., 3]) if channels.shape[2] == 4 else None
    return DecodedImage(rgb=rgb, alpha=alpha, format=fmt, grayscale=grayscale)


def _check_bytes(data: bytes, field: str) -> None:
    """Refuse empty data and more bytes than ``max_image_bytes`` (before anything is parsed)."""
    settings = get_settings()
    if not data:
        raise InvalidInput(f"`{field}` is empty: expected an encoded image", field=field)
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(
            f"`{field}` is {len(data)} bytes; the limit is {settings.max_image_bytes} bytes",
            field=field,
        )


def verify_image(
    data: bytes, *, field: str = "image", max_pixels: int | None = None
) -> tuple[ImageFormat, int, int]:
    """Check that an encoded image decodes completely; its format, width and height.

    The limits are checked from the header first, as in `decode_image`, so a bomb costs nothing.
    The pixels are then decoded once and dropped: this is the whole cost of refusing truncated or
    corrupt files at submit rather than failing the job later. JPEG is decoded at 1/8 scale (its
    DCT scaling still reads every coded block, so a cut-off file is found) and costs 1/64 of the
    memory; PNG and WebP have no such mode and take one full decode at 8 bits per channel.
    Width and height are those of the upright image (EXIF orientation applied), as
    `decode_image` returns it.

    Raises:
        InvalidInput: empty, truncated or corrupt data.
        UnsupportedFormat: not a PNG, JPEG or WebP file.
        ImageTooLarge: more bytes than ``max_image_bytes`` or more pixels than `max_pixels`.
    """
    _check_bytes(data, field)
    with _open(data, field) as im:
        fmt = _PIL_FORMATS[im.format or ""]
        width, height = im.size
        _check_pixels(width, height, field, max_pixels)
        if _orientation(im) in (5, 6, 7, 8):  # stored on its side: upright is transposed
            width, height = height, width
        if fmt == "jpeg":
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        _load(im, field)
    return fmt, width, height


def encode_image(
    image: DecodedImage | np.ndarray,
    fmt: ImageFormat = "png",
    *,
    quality: int = 95,
    lossless: bool = False,
) -> bytes:
    """Encode pixels as PNG, JPEG or WebP bytes.

    `image` is a `DecodedImage` or an ``(H, W, 3|4)`` / ``(H, W)`` ``uint8``/``uint16`` array.
    PNG keeps 16 bits and alpha; WebP keeps alpha (8 bits); JPEG has neither, so 16-bit data is
    rounded to 8 bits and an image with alpha is refused rather than silently flattened.

    Raises:
        InvalidInput: unknown format, bad quality, wrong array shape or dtype, alpha with JPEG.
    """
    if fmt not in FORMATS:
        raise InvalidInput(
            f"`format` must be one of {', '.join(FORMATS)} but is {fmt!r}", field="format"
        )
    if not 1 <= quality <= 100:
        raise InvalidInput(f"`quality` must be in 1..100 but is {quality}", field="quality")
    pixels, grayscale = _as_channels(image)
    has_alpha = pixels.shape[2] in (2, 4)
    if fmt == "jpeg" and has_alpha:
        raise InvalidInput(
            "JPEG cannot store alpha; encode as png or webp, or drop the alpha channel",
            field="format",
        )
    if grayscale and pixels.shape[2] in (3, 4):
        keep = [0, 3] if has_alpha else [0]
        pixels = pixels[..., keep]
    if pixels.dtype == np.uint16 and fmt == "png":
        return _encode_png16(pixels)
    if pixels.dtype == np.uint16:
        pixels = to_uint8(pixels)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    if fmt == "webp" and mode in ("L", "LA"):  # WebP has no gray modes
        pixels = pixels[..., [0, 0, 0, 1]] if mode == "LA" else pixels[..., [0, 0, 0]]
        mode = "RGBA" if mode == "LA" else "RGB"
    im = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode)
    out = io.BytesIO()
    if fmt == "png":
        im.save(out, "PNG", compress_level=6)
    elif fmt == "jpeg":
        im.save(out, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    else:
        # exact=True keeps the colour under fully transparent pixels, which WebP drops by default.
        im.save(out, "WEBP", quality=quality, lossless=lossless, method=4, exact=True)
    return out.getvalue()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Round ``uint16`` (or pass through ``uint8``) pixels to ``uint8``."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype != np.uint16:
        raise InvalidInput(f"pixels must be uint8 or uint16 but are {pixels.dtype}")
    # (v * 255 + 32767) // 65535 rounds to nearest without going through float.
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


# -- internals -------------------------------------------------------------------------------


class _open:
    """Context manager around `Image.open` that turns Pillow's errors into ours."""

    def __init__(self, data: bytes, field: str) -> None:
        self._data = data
        self._field = field
        self._im: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self._im = Image.open(io.BytesIO(self._data), formats=list(_PIL_FORMATS))
        except UnidentifiedImageError as exc:
            raise UnsupportedFormat(
                f"`{self._field}` is not a PNG, JPEG or WebP image "
                f"(starts with {self._data[:8]!r})",
                field=self._field,
            ) from exc
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise InvalidInput(
                f"`{self._field}` has a corrupt image header: {exc}", field=self._field
            ) from exc
        return self._im

    def __exit__(self, *exc_info: object) -> None:
        if self._im is not None:
            self._im.close()


def _check_pixels(width: int, height: int, field: str, max_pixels: int | None) -> None:
    limit = get_settings().max_image_pixels if max_pixels is None else max_pixels
    if width <= 0 or height <= 0:
        raise InvalidInput(f"`{field}` claims an empty size {width}x{height}", field=field)
    if width * height > limit:
        raise ImageTooLarge(
            f"`{field}` is {width}x{height} = {width * height} pixels; the limit is {limit} "
            "pixels (ASSETBOX_MAX_IMAGE_PIXELS)",
            field=field,
        )


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not make an otherwise valid image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    # Done on the array rather than with ImageOps.exif_transpose so that the 16-bit pypng path
    # and the Pillow path share one implementation.
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return np.rot90(pixels, k=2).transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def _load(im: Image.Image, field: str) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        msg = str(exc)
        kind = "truncated" if "truncat" in msg.lower() or isinstance(exc, EOFError) else "corrupt"
        raise InvalidInput(
            f"`{field}` is a {kind} {im.format} image and cannot be decoded: {msg}", field=field
        ) from exc


def _decode_pillow(im: Image.Image, field: str) -> tuple[np.ndarray, bool]:
    _load(im, field)
    mode = im.mode
    grayscale = mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
    if mode in ("I;16", "I;16B", "I;16L"):
        gray = np.asarray(im).astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2), True
    if mode == "I":  # 32-bit integer gray; PNG only produces it for 16-bit data
        gray = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2), True
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "LA" or mode == "PA":
        im = im.convert("RGBA")
    elif mode not in ("RGB", "RGBA"):
        im = im.convert("RGB")
    return np.asarray(im), grayscale


def _png_is_16bit_colour(data: bytes) -> bool:
    # IHDR is always the first chunk: 8-byte signature, 4 length, 4 type, 4 width, 4 height,
    # then bit depth (byte 24) and colour type (byte 25). Colour types 2 (RGB), 4 (gray+alpha)
    # and 6 (RGBA) at 16 bits are the ones Pillow truncates to 8 bits.
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    return data[24] == 16 and data[25] in (2, 4, 6)


def _decode_png16(data: bytes, field: str) -> tuple[np.ndarray, bool]:
    try:
        width, height, rows, info = png.Reader(bytes=data).asDirect()
        flat = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, zlib.error, ValueError, EOFError, struct.error) as exc:
        raise InvalidInput(
            f"`{field}` is a truncated or corrupt 16-bit PNG and cannot be decoded: {exc}",
            field=field,
        ) from exc
    planes = int(info["planes"])
    pixels = flat.reshape(height, width, planes)
    if planes == 2:  # gray + alpha
        return np.stack([pixels[..., 0]] * 3 + [pixels[..., 1]], axis=2), True
    return pixels, False


def _encode_png16(pixels: np.ndarray) -> bytes:
    height, width, planes = pixels.shape
    writer = png.Writer(
        width,
        height,
        greyscale=planes in (1, 2),
        alpha=planes in (2, 4),
        bitdepth=16,
        compression=6,
    )
    out = io.BytesIO()
    writer.write_array(out, np.ascontiguousarray(pixels).reshape(-1))
    return out.getvalue()


def _as_channels(image: DecodedImage | np.ndarray) -> tuple[np.ndarray, bool]:
    if isinstance(image, DecodedImage):
        rgb = image.rgb
        if image.alpha is not None:
            return np.concatenate([rgb, image.alpha[..., None]], axis=2), image.grayscale
        return rgb, image.grayscale
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise InvalidInput(
            f"pixels must have shape (H, W), (H, W, 1|2|3|4) but have {tuple(image.shape)}"
        )
    if pixels.dtype not in (np.uint8, np.uint16):
        raise InvalidInput(f"pixels must be uint8 or uint16 but are {pixels.dtype}")
    return pixels, False
