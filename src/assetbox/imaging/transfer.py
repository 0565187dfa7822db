"""Conversion between stored pixel values and float32 working values, in sRGB or linear light.

Blending averages light, so colour is averaged in linear light: averaging sRGB-encoded values
darkens edges where tiles disagree. Alpha and other non-colour channels use ``"linear"`` (values are
only scaled to 0..1, never gamma-decoded).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np

from assetbox.errors import InvalidInput

Transfer = Literal["srgb", "linear"]


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0..1 to linear light (IEC 61966-2-1), float32."""
    v = np.asarray(values, dtype=np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear-light values in 0..1 to sRGB encoding, float32 (clipped to 0..1 first)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    low = v * np.float32(12.92)
    # np.power on the whole array is fine: the low branch is selected afterwards.
    high = np.float32(1.055) * np.power(v, np.float32(1 / 2.4)) - np.float32(0.055)
    return np.where(v <= 0.0031308, low, high).astype(np.float32)


@cache
def _decode_lut(bits: int, transfer: Transfer) -> np.ndarray:
    levels = np.arange(2**bits, dtype=np.float64) / (2**bits - 1)
    if transfer == "srgb":
        levels = np.where(levels <= 0.04045, levels / 12.92, ((levels + 0.055) / 1.055) ** 2.4)
    lut = levels.astype(np.float32)
    lut.flags.writeable = False
    return lut


def to_working(pixels: np.ndarray, transfer: Transfer = "srgb") -> np.ndarray:
    """Stored pixels (``uint8``, ``uint16`` or float 0..1) as float32 working values.

    Integer inputs go through a lookup table, which is exact and several times faster than
    evaluating the transfer function per pixel.

    Raises:
        InvalidInput: an unsupported dtype.
    """
    if pixels.dtype == np.uint8:
        return _decode_lut(8, transfer)[pixels]
    if pixels.dtype == np.uint16:
        return _decode_lut(16, transfer)[pixels]
    if np.issubdtype(pixels.dtype, np.floating):
        v = np.clip(pixels.astype(np.float32, copy=False), 0.0, 1.0)
        return srgb_to_linear(v) if transfer == "srgb" else v
    raise InvalidInput(f"pixels must be uint8, uint16 or float but are {pixels.dtype}")


@cache
def _encode_lut_8bit() -> np.ndarray:
    # Linear values quantised to 16 bits index an 8-bit sRGB table. The sRGB curve is at most
    # 12.92 steep, so a table step moves the result by under 0.06 of an 8-bit level: it rounds
    # like the formula except within 0.06 of a half level, and is several times faster.
    linear = np.arange(65536, dtype=np.float64) / 65535
    srgb = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    lut = np.rint(srgb * 255).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def from_working(
    values: np.ndarray, dtype: np.dtype | type = np.uint8, transfer: Transfer = "srgb"
) -> np.ndarray:
    """Float32 working values back to stored pixels of `dtype` (rounded to nearest).

    Raises:
        InvalidInput: an unsupported dtype.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8 and transfer == "srgb":
        index = np.clip(values, 0.0, 1.0) * np.float32(65535)
        index += np.float32(0.5)
        return _encode_lut_8bit()[index.astype(np.uint16)]
    encoded = linear_to_srgb(values) if transfer == "srgb" else np.clip(values, 0.0, 1.0)
    if dtype == np.uint8 or dtype == np.uint16:
        top = np.float32(np.iinfo(dtype).max)
        return np.rint(encoded * top).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        return encoded.astype(dtype, copy=False)
    raise InvalidInput(f"output dtype must be uint8, uint16 or float but is {dtype}")
