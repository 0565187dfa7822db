"""Where the UI is served: in the service at /ui (open while the API wants keys; off with
ASSETBOX_UI=false), and by `assetbox ui --server URL` from a second process."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from assetbox.cli import service_app
from assetbox.config import get_settings


def tabs(config: dict) -> list[str]:
    """The labels of the UI's tabs, in order, from Gradio's /config."""
    return [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]


def test_the_service_serves_the_ui_without_a_key_and_the_api_still_wants_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASSETBOX_API_KEYS", "secret-key")
    get_settings.cache_clear()
    with TestClient(service_app("127.0.0.1", 7000)) as client:
        page = client.get("/ui/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = client.get("/ui/config").json()
        assert tabs(config) == ["Generate", "Edit", "Tile Upscale", "Models", "Jobs"]
        assert client.get("/v1/jobs").status_code == 401
        ok = client.get("/v1/jobs", headers={"Authorization": "Bearer secret-key"})
        assert ok.status_code == 200


def test_the_ui_setting_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASSETBOX_UI", "false")
    get_settings.cache_clear()
    with TestClient(service_app("127.0.0.1", 7000)) as client:
        assert client.get("/ui/").status_code == 404
        assert client.get("/health").status_code == 200


def test_assetbox_ui_serves_the_same_ui_from_a_second_process(ui_server: str, relay_ui: str):
    assert httpx.get(relay_ui + "/", follow_redirects=False).headers["location"] == "/ui/"
    theirs = httpx.get(f"{ui_server}/ui/config").json()
    ours = httpx.get(f"{relay_ui}/ui/config").json()
    assert tabs(ours) == tabs(theirs) == ["Generate", "Edit", "Tile Upscale", "Models", "Jobs"]
    kinds = [(c["type"], c["props"].get("label")) for c in ours["components"]]
    assert kinds == [(c["type"], c["props"].get("label")) for c in theirs["components"]]
