from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from assetbox.client import ApiError, Client
from assetbox.config import Settings
from assetbox.imaging import decode_image
from assetbox.server import create_app
from tests.utils.images import encode_pil, photo


@pytest.fixture
def api(builtin_store, tmp_path: Path):
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    settings = Settings(data_dir=data_dir, api_keys="secret")
    with TestClient(create_app(settings)) as http, Client(api_key="secret", http=http) as client:
        yield client


def test_client_upscale_follow_and_download(api: Client) -> None:
    png = encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56]))
    job = api.upscale(png, model="realesr-animevideov3-x2")
    events = list(api.events(job["id"]))
    assert events[-1]["data"]["status"] == "succeeded"
    assert api.wait(job["id"])["status"] == "succeeded"
    image = decode_image(api.output(job["id"]))
    assert (image.width, image.height) == (112, 80)
    assert job["id"] in [j["id"] for j in api.jobs(kind="upscale")]
    assert api.health()["status"] == "ok"
    assert len(api.models(architecture="ESRGAN")) == 2


def test_client_lists_a_jobs_units(api: Client) -> None:
    png = encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56]))
    job = api.wait(api.upscale(png, model="realesr-animevideov3-x2")["id"])
    units = api.units(job["id"])
    assert units == [{"index": 0, "status": "done", "attempts": 1}]
    assert len(units) == job["progress"]["total"]
    with pytest.raises(ApiError) as info:
        api.units("nope")
    assert info.value.status == 404


def test_client_raises_api_errors_with_the_field(api: Client) -> None:
    with pytest.raises(ApiError) as info:
        api.upscale(b"not an image")
    assert info.value.status == 415 and info.value.field == "image"
    with pytest.raises(ApiError, match="404 not_found"):
        api.job("nope")
