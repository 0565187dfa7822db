"""Resampling of pixel arrays with Pillow's Lanczos filter, at any bit depth."""

from __future__ import annotations

import numpy as np
from PIL import Image

from assetbox.errors import InvalidInput


def resize_lanczos(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`pixels` (``(H, W)`` or ``(H, W, C)``; uint8, uint16 or float) resized to ``(w, h)``.

    8-bit colour goes through Pillow in one call; other depths are resized channel by channel
    in 32-bit float mode (Pillow has no 16-bit colour mode) and rounded back.

    Raises:
        InvalidInput: an empty target size or an unsupported array.
    """
    width, height = size
    if width < 1 or height < 1:
        raise InvalidInput(f"`size` must be at least 1x1 but is {width}x{height}", field="size")
    if pixels.shape[1::-1] == (width, height):
        return pixels.copy()
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] in (3, 4):
        mode = "RGB" if pixels.shape[2] == 3 else "RGBA"
        return np.asarray(
            Image.fromarray(pixels, mode).resize((width, height), Image.Resampling.LANCZOS)
        )
    planes = pixels[..., None] if pixels.ndim == 2 else pixels
    if planes.ndim != 3:
        raise InvalidInput(f"pixels must be (H, W) or (H, W, C) but are {pixels.shape}")
    out = np.empty((height, width, planes.shape[2]), dtype=pixels.dtype)
    for channel in range(planes.shape[2]):
        plane = Image.fromarray(planes[..., channel].astype(np.float32), "F")
        resized = np.asarray(plane.resize((width, height), Image.Resampling.LANCZOS))
        if pixels.dtype.kind == "u":
            top = np.iinfo(pixels.dtype).max
            resized = np.clip(np.rint(resized), 0, top)
        out[..., channel] = resized
    return out[..., 0] if pixels.ndim == 2 else out
