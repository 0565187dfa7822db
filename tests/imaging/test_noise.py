from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assetbox.errors import InvalidInput
from assetbox.imaging import batch_noise, noise, noise_field
from assetbox.imaging.noise import philox4x32

# Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors):
# counter, key, output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF,) * 4,
        (0xFFFFFFFF,) * 2,
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected) -> None:
    assert tuple(int(word) for word in philox4x32(counter, key)) == expected


def test_philox_is_elementwise_over_arrays() -> None:
    counters = [np.array([c[i] for c, _, _ in PHILOX_KAT[:1]] * 3) for i in range(4)]
    words = philox4x32(counters, (0, 0))
    assert all((w == e).all() for w, e in zip(words, PHILOX_KAT[0][2], strict=True))


def test_values_are_box_muller_of_the_philox_words() -> None:
    """The field is what the module says, to float32 precision, with libm as the reference."""
    seed, x, y, w, h = 7, 1000, 2000, 5, 3
    field = noise_field(seed, x, y, w, h, 4)
    col = np.arange(x, x + w, dtype=np.uint64)
    row = np.arange(y, y + h, dtype=np.uint64)[:, None]
    for pair in range(2):
        w0, w1, w2, w3 = philox4x32((col, row, pair, 0), (seed, 0x6E6F6973))
        u1 = 1.0 - ((w0 << np.uint64(21)) | (w1 >> np.uint64(11))).astype(np.float64) * 2.0**-53
        u2 = ((w2 << np.uint64(21)) | (w3 >> np.uint64(11))).astype(np.float64) * 2.0**-53
        radius = np.sqrt(-2 * np.log(u1))
        np.testing.assert_allclose(field[2 * pair], radius * np.cos(2 * np.pi * u2), atol=1e-6)
        np.testing.assert_allclose(field[2 * pair + 1], radius * np.sin(2 * np.pi * u2), atol=1e-6)


