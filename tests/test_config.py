from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from assetbox.config import Settings, get_settings


def test_data_dir_defaults_to_dot_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASSETBOX_DATA_DIR", raising=False)
    assert Settings().data_dir == Path("./data")


def test_settings_read_the_assetbox_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("ASSETBOX_MAX_IMAGE_PIXELS", "1234")
    monkeypatch.setenv("MAX_IMAGE_PIXELS", "1")  # without the prefix: ignored
    settings = Settings()
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.max_image_pixels == 1234


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSETBOX_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ValidationError, match="max_image_pixels"):
        Settings()


def test_get_settings_is_cached_until_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    assert get_settings() is first
    monkeypatch.setenv("ASSETBOX_MAX_IMAGE_PIXELS", "99")
    get_settings.cache_clear()
    assert get_settings().max_image_pixels == 99
