"""What every job-creating POST answers (`Location`), and the upscale kind's submit-time
refusals: each names its field and queues nothing."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.kinds import PLANNERS
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app
from tests.utils.images import encode_pil, photo

UPSCALER = "realesr-animevideov3-x2"


@pytest.fixture
def data_dir(builtin_store, tiny_models: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    import_model(ModelStore(data_dir / "models"), tiny_models / "tiny-sd15")
    return data_dir


@pytest.fixture
def queued_client(data_dir: Path):
    """An engine that runs nothing: a 202 stays 202 and the queue shows what was accepted."""
    settings = Settings(data_dir=data_dir)
    engine = Engine(planners=PLANNERS, settings=settings, start=False)
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client
    engine.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def png() -> bytes:
    return encode_pil(np.ascontiguousarray(photo("chelsea")[:48, :64]))


def test_every_job_post_answers_with_the_jobs_location(
    queued_client: TestClient, png: bytes
) -> None:
    posts = {
        "/v1/upscale": {"image": b64(png), "model": UPSCALER},
        "/v1/generate": {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64},
        "/v1/edit": {"model": "tiny-sd15", "image": b64(png), "steps": 2},
    }
    for path, body in posts.items():
        response = queued_client.post(path, json=body)
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
        assert (
            queued_client.get(response.headers["Location"]).json()["id"] == (response.json()["id"])
        )
    upload = queued_client.post(
        "/v1/upscale", files={"image": ("a.png", png, "image/png")}, data={"model": UPSCALER}
    )
    assert upload.headers["Location"] == f"/v1/jobs/{upload.json()['id']}"
    documented = queued_client.get("/openapi.json").json()["paths"]
    for path in posts:
        for status in ("200", "202"):
            assert "Location" in documented[path]["post"]["responses"][status]["headers"]


def test_prefer_wait_answers_200_with_the_location(data_dir: Path, png: bytes) -> None:
    with TestClient(create_app(Settings(data_dir=data_dir))) as client:
        response = client.post(
            "/v1/upscale",
            json={"image": b64(png), "model": UPSCALER},
            headers={"Prefer": "wait=60"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 3 // 4]


@pytest.mark.parametrize(
    ("change", "status", "field", "words"),
    [
        ({"model": "no-such-upscaler"}, 404, "model", ["no-such-upscaler", "realesrgan-x4plus"]),
        ({"model": "tiny-sd15"}, 422, "model", ["upscaler", "checkpoint"]),
        ({"scale": 8}, 422, "scale", ["at most 2", "is 8"]),
        ({"scale": 3}, 422, "scale", ["at most 2", "is 3"]),
        ({"overlap": 300, "tile": 256}, 422, "overlap", ["smaller than the tile"]),
        ({"image": "png-truncated"}, 422, "image", ["truncated"]),
        ({"image": "jpeg-truncated"}, 422, "image", ["truncated"]),
        ({"image": "webp-truncated"}, 422, "image", []),
    ],
)
def test_upscale_refusals_name_the_field_and_queue_nothing(
    queued_client: TestClient, change: dict, status: int, field: str, words: list[str]
) -> None:
    pixels = np.ascontiguousarray(photo("chelsea")[:96, :128])
    images = {
        f"{fmt.lower()}-truncated": b64(truncated(encode_pil(pixels, fmt)))
        for fmt in ("PNG", "JPEG", "WEBP")
    }
    body = {"image": b64(encode_pil(pixels)), "model": UPSCALER} | change
    body["image"] = images.get(body["image"], body["image"])
    response = queued_client.post("/v1/upscale", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    for word in words:
        assert word in error["message"]
    assert queued_client.get("/v1/jobs").json()["data"] == []


def test_a_builtin_upscaler_not_yet_converted_is_checked_at_submit(
    tmp_path: Path, png: bytes
) -> None:
    settings = Settings(data_dir=tmp_path / "empty")  # no model converted yet
    engine = Engine(planners=PLANNERS, settings=settings, start=False)
    with TestClient(create_app(settings, engine=engine)) as client:
        refused = client.post("/v1/upscale", json={"image": b64(png), "scale": 8})
        assert refused.status_code == 422 and refused.json()["field"] == "scale"
        assert "realesrgan-x4plus" in refused.json()["message"]
        assert client.get("/v1/jobs").json()["data"] == []
        accepted = client.post("/v1/upscale", json={"image": b64(png), "scale": 4})
        assert accepted.status_code == 202, accepted.text
    engine.close()


def test_multipart_upscale_with_a_truncated_file_is_refused(
    queued_client: TestClient, png: bytes
) -> None:
    response = queued_client.post(
        "/v1/upscale",
        files={"image": ("cut.png", truncated(png), "image/png")},
        data={"model": UPSCALER},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "image" and "truncated" in response.json()["message"]
    assert queued_client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ({"model": (None, UPSCALER)}, {}, "image"),  # no image at all (text parts only)
        ({"image": ("a.png", b"x", "image/png")}, {"scale": "big"}, "scale"),
        ({"image": ("a.png", b"x", "image/png")}, {"model": UPSCALER, "nope": "1"}, "nope"),
        ({"image": ("a.png", b"x", "image/png"), "model": ("m", b"x", "text/plain")}, {}, "model"),
        (
            {"image": ("a.png", b"x", "image/png")},
            {"upload_urls": "[not json"},
            "upload_urls",
        ),
    ],
)
def test_multipart_upscale_errors_name_the_field(
    queued_client: TestClient, files: dict, data: dict, field: str
) -> None:
    response = queued_client.post("/v1/upscale", files=files, data=data)
    assert response.status_code in (415, 422), response.text
    assert response.json()["field"] == field
    assert queued_client.get("/v1/jobs").json()["data"] == []
