"""ASSETBOX_NSFW over HTTP: the GAN upscale of the astronaut photo keeps her face, which the real
detector finds; with FACE_FEMALE among the flagged classes `flag` marks the output and `block`
fails the job. Without the extra the service refuses to start."""

from __future__ import annotations

import base64
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data

from assetbox.config import Settings, get_settings
from assetbox.errors import ModelError
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app
from assetbox.testing.tiny_models import write
from tests.utils.images import encode_pil


@pytest.fixture
def data_dir(builtin_store, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    return data_dir


def serve(monkeypatch: pytest.MonkeyPatch, data_dir: Path, mode: str, classes: str | None):
    # The kinds read the check's setting from the environment (as they do the image limits).
    monkeypatch.setenv("ASSETBOX_NSFW", mode)
    if classes:
        monkeypatch.setenv("ASSETBOX_NSFW_CLASSES", classes)
    get_settings.cache_clear()
    return TestClient(create_app(Settings(data_dir=data_dir)))


def astronaut_b64() -> str:
    small = Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.LANCZOS)
    return base64.b64encode(encode_pil(np.asarray(small))).decode()


def upscale(client: TestClient, **fields) -> dict:
    body = {"image": astronaut_b64(), "model": "realesr-animevideov3-x2"} | fields
    response = client.post("/v1/upscale", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("classes", "detected"), [(None, False), ("FACE_FEMALE,ANUS_EXPOSED", True)]
)
def test_flag_reports_the_detections_on_the_stored_output(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, classes: str | None, detected: bool
) -> None:
    with serve(monkeypatch, data_dir, "flag", classes) as client:
        job = upscale(client)
        assert job["status"] == "succeeded", job
        stored = client.get(f"/v1/jobs/{job['id']}").json()
    (output,) = stored["outputs"]
    assert (output["width"], output["height"]) == (256, 256)
    assert output["nsfw_detected"] is detected
    (face,) = [d for d in output["nsfw_detections"] if d["label"] == "FACE_FEMALE"]
    assert face["score"] > 0.5 and 0 <= face["box"][0] < 256
    assert (output["nsfw_score"] > 0.5) is detected


def test_block_fails_the_job_and_stores_no_output(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    with serve(monkeypatch, data_dir, "block", "FACE_FEMALE") as client:
        job = upscale(client)
    assert job["status"] == "failed" and job["outputs"] == []
    assert job["error"]["code"] == "nsfw_blocked"
    assert "ASSETBOX_NSFW=block" in job["error"]["message"]
    assert "FACE_FEMALE" in job["error"]["message"]
    assert not list((data_dir / "jobs" / job["id"]).glob("outputs/*"))


def test_without_the_extra_the_service_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nudenet" else find_spec(name, *a),
    )
    with (
        pytest.raises(ModelError, match="ASSETBOX_NSFW=flag needs the `nsfw` extra"),
        serve(monkeypatch, data_dir, "flag", None),
    ):
        pass


@pytest.mark.usefixtures("one_thread")
def test_generate_and_the_diffusion_upscale_are_checked(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    import_model(ModelStore(data_dir / "models"), write("sd15", tmp_path / "tiny")[0])
    with serve(monkeypatch, data_dir, "flag", "FACE_FEMALE") as client:
        body = {"model": "tiny-sd15", "prompts": ["a face"], "width": 64, "height": 64}
        generated = client.post(
            "/v1/generate", json=body | {"steps": 1, "seed": 3}, headers={"Prefer": "wait=120"}
        ).json()
        # Strength 0 keeps the Lanczos pre-upscale, and with it her face.
        tiled = upscale(
            client, model="tiny-sd15", mode="diffusion", scale=2, tile=256, strength=0, steps=1
        )
    assert generated["status"] == "succeeded", generated
    (noise,) = generated["outputs"]
    assert noise["nsfw_detected"] is False and noise["nsfw_score"] == 0.0  # random pixels
    assert tiled["status"] == "succeeded", tiled
    (face,) = tiled["outputs"]
    assert (face["width"], face["height"]) == (256, 256)
    assert face["nsfw_detected"] is True and face["nsfw_score"] > 0.5
