"""POST /v1/edit: the size defaults to the input's, and the body may be multipart."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from assetbox.config import Settings
from assetbox.engine.engine import Engine
from assetbox.errors import InvalidInput
from assetbox.kinds import PLANNERS
from assetbox.kinds.edit import edit_size
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app
from tests.utils.images import encode_pil, photo

pytestmark = pytest.mark.usefixtures("one_thread")
WAIT = {"Prefer": "wait=120"}


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    return encode_pil(np.ascontiguousarray(photo("chelsea")[:height, :width]), fmt)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def data_dir(tiny_models: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    for entry in ("tiny-sd15", "tiny-sd15-controlnet", "sd15-a.safetensors", "tiny-flux1"):
        import_model(store, tiny_models / entry)
    return data_dir


@pytest.fixture
def client(data_dir: Path):
    with TestClient(create_app(Settings(data_dir=data_dir))) as client:
        yield client


@pytest.fixture
def queued(data_dir: Path):
    """An app whose engine runs nothing, and that engine (to read the recorded requests)."""
    settings = Settings(data_dir=data_dir)
    engine = Engine(planners=PLANNERS, settings=settings, start=False)
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client, engine
    engine.close()


def size_of(client: TestClient, job: dict) -> tuple[int, int]:
    assert job["status"] == "succeeded", job
    data = client.get(job["outputs"][0]["url"]).content
    return Image.open(io.BytesIO(data)).size


def test_an_edit_without_size_comes_back_at_the_inputs_size(client: TestClient) -> None:
    body = {"model": "tiny-sd15", "image": b64(picture(64, 48)), "steps": 2, "seed": 1}
    job = client.post("/v1/edit", json=body, headers=WAIT).json()
    assert size_of(client, job) == (64, 48)
    assert job["outputs"][0]["width"] == 64 and job["outputs"][0]["height"] == 48


@pytest.mark.parametrize(
    ("model", "given", "image", "recorded"),
    [
        ("tiny-sd15", {}, (64, 48), (64, 48)),
        ("tiny-sd15", {}, (70, 50), (72, 48)),  # rounded to multiples of 8
        ("tiny-flux1", {}, (70, 50), (64, 48)),  # of 16 for Flux.1
        ("tiny-flux1", {}, (64, 48), (64, 48)),
        ("tiny-sd15", {"width": 128}, (64, 48), (128, 96)),  # the other side keeps the aspect
        ("tiny-sd15", {"height": 96}, (64, 48), (128, 96)),
        ("tiny-sd15", {"width": 80, "height": 80}, (64, 48), (80, 80)),  # given: as given
    ],
)
def test_the_filled_size_is_recorded_in_the_jobs_request(
    queued, model: str, given: dict, image: tuple[int, int], recorded: tuple[int, int]
) -> None:
    client, engine = queued
    body = {"model": model, "image": b64(picture(*image)), "steps": 2} | given
    response = client.post("/v1/edit", json=body)
    assert response.status_code == 202, response.text
    request = engine.get(response.json()["id"]).request
    assert (request["width"], request["height"]) == recorded


def test_an_input_over_the_maximum_needs_an_explicit_size(queued) -> None:
    client, _ = queued
    wide = encode_pil(np.zeros((32, 4200, 3), np.uint8))
    body = {"model": "tiny-sd15", "image": b64(wide), "steps": 2}
    refused = client.post("/v1/edit", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "width"
    assert "4096" in refused.json()["message"] and "4200x32" in refused.json()["message"]
    assert client.get("/v1/jobs").json()["data"] == []
    sized = client.post("/v1/edit", json=body | {"width": 1024, "height": 64})
    assert sized.status_code == 202, sized.text


def test_edit_size_rounds_and_refuses() -> None:
    assert edit_size(None, None, (64, 48), 8) == (64, 48)
    assert edit_size(None, None, (4100, 100), 8) == (4096, 96)
    assert edit_size(None, None, (5, 5), 8) == (16, 16)  # the smallest every family runs
    with pytest.raises(InvalidInput) as caught:
        edit_size(2048, None, (1000, 4000), 8)  # the aspect asks for 8192
    assert caught.value.field == "height"


def test_openapi_says_how_the_edit_size_defaults(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/edit"]["post"]["requestBody"]["content"]
    properties = body["application/json"]["schema"]["properties"]
    for side in ("width", "height"):
        assert "input image" in properties[side]["description"]
    multipart = body["multipart/form-data"]["schema"]["properties"]
    for part in ("image", "controlnet.image", "controlnet_image"):
        assert multipart[part]["format"] == "binary"
    assert multipart["prompts"]["type"] == "array"
    assert "JSON" in multipart["controlnet"]["description"]
    assert "JSON" in multipart["loras"]["description"]


@pytest.mark.parametrize("image", ["png", "jpeg"])
def test_a_truncated_input_is_refused_and_nothing_queued(queued, image: str) -> None:
    client, _ = queued
    data = picture(64, 64, image.upper())
    body = {"model": "tiny-sd15", "image": b64(data[: len(data) // 2]), "steps": 2}
    response = client.post("/v1/edit", json=body)
    assert response.status_code == 422 and response.json()["field"] == "image"
    controlled = {
        "model": "tiny-sd15",
        "image": b64(data),
        "steps": 2,
        "controlnet": {"model": "tiny-sd15-controlnet", "image": b64(data[:-200])},
    }
    response = client.post("/v1/edit", json=controlled)
    assert response.status_code == 422 and response.json()["field"] == "controlnet.image"
    assert client.get("/v1/jobs").json()["data"] == []


def test_multipart_edit_matches_json(client: TestClient) -> None:
    png = picture(64, 48)
    fields = {"model": "tiny-sd15", "steps": 2, "seed": 3, "strength": 0.5}
    as_json = client.post(
        "/v1/edit", json=fields | {"image": b64(png), "prompts": ["a cat"]}, headers=WAIT
    ).json()
    as_form = client.post(
        "/v1/edit",
        files={"image": ("cat.png", png, "image/png")},
        data={k: str(v) for k, v in fields.items()} | {"prompts": "a cat"},
        headers=WAIT,
    )
    assert as_form.status_code == 200, as_form.text
    assert as_form.headers["Location"] == f"/v1/jobs/{as_form.json()['id']}"
    json_png = client.get(as_json["outputs"][0]["url"]).content
    assert client.get(as_form.json()["outputs"][0]["url"]).content == json_png


def test_multipart_edit_with_controlnet_file_loras_and_repeated_prompts(
    queued,
) -> None:
    client, engine = queued
    png = picture(64, 48)
    for control_part in ("controlnet.image", "controlnet_image"):
        response = client.post(
            "/v1/edit",
            files=[
                ("image", ("in.png", png, "image/png")),
                (control_part, ("edges.png", picture(64, 48, "JPEG"), "image/jpeg")),
                ("prompts", (None, "a cat")),
                ("prompts", (None, "a dog")),
            ],
            data={
                "model": "tiny-sd15",
                "steps": "2",
                "loras": json.dumps([{"name": "sd15-a", "weight": 0.5}]),
                "controlnet": json.dumps({"model": "tiny-sd15-controlnet"}),
            },
        )
        assert response.status_code == 202, response.text
        request = engine.get(response.json()["id"]).request
        assert request["prompts"] == ["a cat", "a dog"]
        assert request["loras"] == [{"name": "sd15-a", "weight": 0.5}]
        assert request["controlnet"]["image"].startswith("sha256:")
        assert request["controlnet"]["image"] != request["image"]
        assert (request["width"], request["height"]) == (64, 48)
    as_json_list = client.post(
        "/v1/edit",
        files={"image": ("in.png", png, "image/png")},
        data={"model": "tiny-sd15", "steps": "2", "prompts": '["one", "two"]'},
    )
    assert engine.get(as_json_list.json()["id"]).request["prompts"] == ["one", "two"]


@pytest.mark.parametrize(
    ("files", "data", "status", "field"),
    [
        ({}, {"model": "tiny-sd15"}, 422, "image"),
        ({"image": "cut"}, {"model": "tiny-sd15"}, 422, "image"),
        ({"image": "png"}, {"model": "tiny-sd15", "controlnet": "{oops"}, 422, "controlnet"),
        ({"image": "png", "controlnet_image": "png"}, {"model": "tiny-sd15"}, 422, "controlnet"),
        (
            {"image": "png", "controlnet_image": "cut"},
            {"model": "tiny-sd15", "controlnet": '{"model": "tiny-sd15-controlnet"}'},
            422,
            "controlnet.image",
        ),
        (
            {"image": "png"},
            {"model": "tiny-sd15", "controlnet": '{"model": "missing-net"}'},
            404,
            "controlnet.model",
        ),
        ({"image": "png"}, {"model": "tiny-sd15", "loras": '[{"weight": 1}]'}, 422, "loras.0.name"),
        ({"image": "png"}, {"model": "tiny-sd15", "strength": "lots"}, 422, "strength"),
        ({"image": "png"}, {"model": "tiny-sd15", "width": "60"}, 422, "width"),
        ({"image": "png", "model": "png"}, {}, 422, "model"),  # a file where text belongs
    ],
)
def test_multipart_edit_errors_name_the_field(
    queued, files: dict, data: dict, status: int, field: str
) -> None:
    client, _ = queued
    png = picture(64, 48)
    contents = {"png": png, "cut": png[: len(png) // 2]}
    parts = {name: (f"{name}.png", contents[kind], "image/png") for name, kind in files.items()}
    parts |= {name: (None, value) for name, value in data.items()}
    response = client.post("/v1/edit", files=parts)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert client.get("/v1/jobs").json()["data"] == []
