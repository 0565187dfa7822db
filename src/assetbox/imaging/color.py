"""Colour fix: give a processed image the colours of a reference while keeping its detail.

Diffusion passes drift in colour. The wavelet fix (as in StableSR) splits both images into low and
high frequencies with an a-trous blur and keeps the target's high frequencies over the reference's
low frequencies; AdaIN matches per-channel mean and standard deviation instead. Both work band by
band, so their memory does not grow with the canvas.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from assetbox.errors import InvalidInput
from assetbox.imaging.transfer import from_working, to_working

ColorFix = Literal["wavelet", "adain"]
COLOR_FIXES: tuple[ColorFix, ...] = ("wavelet", "adain")


def _atrous_blur(values: np.ndarray, dilation: int) -> np.ndarray:
    # The dilated [1/4, 1/2, 1/4] kernel (StableSR's wavelet_blur) is three shifted adds per axis.
    # Written out because scipy's correlate1d would multiply the 2*dilation zeros of a dilated
    # kernel too, and PyWavelets has no a-trous transform with this kernel.
    d = dilation
    padded = np.pad(values, ((d, d), (0, 0), (0, 0)), mode="edge")
    vertical = 0.25 * padded[: -2 * d] + 0.5 * padded[d:-d] + 0.25 * padded[2 * d :]
    padded = np.pad(vertical, ((0, 0), (d, d), (0, 0)), mode="edge")
    return 0.25 * padded[:, : -2 * d] + 0.5 * padded[:, d:-d] + 0.25 * padded[:, 2 * d :]


def low_frequencies(values: np.ndarray, levels: int = 5) -> np.ndarray:
    """The low-frequency part of an ``(H, W, C)`` float array after `levels` a-trous blurs."""
    low = values.astype(np.float32, copy=False)
    for level in range(levels):
        low = _atrous_blur(low, 2**level)
    return low


def _check_pair(target: np.ndarray, reference: np.ndarray, levels: int, band_rows: int) -> None:
    if target.ndim != 3 or target.shape[2] not in (1, 3):
        raise InvalidInput(
            f"`target` must have shape (H, W, 1|3) but has {target.shape}", field="target"
        )
    if reference.shape != target.shape:
        raise InvalidInput(
            f"`reference` must have the target's shape {target.shape} but has {reference.shape}",
            field="reference",
        )
    if not 1 <= levels <= 10:
        raise InvalidInput(f"`levels` must be in 1..10 but is {levels}", field="levels")
    if band_rows < 1:
        raise InvalidInput(f"`band_rows` must be at least 1 but is {band_rows}", field="band_rows")


def wavelet_color_fix(
    target: np.ndarray, reference: np.ndarray, *, levels: int = 5, band_rows: int = 512
) -> np.ndarray:
    """`target`'s high frequencies over `reference`'s low frequencies, in `target`'s dtype.

    Both are ``(H, W, 3)`` (or 1 channel) ``uint8``/``uint16``/float 0..1, sRGB-encoded, same shape.
    Works in bands of `band_rows` rows with a halo as wide as the blur's reach, so the result is
    the same as on the whole image.

    Raises:
        InvalidInput: mismatched shapes, or `levels`/`band_rows` out of range.
    """
    _check_pair(target, reference, levels, band_rows)
    halo = 2**levels - 1  # reach of `levels` blurs with dilations 1, 2, 4, ...
    height = target.shape[0]
    out = np.empty_like(target)
    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        lo, hi = max(0, y0 - halo), min(height, y1 + halo)
        t = to_working(target[lo:hi], "linear")
        r = to_working(reference[lo:hi], "linear")
        fixed = t - low_frequencies(t, levels) + low_frequencies(r, levels)
        out[y0:y1] = from_working(fixed[y0 - lo : y1 - lo], out.dtype, "linear")
    return out


def adain_color_fix(
    target: np.ndarray, reference: np.ndarray, *, band_rows: int = 512
) -> np.ndarray:
    """`target` with each channel's mean and standard deviation set to `reference`'s.

    Raises:
        InvalidInput: mismatched shapes or a bad `band_rows`.
    """
    _check_pair(target, reference, 1, band_rows)
    t_mean, t_std = _channel_stats(target, band_rows)
    r_mean, r_std = _channel_stats(reference, band_rows)
    gain = (r_std / np.maximum(t_std, 1e-6)).astype(np.float32)
    offset = (r_mean - t_mean * gain).astype(np.float32)
    out = np.empty_like(target)
    for y0 in range(0, target.shape[0], band_rows):
        t = to_working(target[y0 : y0 + band_rows], "linear")
        out[y0 : y0 + band_rows] = from_working(t * gain + offset, out.dtype, "linear")
    return out


def _channel_stats(pixels: np.ndarray, band_rows: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.zeros(pixels.shape[2], dtype=np.float64)
    squares = np.zeros(pixels.shape[2], dtype=np.float64)
    for y0 in range(0, pixels.shape[0], band_rows):
        band = to_working(pixels[y0 : y0 + band_rows], "linear").astype(np.float64)
        total += band.sum(axis=(0, 1))
        squares += np.square(band).sum(axis=(0, 1))
    count = pixels.shape[0] * pixels.shape[1]
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def color_fix(
    target: np.ndarray,
    reference: np.ndarray,
    method: ColorFix = "wavelet",
    *,
    levels: int = 5,
    band_rows: int = 512,
) -> np.ndarray:
    """Apply the colour fix named by `method` (`levels` is used by ``"wavelet"`` only).

    Raises:
        InvalidInput: an unknown method or bad inputs (see the method's function).
    """
    if method == "wavelet":
        return wavelet_color_fix(target, reference, levels=levels, band_rows=band_rows)
    if method == "adain":
        return adain_color_fix(target, reference, band_rows=band_rows)
    raise InvalidInput(
        f"`color_fix` must be one of {', '.join(COLOR_FIXES)} but is {method!r}",
        field="color_fix",
    )
