"""One infinite Gaussian noise field per seed, cut into windows without materialising the rest.

The tiled diffusion upscale starts every tile from noise cut out of one global field keyed on
``(seed, x, y, channel)`` in latent pixels, so two overlapping tiles start from exactly the same
noise where they overlap, whichever order or worker computes them.

Why hand-written: numpy's ``Generator`` (on Philox or any other bit generator) produces a
*stream*; the value at an arbitrary ``(x, y)`` is only reachable by jumping to that position and
drawing sequentially, one Python-level generator per row, and its ``standard_normal`` consumes a
variable number of draws per value (ziggurat rejection), so positions do not map to draws at all.
``randomgen`` and ``jax.random`` have the same stream or key-splitting shape, and none of these
is a vectorised "value at counter" function. So the field uses the counter-based generator those
libraries are built on, Philox4x32-10 (Salmon et al., SC'11, the Random123 family; also the
generator of cuRAND and of torch on CUDA), applied directly: counter ``(x, y, channel pair, 0)``,
key ``(seed, tag)``, 128 random bits per counter. It is checked against Random123's published
known-answer vectors in the tests.

The 128 bits make two 53-bit uniforms and, through Box-Muller, two independent normals: one for
the even channel of the pair and one for the odd. The logarithm, sine and cosine are evaluated
with series in float64 using only operations IEEE 754 rounds exactly (``+ - * /``, ``sqrt``,
``floor``, ``frexp``), never libm or numpy's SIMD transcendental kernels, whose last bits differ
between CPUs and code paths; a value is therefore the same bits on every machine, in every window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from assetbox.errors import InvalidInput

# Largest seed and coordinate + 1: each is one 32-bit word of Philox's key or counter.
_WORD = 1 << 32
_MASK = np.uint64(_WORD - 1)

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_PHILOX_ROUNDS = 10

# The key's second word, so the field never shares a Philox key with a torch/cuRAND stream of
# the same seed (their key is the 64-bit seed: (seed, 0) for seeds below 2**32).
_FIELD_TAG = 0x6E6F6973  # "nois"

# Counters computed per step (see `_windows`).
_STEP_PAIRS = 1 << 18

_LN2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
# ln m = 2 atanh(s), s = (m - 1) / (m + 1): 2 (s + s^3/3 + ... + s^17/17); |s| <= 0.172 for
# m in [sqrt(1/2), sqrt(2)), so the first term left out is below 3e-15 of the result.
_ATANH = tuple(2.0 / (2 * k + 1) for k in range(9))
# Taylor series of sin and cos on [-pi/4, pi/4]; the first term left out is below 1e-16.
_SIN = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(8))
_COS = tuple((-1) ** k / math.factorial(2 * k) for k in range(9))


def philox4x32(counter: Sequence[np.ndarray | int], key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 of each counter under `key`: four ``uint64`` arrays of 32-bit words.

    `counter` is four arrays (or ints) of 32-bit words, broadcast together; `key` two words.
    """
    c0, c1, c2, c3 = (np.asarray(word, dtype=np.uint64) for word in counter)
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0, k1 = key
    for round_ in range(_PHILOX_ROUNDS):
        if round_:
            k0, k1 = (k0 + _PHILOX_W0) % _WORD, (k1 + _PHILOX_W1) % _WORD
        # Both factors are below 2**32, so the 64-bit product is exact: no wrapping.
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
            p1 & _MASK,
            (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
            p0 & _MASK,
        )
    return c0, c1, c2, c3


