"""Factories for test images: real photos from scikit-image and hand-made encoded files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import png
from PIL import Image


def photo(name: str = "astronaut") -> np.ndarray:
    """A real RGB photo from scikit-image (``astronaut``, ``chelsea``, ``coffee``)."""
    from skimage import data

    return np.ascontiguousarray(getattr(data, name)()[..., :3])


def encode_pil(pixels: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **save)
    return out.getvalue()


def encode_png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written with pypng (Pillow cannot write 16-bit colour)."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, planes = pixels.shape
    writer = png.Writer(
        width, height, greyscale=planes in (1, 2), alpha=planes in (2, 4), bitdepth=16
    )
    out = io.BytesIO()
    writer.write_array(out, pixels.astype(np.uint16).reshape(-1))
    return out.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header claims `width` x `height` RGB pixels, with ~1 KB of data.

    Decoding it fully would need width * height * 3 bytes (30 GB for the default).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (width * 3)
    idat = zlib.compress(row * 2, 9)  # a couple of rows; the rest is "missing"
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """A small JPEG whose frame header is patched to claim `width` x `height`."""
    data = bytearray(encode_pil(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)
