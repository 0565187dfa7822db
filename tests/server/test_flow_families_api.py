"""generate and instruction edit over HTTP with tiny Qwen-Image, Qwen-Image-Edit(-Plus), Z-Image
and FLUX.2 klein models (FLUX.2's references are tested in test_flux2_api.py)."""

from __future__ import annotations

import base64
import io
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
SMALL = {"width": 80, "height": 64, "steps": 2, "seed": 5}
QWEN_LORA = "qwen_image-style"


@pytest.fixture(scope="module")
def flow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny flow-family checkpoints (FLUX.2 klein distilled, and [dev]), a LoRA each
    (Qwen-Image's serves the edit models too) and a 4-step Qwen-Image speed LoRA, written once
    for this module."""
    from assetbox.testing.tiny_models import write

    out = tmp_path_factory.mktemp("flow-models")
    write("qwen_image", out, loras=(QWEN_LORA, "qwen_image-lightning-4steps"))
    for family in ("qwen_image_edit", "qwen_image_edit_plus"):
        write(family, out)
    write("z_image", out, loras=("z_image-style",))
    write("flux2_klein", out, loras=("flux2_klein-style",))
    write("flux2", out, loras=("flux2-style",))
    return out


def make_client(models: Path, data_dir: Path, entries: list[str]) -> TestClient:
    store = ModelStore(data_dir / "models")
    for entry in entries:
        import_model(store, models / entry)
    return TestClient(create_app(Settings(data_dir=data_dir)))


def png_of(client: TestClient, job: dict, index: int = 0) -> bytes:
    assert job["status"] == "succeeded", job
    response = client.get(job["outputs"][index]["url"])
    assert response.headers["content-type"] == "image/png"
    return response.content


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def b64_photo(width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("family", "lora", "extra"),
    [
        ("qwen_image", QWEN_LORA, {}),
        ("z_image", "z_image-style", {}),  # guidance defaults to 0 (Turbo)
        ("flux2_klein", "flux2_klein-style", {}),  # distilled: no guidance, no negative prompt
        ("flux2", "flux2-style", {"guidance": 2.5}),  # embedded guidance
    ],
)
def test_generate_same_seed_same_bytes_and_a_lora_leaves_nothing(
    flow_models: Path, tmp_path: Path, family: str, lora: str, extra: dict
) -> None:
    entries = [f"tiny-{family}", f"{lora}.safetensors"]
    with make_client(flow_models, tmp_path / "data", entries) as client:
        body = {"model": f"tiny-{family}", "prompts": ["a red stone wall"], **SMALL, **extra}

        def generate(**change) -> bytes:
            job = client.post("/v1/generate", json=body | change, headers=WAIT).json()
            png = png_of(client, job)
            assert size_of(png) == (80, 64)
            return png

        before = generate()
        assert generate() == before  # same seed: the same bytes
        styled = generate(loras=[{"name": lora, "weight": 1.0}])
        assert styled != before
        assert generate() == before  # no adapter stays active


def test_speed_lora_sets_its_steps_and_lightnings_scheduler(
    flow_models: Path, tmp_path: Path
) -> None:
    entries = ["tiny-qwen_image", "qwen_image-lightning-4steps.safetensors"]
    with make_client(flow_models, tmp_path / "data", entries) as client:
        listed = client.get("/v1/models", params={"kind": "lora"}).json()["data"]
        assert [m["speed_steps"] for m in listed] == [4]
        body = {"model": "tiny-qwen_image", "prompts": ["a"], "width": 80, "height": 64}
        body["loras"] = [{"name": "qwen_image-lightning-4steps"}]
        job = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert size_of(png_of(client, job)) == (80, 64)
        assert job["progress"]["steps"] == 4  # not Qwen-Image's 50


@pytest.mark.parametrize(
    ("family", "inputs"),
    [("qwen_image_edit", [(128, 64)]), ("qwen_image_edit_plus", [(80, 64), (64, 96)])],
)
def test_instruction_edit_honours_the_size_and_a_lora_leaves_nothing(
    flow_models: Path, tmp_path: Path, family: str, inputs: list[tuple[int, int]]
) -> None:
    entries = [f"tiny-{family}", f"{QWEN_LORA}.safetensors"]
    with make_client(flow_models, tmp_path / "data", entries) as client:
        body = {
            "model": f"tiny-{family}",
            "instruction": "make the sky red",
            "images": [b64_photo(w, h, n) for n, (w, h) in enumerate(inputs)],
            "condition_pixels": 64 * 64,  # not 1 MP: seconds, not a minute, per tiny run
            **SMALL,
        }

        def edit(**change) -> bytes:
            job = client.post("/v1/edit", json=body | change, headers=WAIT).json()
            png = png_of(client, job)
            assert size_of(png) == ((body | change)["width"], (body | change)["height"])
            return png

        before = edit()
        assert edit() == before
        assert edit(seed=6) != before
        # Qwen's true CFG acts only with a negative prompt (and above 1).
        assert edit(true_cfg_scale=7.0) == before
        assert edit(true_cfg_scale=4.0, negative_prompt="blurry") != before
        assert edit(loras=[{"name": QWEN_LORA}]) != before
        assert edit() == before
        # Without a size: the last input's aspect ratio at `condition_pixels`.
        sizeless = {k: v for k, v in body.items() if k not in ("width", "height")}
        job = client.post("/v1/edit", json=sizeless, headers=WAIT).json()
        w, h = inputs[-1]
        out_w, out_h = size_of(png_of(client, job))
        assert out_w % 16 == 0 and out_h % 16 == 0
        assert abs(out_w / out_h - w / h) < 0.25 and abs(out_w * out_h - 64 * 64) < 64 * 64 / 2


def test_flux2_instruction_edit_takes_its_images_as_references(
    flow_models: Path, tmp_path: Path
) -> None:
    with make_client(flow_models, tmp_path / "data", ["tiny-flux2_klein"]) as client:
        body = {"model": "tiny-flux2_klein", "instruction": "make it red", **SMALL}
        body["images"] = [b64_photo(64, 64, 1), b64_photo(96, 64, 2)]
        first = png_of(client, client.post("/v1/edit", json=body, headers=WAIT).json())
        assert size_of(first) == (80, 64)
        assert png_of(client, client.post("/v1/edit", json=body, headers=WAIT).json()) == first
        plain = {k: v for k, v in body.items() if k not in ("images", "instruction")}
        plain["prompts"] = ["make it red"]
        generated = client.post("/v1/generate", json=plain, headers=WAIT).json()
        assert png_of(client, generated) != first  # the images took part


EDIT = {"instruction": "red", "steps": 2}


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("generate", {"model": "tiny-qwen_image", "width": 72}, "width"),
        ("generate", {"model": "tiny-z_image", "height": 72}, "height"),
        ("generate", {"model": "tiny-flux2_klein", "negative_prompt": "blur"}, "negative_prompt"),
        ("generate", {"model": "tiny-flux2_klein", "guidance": 3.5}, "guidance"),
        ("generate", {"model": "tiny-z_image", "negative_prompt": "blur"}, "negative_prompt"),
        ("generate", {"model": "tiny-qwen_image_edit"}, "model"),
        ("edit", {"model": "tiny-qwen_image_edit", "images": ["A", "A"], **EDIT}, "images"),
        ("edit", {"model": "tiny-qwen_image_edit_plus", "images": ["A"] * 4, **EDIT}, "images"),
        ("edit", {"model": "tiny-qwen_image", "images": ["A"], **EDIT}, "images"),
        ("edit", {"model": "tiny-qwen_image_edit", "image": "A", **EDIT}, "image"),
        ("edit", {"model": "tiny-qwen_image_edit", "images": ["A"], "strength": 0.5}, "strength"),
        ("edit", {"model": "tiny-qwen_image_edit", "images": ["A"]}, "instruction"),
        ("edit", {"model": "tiny-z_image", "image": "A", "prompts": ["x"]}, "image"),
        ("upscale", {"model": "tiny-z_image", "image": "A", "mode": "diffusion"}, "model"),
    ],
)
def test_invalid_requests_name_the_field_and_queue_nothing(
    flow_models: Path, tmp_path: Path, route: str, body: dict, field: str
) -> None:
    image = b64_photo(64, 64, 0)
    for name in ("image", "images"):
        if name in body:
            body = body | {name: image if name == "image" else [image] * len(body[name])}
    entries = [f"tiny-{f}" for f in ("qwen_image", "qwen_image_edit", "qwen_image_edit_plus")]
    entries += ["tiny-z_image", "tiny-flux2_klein"]
    with make_client(flow_models, tmp_path / "data", entries) as client:
        request = {"prompts": ["a"]} if route == "generate" else {}  # tiled upscale: img2img
        response = client.post(f"/v1/{route}", json=request | body)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
        assert client.get("/v1/jobs").json()["data"] == []
