from __future__ import annotations

import pytest

from assetbox import errors


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_an_assetbox_error_with_its_own_code(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.AssetboxError)
    assert cls.code


def test_codes_are_unique() -> None:
    codes = [getattr(errors, name).code for name in errors.__all__]
    assert len(codes) == len(set(codes))


def test_invalid_input_carries_the_field() -> None:
    exc = errors.InvalidInput("`overlap` must be 0 or more but is -1", field="overlap")
    assert exc.field == "overlap"
    assert str(exc) == exc.message


def test_queue_full_carries_retry_after() -> None:
    assert errors.QueueFull("full", retry_after_s=2.5).retry_after_s == 2.5