def _uniform53(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """The top 53 bits of two 32-bit words as a float64 in [0, 1) (exact)."""
    bits = (high << np.uint64(21)) | (low >> np.uint64(11))
    return bits.astype(np.float64) * 2.0**-53


def _poly(x: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """``sum(c_k * x**k)`` by Horner's rule."""
    result = np.full_like(x, coefficients[-1])
    for c in coefficients[-2::-1]:
        result *= x
        result += c
    return result


def _log(u: np.ndarray) -> np.ndarray:
    """Natural log of positive, normal float64s, from exactly rounded operations only."""
    m, e = np.frexp(u)  # u = m * 2**e, m in [1/2, 1): both exact
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e)
    s = (m - 1.0) / (m + 1.0)
    return e * _LN2 + s * _poly(s * s, _ATANH)


def _cos_sin_2pi(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``cos(2 pi u)`` and ``sin(2 pi u)`` for u in [0, 1), from exactly rounded operations only."""
    t = u * 4.0  # exact: a power of two
    quarter = np.floor(t + 0.5)  # nearest quarter turn; the rest is within +-1/8 turn
    phi = (t - quarter) * (math.pi / 2)  # t - quarter is exact
    phi2 = phi * phi
    sin = phi * _poly(phi2, _SIN)
    cos = _poly(phi2, _COS)
    q = quarter.astype(np.int64) % 4
    # cos/sin of (q * pi/2 + phi): rotate (cos phi, sin phi) by q quarter turns.
    cos_out = np.choose(q, (cos, -sin, -cos, sin))
    sin_out = np.choose(q, (sin, cos, -sin, -cos))
    return cos_out, sin_out


def _check_seed(seed: int) -> None:
    if not 0 <= seed < _WORD:
        raise InvalidInput(f"`seed` must be in 0..{_WORD - 1} but is {seed}", field="seed")


def _check_size(width: int, height: int, channels: int) -> None:
    for name, value in (("width", width), ("height", height), ("channels", channels)):
        if value < 1:
            raise InvalidInput(f"`{name}` must be at least 1 but is {value}", field=name)


def _check_origin(x: int, y: int, width: int, height: int) -> None:
    for name, start, size in (("x", x, width), ("y", y, height)):
        if start < 0 or start + size > _WORD:
            raise InvalidInput(
                f"`{name}` .. `{name}` + size must lie in 0..{_WORD} but is "
                f"{start} .. {start + size}",
                field=name,
            )


def _pairs(seed: int, x: int, y: int, width: int, height: int, pairs: int) -> np.ndarray:
    """Both normals of each channel pair at ``(x.., y..)``: float32 ``(2 * pairs, h, w)``."""
    col = np.arange(x, x + width, dtype=np.uint64)
    row = np.arange(y, y + height, dtype=np.uint64)[:, None]
    pair = np.arange(pairs, dtype=np.uint64)[:, None, None]
    w0, w1, w2, w3 = philox4x32((col, row, pair, 0), (seed, _FIELD_TAG))
    u1 = 1.0 - _uniform53(w0, w1)  # exact, in (0, 1]: the log stays finite
    u2 = _uniform53(w2, w3)
    radius = np.sqrt(-2.0 * _log(u1))
    cos, sin = _cos_sin_2pi(u2)
    out = np.empty((2 * pairs, height, width), dtype=np.float32)
    out[0::2] = radius * cos  # even channel of each pair
    out[1::2] = radius * sin  # odd channel
    return out


def _windows(
    seed: int, boxes: Sequence[tuple[int, int]], width: int, height: int, channels: int
) -> np.ndarray:
    """Windows at origins ``(x, y)``: float32 ``(len(boxes), channels, height, width)``."""
    pairs = (channels + 1) // 2
    out = np.empty((len(boxes), channels, height, width), dtype=np.float32)
    # A few rows at a time: the float64 and uint64 temporaries stay near _STEP_PAIRS each,
    # whatever the window's size. Values are elementwise, so the steps do not change them.
    rows = max(1, _STEP_PAIRS // (pairs * width))
    for n, (x, y) in enumerate(boxes):
        for top in range(0, height, rows):
            step = min(rows, height - top)
            out[n, :, top : top + step] = _pairs(seed, x, y + top, width, step, pairs)[:channels]
    return out


def noise_field(seed: int, x: int, y: int, width: int, height: int, channels: int) -> np.ndarray:
    """Standard normal noise of the window at ``(x, y)`` of the field of `seed`.

    Returns float32 ``(channels, height, width)``; the value at ``[c, j, i]`` depends only on
    ``(seed, x + i, y + j, c)``, so any two windows agree bit for bit where they overlap.

    Raises:
        InvalidInput: a seed outside 0..2**32-1, a size below 1, or a window not inside
            0..2**32 on either axis.
    """
    _check_seed(seed)
    _check_size(width, height, channels)
    _check_origin(x, y, width, height)
    return _windows(seed, [(x, y)], width, height, channels)[0]


def batch_noise(seed: int, boxes: Sequence[tuple[int, int, int, int]], channels: int) -> np.ndarray:
    """`noise_field` of each ``(x, y, width, height)`` box, stacked: ``(n, channels, h, w)``.

    Raises:
        InvalidInput: no boxes, boxes of different sizes (a batch has one shape), or any
            argument `noise_field` refuses.
    """
    _check_seed(seed)
    if not boxes:
        raise InvalidInput("`boxes` must hold at least one box", field="boxes")
    sizes = {(w, h) for _, _, w, h in boxes}
    if len(sizes) > 1:
        raise InvalidInput(
            f"`boxes` must all have one size but have {sorted(sizes)}", field="boxes"
        )
    ((width, height),) = sizes
    _check_size(width, height, channels)
    for x, y, _, _ in boxes:
        _check_origin(x, y, width, height)
    return _windows(seed, [(x, y) for x, y, _, _ in boxes], width, height, channels)
