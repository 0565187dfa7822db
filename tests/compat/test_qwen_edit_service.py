"""The Qwen edit service's shape (compat/qwen_edit_service.py) with a tiny Qwen-Image-Edit: the
seed's request as its clients send it, its error shape naming the field."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from assetbox import compat
from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "tiny-qwen_image_edit"


def b64_png(width: int, height: int) -> str:
    pixels = (np.random.default_rng(3).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from assetbox.testing.tiny_models import write

    models = tmp_path_factory.mktemp("models")
    data_dir = tmp_path_factory.mktemp("data")
    write("qwen_image_edit", models)
    import_model(ModelStore(data_dir / "models"), models / MODEL)
    settings = Settings(data_dir=data_dir, executor="thread", compat="qwen_edit")
    app = create_app(settings)
    compat.mount(app, settings)
    with TestClient(app) as client:
        yield client


def test_edit_image_returns_a_base64_image_and_the_model_it_ran(client: TestClient) -> None:
    request = {
        "image": b64_png(64, 64),
        "prompt": "Change the sky to a sunset",
        "negative_prompt": "blurry",
        "num_inference_steps": 2,
        "true_cfg_scale": 4.0,
        "seed": 42,
        "rank": 128,
        "width": 64,
        "height": 64,
    }
    answer = client.post("/edit-image", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["processing_time"] > 0
    edited = Image.open(io.BytesIO(base64.b64decode(body["edited_image"])))
    assert edited.format == "PNG" and edited.size == (64, 64)
    info = body["model_info"]
    assert info["steps"] == 2 and info["model_version"] == MODEL
    # No Nunchaku on this machine: full precision, the rank unused and the reason told.
    assert info["rank"] is None and info["backend"] == "diffusers"
    assert "Nunchaku" in info["rank_unavailable"]


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"image": "aGVsbG8="}, "prompt"),
        ({"image": "aGVsbG8=", "prompt": "x", "rank": 64}, "rank"),
        ({"image": "not base64 at all!", "prompt": "x"}, "image"),
        ({"image": "aGVsbG8=", "prompt": "x"}, "image"),  # base64, but of no image
    ],
)
def test_invalid_requests_get_the_seeds_error_shape(
    client: TestClient, request_body: dict, field: str
) -> None:
    answer = client.post("/edit-image", json=request_body)
    assert answer.status_code in (415, 422), answer.text
    body = answer.json()
    assert {"error", "detail", "timestamp", "request_id"} <= body.keys()
    assert body["field"] == field and f"`{field}`" in body["detail"]


def test_model_config_sets_what_model_info_reports(client: TestClient) -> None:
    info = client.get("/model-info").json()
    assert info["model_version"] == MODEL and info["available_models"] == [MODEL]
    assert info["steps"] == 50 and info["rank"] == 128  # the family's steps, the seed's rank
    info = client.post("/model-config", json={"num_inference_steps": 3, "rank": 32}).json()
    assert (info["steps"], info["rank"]) == (3, 32)
    refused = client.post("/model-config", json={"model_version": "nope"})
    assert refused.status_code == 422 and refused.json()["field"] == "model_version"
    assert client.get("/model-info").json()["steps"] == 3
