"""POST /v1/edit as multipart for the instruction form: `images` as repeated file parts (and a
FLUX.2 reference's image as a `references.N.image` part), the same job as the JSON request."""

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
from assetbox.kinds import PLANNERS
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
WAIT = {"Prefer": "wait=120"}
EDIT = {"instruction": "make the sky red", "width": 80, "height": 64, "steps": 2, "seed": 5}
EDIT |= {"condition_pixels": 64 * 64}  # not 1 MP: seconds, not a minute, per tiny run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_models import write

    models = tmp_path_factory.mktemp("edit-multipart-models")
    write("qwen_image_edit_plus", models)
    write("flux2_klein", models)
    data_dir = tmp_path_factory.mktemp("edit-multipart") / "data"
    store = ModelStore(data_dir / "models")
    for entry in ("tiny-qwen_image_edit_plus", "tiny-flux2_klein"):
        import_model(store, models / entry)
    return data_dir


def png(width: int, height: int, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def form(body: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}


def test_images_as_file_parts_give_the_bytes_of_the_json_request(data_dir: Path) -> None:
    inputs = [png(80, 64, 1), png(64, 96, 2)]
    body = {"model": "tiny-qwen_image_edit_plus", **EDIT}
    settings = Settings(data_dir=data_dir, reuse_results=False)  # each request runs
    with TestClient(create_app(settings)) as client:
        as_json = client.post(
            "/v1/edit", json=body | {"images": [b64(i) for i in inputs]}, headers=WAIT
        ).json()
        assert as_json["status"] == "succeeded", as_json
        files = [("images", (f"in{n}.png", data, "image/png")) for n, data in enumerate(inputs)]
        as_form = client.post("/v1/edit", data=form(body), files=files, headers=WAIT)
        assert as_form.status_code == 200, as_form.text
        job = as_form.json()
        assert job["id"] != as_json["id"]  # a job of its own, not a cached answer
        first = client.get(as_json["outputs"][0]["url"]).content
        assert client.get(job["outputs"][0]["url"]).content == first
        assert Image.open(io.BytesIO(first)).size == (80, 64)
        # The order of the parts is the order of the images.
        swapped = client.post("/v1/edit", data=form(body), files=files[::-1], headers=WAIT)
        assert client.get(swapped.json()["outputs"][0]["url"]).content != first


@pytest.fixture
def queued(data_dir: Path):
    """An app whose engine runs nothing, and that engine (to read the recorded requests)."""
    settings = Settings(data_dir=data_dir)
    engine = Engine(planners=PLANNERS, settings=settings, start=False)
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client, engine
    engine.close()


def test_file_and_text_items_and_reference_parts_are_recorded_in_order(queued) -> None:
    client, engine = queued
    one, two = png(64, 64, 1), png(80, 64, 2)
    parts = [
        ("images", ("a.png", one, "image/png")),
        ("images", (None, b64(two))),  # an item may be base64 text, as in JSON
    ]
    body = {"model": "tiny-qwen_image_edit_plus", **EDIT}
    response = client.post("/v1/edit", data=form(body), files=parts)
    assert response.status_code == 202, response.text
    request = engine.get(response.json()["id"]).request
    blobs = [engine.settings.data_dir / "blobs" / ref.removeprefix("sha256:") for ref in
             request["images"]]  # fmt: skip
    assert [path.read_bytes() for path in blobs] == [one, two]

    klein = {"model": "tiny-flux2_klein", **EDIT, "condition_pixels": ""}  # "": not given
    klein |= {"references": [{"weight": 0.5}], "images": b64(one)}
    reference = [("references.0.image", ("r.png", two, "image/png"))]
    response = client.post("/v1/edit", data=form(klein), files=reference)
    assert response.status_code == 202, response.text
    recorded = engine.get(response.json()["id"]).request["references"]
    assert recorded[0]["weight"] == 0.5 and recorded[0]["image"].startswith("sha256:")


@pytest.mark.parametrize(
    ("files", "data", "field"),
    [
        ([("images", "png")] * 4, {}, "images"),  # Plus edits at most 3
        ([("images", "cut")], {}, "images.0"),
        ([("references.0.image", "png")], {}, "references"),  # no `references` JSON text
        ([("references.1.image", "png")], {"references": '[{"weight": 1}]'}, "references.1"),
    ],
)
def test_multipart_instruction_errors_name_the_field(
    queued, files: list, data: dict, field: str
) -> None:
    client, _ = queued
    whole = png(64, 64, 3)
    contents = {"png": whole, "cut": whole[: len(whole) // 2]}
    parts = [(name, (f"{n}.png", contents[kind], "image/png")) for n, (name, kind) in
             enumerate(files)]  # fmt: skip
    body = form({"model": "tiny-qwen_image_edit_plus", **EDIT} | data)
    before = client.get("/v1/jobs").json()["data"]
    response = client.post("/v1/edit", data=body, files=parts)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert client.get("/v1/jobs").json()["data"] == before  # nothing queued


def test_openapi_lists_images_as_repeated_file_parts(queued) -> None:
    client, _ = queued
    content = client.get("/openapi.json").json()["paths"]["/v1/edit"]["post"]["requestBody"]
    multipart = content["content"]["multipart/form-data"]["schema"]["properties"]
    assert multipart["images"]["type"] == "array"
    assert multipart["images"]["items"]["format"] == "binary"
    assert "references.N.image" in multipart["references"]["description"]
    assert "references.N.image" not in multipart  # no part has that literal name