def test_values_are_pinned() -> None:
    """Resumed jobs and old results depend on these exact bits: the field must never change."""
    field = noise_field(0, 0, 0, 2, 1, 3)
    # Shortest float32 reprs: each decimal reads back as exactly one float32.
    expected = np.array(
        [[[-0.8510674, 0.42098457]], [[0.57603955, -0.26579827]], [[0.8092491, -0.38790718]]],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(field, expected)


window = st.tuples(
    st.integers(0, 2**20),  # x
    st.integers(0, 2**20),  # y
    st.integers(1, 40),  # width
    st.integers(1, 40),  # height
)


@given(seed=st.integers(0, 2**32 - 1), a=window, channels=st.integers(1, 9), data=st.data())
@settings(max_examples=60, deadline=None)
def test_overlapping_windows_agree_bit_for_bit(seed, a, channels, data) -> None:
    ax, ay, aw, ah = a
    bw, bh = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    # Any placement of the second window that overlaps the first by at least one pixel.
    bx = data.draw(st.integers(max(ax - bw + 1, 0), ax + aw - 1))
    by = data.draw(st.integers(max(ay - bh + 1, 0), ay + ah - 1))
    left, right = max(ax, bx), min(ax + aw, bx + bw)
    top, bottom = max(ay, by), min(ay + ah, by + bh)
    first = noise_field(seed, ax, ay, aw, ah, channels)
    second = noise_field(seed, bx, by, bw, bh, channels)
    overlap_a = first[:, top - ay : bottom - ay, left - ax : right - ax]
    overlap_b = second[:, top - by : bottom - by, left - bx : right - bx]
    assert overlap_a.size > 0
    assert overlap_a.tobytes() == overlap_b.tobytes()


def test_a_window_is_a_slice_of_a_larger_window() -> None:
    large = noise_field(3, 500, 700, 64, 48, 16)
    small = noise_field(3, 517, 730, 9, 11, 16)
    np.testing.assert_array_equal(small, large[:, 30:41, 17:26])


def test_a_channel_does_not_depend_on_the_channel_count() -> None:
    # Channels are made in pairs: an odd count must not change the even channel of its pair.
    four = noise_field(11, 0, 0, 8, 8, 4)
    for channels in (1, 2, 3):
        np.testing.assert_array_equal(noise_field(11, 0, 0, 8, 8, channels), four[:channels])


@pytest.mark.parametrize("step", [1, 7, 64])
def test_generating_in_steps_gives_the_same_bits(monkeypatch, step: int) -> None:
    whole = noise_field(9, 40, 50, 24, 20, 5)
    monkeypatch.setattr(noise, "_STEP_PAIRS", step)
    np.testing.assert_array_equal(noise_field(9, 40, 50, 24, 20, 5), whole)


def test_far_coordinates_are_allowed() -> None:
    far = noise_field(1, 2**32 - 8, 2**32 - 8, 8, 8, 2)
    assert far.shape == (2, 8, 8)
    np.testing.assert_array_equal(far[:, 4:, 4:], noise_field(1, 2**32 - 4, 2**32 - 4, 4, 4, 2))


def test_calls_are_deterministic_and_float32() -> None:
    first = noise_field(42, 10, 20, 32, 16, 4)
    assert first.dtype == np.float32 and first.shape == (4, 16, 32)
    np.testing.assert_array_equal(first, noise_field(42, 10, 20, 32, 16, 4))


def test_seeds_give_unrelated_fields() -> None:
    fields = [noise_field(seed, 0, 0, 128, 128, 4).ravel() for seed in (0, 1, 2**32 - 1)]
    for i in range(len(fields)):
        for j in range(i):
            assert not np.array_equal(fields[i], fields[j])
            assert abs(np.corrcoef(fields[i], fields[j])[0, 1]) < 0.02


def test_batch_stacks_the_windows() -> None:
    boxes = [(0, 0, 16, 8), (12, 0, 16, 8), (0, 6, 16, 8)]
    batch = batch_noise(5, boxes, 4)
    assert batch.shape == (3, 4, 8, 16)
    for box, window_ in zip(boxes, batch, strict=True):
        np.testing.assert_array_equal(window_, noise_field(5, *box, channels=4))


def _normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize(("seed", "x", "y"), [(0, 0, 0), (123456789, 2**20, 3 * 2**19)])
def test_field_is_standard_normal_and_uncorrelated(seed: int, x: int, y: int) -> None:
    field = noise_field(seed, x, y, 256, 256, 4).astype(np.float64)
    values = field.ravel()
    assert abs(values.mean()) < 0.01
    assert abs(values.std() - 1) < 0.01
    # Empirical CDF against the normal CDF at a few quantiles (a KS-like check; the standard
    # error at n = 262144 is below 0.001).
    for z in (-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3):
        assert abs((values <= z).mean() - _normal_cdf(z)) < 0.004, z
    # Neighbours in x and y, and across every pair of channels (0/1 and 2/3 share Box-Muller
    # pairs: check their squares too, which would show a shared radius).
    assert abs(np.corrcoef(field[:, :, 1:].ravel(), field[:, :, :-1].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(field[:, 1:].ravel(), field[:, :-1].ravel())[0, 1]) < 0.01
    for i in range(4):
        for j in range(i):
            assert abs(np.corrcoef(field[i].ravel(), field[j].ravel())[0, 1]) < 0.01
            assert abs(np.corrcoef(field[i].ravel() ** 2, field[j].ravel() ** 2)[0, 1]) < 0.01


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"width": 0}, "width"),
        ({"height": 0}, "height"),
        ({"channels": 0}, "channels"),
        ({"x": -1}, "x"),
        ({"y": 2**32 - 3}, "y"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, field: str) -> None:
    args = {"seed": 0, "x": 0, "y": 0, "width": 4, "height": 4, "channels": 4} | kwargs
    with pytest.raises(InvalidInput) as info:
        noise_field(**args)
    assert info.value.field == field


def test_a_batch_needs_boxes_of_one_size() -> None:
    with pytest.raises(InvalidInput, match="one size"):
        batch_noise(0, [(0, 0, 8, 8), (8, 0, 8, 16)], 4)
    with pytest.raises(InvalidInput, match="at least one"):
        batch_noise(0, [], 4)
