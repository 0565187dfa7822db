"""IP-Adapters over HTTP: `ip_adapter: {model, image, scale}` on generate, edit and the tiled
upscale with tiny SD 1.5 / SDXL models; refusals at submit; the memory timings; `backend`."""

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
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
WAIT = {"Prefer": "wait=120"}


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


STYLE = png_b64((np.random.default_rng(5).random((48, 40, 3)) * 255).astype(np.uint8))


@pytest.fixture
def client(tiny_ip_adapters: Path, tmp_path: Path):
    data_dir = tmp_path / "data"
    store = ModelStore(data_dir / "models")
    for entry in ("tiny-sd15", "tiny-sdxl", "ip-adapter-sd15", "ip-adapter-sdxl"):
        import_model(store, tiny_ip_adapters / entry)
    settings = Settings(data_dir=data_dir, reuse_results=False, workers=1)
    with TestClient(create_app(settings)) as client:
        yield client


def png(client: TestClient, body: dict, route: str = "/v1/generate") -> bytes:
    job = client.post(route, json=body, headers=WAIT).json()
    assert job["status"] == "succeeded", job
    return client.get(job["outputs"][0]["url"]).content


def refused(client: TestClient, route: str, body: dict, status: int = 422) -> str:
    before = client.get("/v1/jobs").json()["data"]
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    assert client.get("/v1/jobs").json()["data"] == before  # nothing queued
    return response.json()["field"]


GENERATE = {"model": "tiny-sd15", "prompts": ["a cat"], "width": 64, "height": 64, "steps": 2}
GENERATE |= {"seed": 5}


def test_generate_and_edit_with_an_ip_adapter(client: TestClient) -> None:
    plain_job = client.post("/v1/generate", json=GENERATE, headers=WAIT).json()
    timings = plain_job["outputs"][0]["timings_ms"]
    assert timings["peak_rss_mb"] > 50  # torch and the model are resident
    assert "peak_vram_mb" not in timings  # no CUDA here
    plain = client.get(plain_job["outputs"][0]["url"]).content
    adapter = {"model": "ip-adapter-sd15", "image": STYLE}
    assert png(client, GENERATE | {"ip_adapter": adapter | {"scale": 0}}) == plain
    steered = png(client, GENERATE | {"ip_adapter": adapter | {"scale": 0.6}})
    assert steered != plain
    assert png(client, GENERATE) == plain  # nothing stays active

    edit = GENERATE | {"image": base64.b64encode(plain).decode(), "strength": 0.75, "steps": 4}
    edited = png(client, edit, "/v1/edit")
    assert png(client, edit | {"ip_adapter": adapter | {"scale": 0}}, "/v1/edit") == edited
    # Without an image of its own, the adapter sees the input image.
    default = png(client, edit | {"ip_adapter": {"model": "ip-adapter-sd15"}}, "/v1/edit")
    assert default != edited
    assert png(client, edit, "/v1/edit") == edited
    # As multipart, the adapter's image is a file part; the same request as JSON, the same bytes.
    styled = png(client, edit | {"ip_adapter": adapter}, "/v1/edit")
    form = {k: str(v) for k, v in edit.items() if k not in ("image", "prompts")}
    form |= {"prompts": "a cat", "ip_adapter": json.dumps({"model": "ip-adapter-sd15"})}
    files = {
        "image": ("in.png", plain, "image/png"),
        "ip_adapter_image": ("style.png", base64.b64decode(STYLE), "image/png"),
    }
    job = client.post("/v1/edit", data=form, files=files, headers=WAIT).json()
    assert job["status"] == "succeeded", job
    assert client.get(job["outputs"][0]["url"]).content == styled


def test_ip_adapter_refusals_name_the_field(client: TestClient) -> None:
    adapter = {"model": "ip-adapter-sd15", "image": STYLE}
    cases = [
        ({"model": "missing"}, 404, "ip_adapter.model"),
        ({"model": "ip-adapter-sdxl"}, 422, "ip_adapter.model"),  # of another family
        ({"image": None}, 422, "ip_adapter.image"),  # generate has no input image
        ({"image": base64.b64encode(b"nope").decode()}, 415, "ip_adapter.image"),
        ({"scale": 2.5}, 422, "ip_adapter.scale"),
    ]
    for change, status, field in cases:
        body = GENERATE | {"ip_adapter": adapter | change}
        assert refused(client, "/v1/generate", body, status) == field, change
    assert refused(client, "/v1/generate", GENERATE | {"backend": "nunchaku"}) == "backend"


def test_tiled_upscale_with_an_ip_adapter(client: TestClient) -> None:
    image = (np.random.default_rng(1).random((48, 48, 3)) * 255).astype(np.uint8)
    body = {
        "image": png_b64(image),
        "mode": "diffusion",
        "model": "tiny-sdxl",
        "scale": 2,
        "tile": 64,
        "overlap": 16,
        "pre_upscale": "lanczos",
        "steps": 2,
        "strength": 0.5,
        "seed": 3,
        "format": "png",
    }
    job = client.post("/v1/upscale", json=body, headers=WAIT).json()
    assert job["status"] == "succeeded", job
    assert job["outputs"][0]["timings_ms"]["peak_rss_mb"] > 50
    plain = client.get(job["outputs"][0]["url"]).content
    steered = png(client, body | {"ip_adapter": {"model": "ip-adapter-sdxl"}}, "/v1/upscale")
    assert steered != plain
    zero = {"model": "ip-adapter-sdxl", "image": STYLE, "scale": 0}
    assert png(client, body | {"ip_adapter": zero}, "/v1/upscale") == plain
    assert (
        refused(client, "/v1/upscale", body | {"ip_adapter": zero | {"model": "ip-adapter-sd15"}})
        == "ip_adapter.model"
    )


@pytest.fixture(scope="module")
def tiny_qwen_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_flow import build_pipeline

    folder = tmp_path_factory.mktemp("tiny-qwen") / "tiny-qwen_image"
    build_pipeline("qwen_image").save_pretrained(folder)
    return folder


def test_backend_nunchaku_is_refused_here_and_auto_runs(
    tiny_qwen_image: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    import_model(ModelStore(data_dir / "models"), tiny_qwen_image)
    settings = Settings(data_dir=data_dir, reuse_results=False, workers=1)
    body = GENERATE | {"model": "tiny-qwen_image"}
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/generate", json=body | {"backend": "nunchaku"})
        assert response.status_code == 422
        error = response.json()
        assert error["field"] == "backend" and "CUDA" in error["message"]  # no GPU here
        assert refused(client, "/v1/generate", body | {"rank": 32}) == "rank"
        assert refused(client, "/v1/generate", body | {"backend": "diffusers", "rank": 128}) == (
            "rank"
        )
        job = client.post("/v1/generate", json=body | {"backend": "auto"}, headers=WAIT).json()
        assert job["status"] == "succeeded", job
        output = job["outputs"][0]
        assert (output["width"], output["height"]) == (64, 64)
        assert output["timings_ms"]["peak_rss_mb"] > 50
