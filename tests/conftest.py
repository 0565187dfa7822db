from __future__ import annotations

import pytest

from assetbox.config import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Each test reads settings anew, with its own data directory."""
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
