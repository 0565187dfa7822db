"""`POST /v1/upscale` with ``"mode": "diffusion"``: tiled img2img with tiny SDXL (and Flux.1)
models, a tiny ControlNet and a LoRA."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app
from tests.utils.images import photo

WAIT = {"Prefer": "wait=600"}
ENTRIES = ["tiny-sdxl", "tiny-sdxl-controlnet", "sdxl-a.safetensors", "tiny-flux1"]
ENTRIES += ["tiny-flux1-controlnet"]


@pytest.fixture
def data_dir(tiny_models: Path, builtin_store: ModelStore, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    store = ModelStore(data_dir / "models")
    for entry in ENTRIES:
        import_model(store, tiny_models / entry)
    return data_dir


def make_client(data_dir: Path, **settings) -> TestClient:
    base = {"data_dir": data_dir, "reuse_results": False, "workers": 1} | settings
    return TestClient(create_app(Settings(**base)))


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def photo_256() -> np.ndarray:
    return np.asarray(Image.fromarray(photo("astronaut")).resize((256, 256), Image.LANCZOS))


def body(**extra) -> dict:
    return {
        "image": png_b64(photo_256()),
        "mode": "diffusion",
        "model": "tiny-sdxl",
        "scale": 2,
        "tile": 256,
        "overlap": 64,
        "pre_upscale": "lanczos",
        "controlnet": {"model": "tiny-sdxl-controlnet", "conditioning_scale": 0.8},
        "loras": [{"name": "sdxl-a", "weight": 0.7}],
        "prompt": "an astronaut, oil painting",
        "steps": 3,
        "strength": 0.5,
        "seed": 11,
    } | extra


def output(client: TestClient, job: dict) -> bytes:
    assert job["status"] == "succeeded", job
    return client.get(job["outputs"][0]["url"]).content


def test_a_256_photo_to_512_same_bytes_twice_and_skipped_tiles_are_the_pre_upscale(
    data_dir: Path,
) -> None:
    with make_client(data_dir) as client:
        plan = client.post(
            "/v1/upscale/plan",
            json={"width": 256, "height": 256, "scale": 2, "tile": 256, "overlap": 64},
        ).json()
        first = client.post("/v1/upscale", json=body(), headers=WAIT).json()
        data = output(client, first)
        image = np.asarray(Image.open(io.BytesIO(data)))
        assert image.shape == (512, 512, 3)
        assert first["progress"]["total"] == len(plan["tiles"]) == 9  # one tile per unit
        assert output(client, client.post("/v1/upscale", json=body(), headers=WAIT).json()) == data

        pre = np.asarray(Image.fromarray(photo_256()).resize((512, 512), Image.LANCZOS))
        assert np.abs(image.astype(int) - pre).max() > 8  # the tiles were redrawn
        skipped = {t["id"]: {"skip": True} for t in plan["tiles"]}
        for extra in ({"tiles": skipped}, {"strength": 0}):
            job = client.post("/v1/upscale", json=body(**extra), headers=WAIT).json()
            same = np.asarray(Image.open(io.BytesIO(output(client, job))))
            assert np.abs(same.astype(int) - pre).max() <= 1


def test_flux_runs_the_same_request_shape(data_dir: Path) -> None:
    flux = body(
        model="tiny-flux1",
        controlnet={"model": "tiny-flux1-controlnet"},
        loras=[],
        tile=128,
        overlap=32,
        steps=2,
    )
    with make_client(data_dir) as client:
        job = client.post("/v1/upscale", json=flux, headers=WAIT).json()
        image = np.asarray(Image.open(io.BytesIO(output(client, job))))
        assert image.shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("extra", "status", "field"),
    [
        ({"overlap": 160}, 422, "overlap"),  # more than half the tile
        ({"tile": 260}, 422, "tile"),  # not a multiple of 8
        ({"model": "tiny-flux1", "tile": 264, "controlnet": None, "loras": []}, 422, "tile"),
        ({"tiles": {"9_9": {"skip": True}}}, 422, "tiles.9_9"),
        ({"tiles": {"0_0": {"bogus": 1}}}, 422, "tiles.0_0.bogus"),
        ({"captions": "auto"}, 422, "captions"),  # no captioner in the store
        ({"pre_upscale": "tiny-sdxl-controlnet"}, 422, "pre_upscale"),
        ({"pre_upscale": "nope"}, 404, "pre_upscale"),
        ({"model": "realesrgan-x4plus"}, 422, "model"),
        ({"model": "nope"}, 404, "model"),
        ({"controlnet": {"model": "tiny-flux1-controlnet"}}, 422, "controlnet.model"),
        ({"scale": 9}, 422, "scale"),
        ({"width": 512}, 422, "height"),
        ({"sampler": "flow_euler"}, 422, "sampler"),
        ({"steps": 2, "strength": 0.3}, 422, "strength"),  # int(2 * 0.3): no step to run
        ({"steps": 2, "tiles": {"0_1": {"strength": 0.2}}}, 422, "tiles.0_1.strength"),
    ],
)
def test_bad_requests_name_the_field_and_queue_nothing(data_dir, extra, status, field) -> None:
    with make_client(data_dir) as client:
        response = client.post("/v1/upscale", json=body(**extra))
        assert response.status_code == status, response.json()
        assert response.json()["field"] == field, response.json()
        assert client.get("/v1/jobs").json()["data"] == []


def test_gan_mode_refuses_diffusion_fields(data_dir: Path) -> None:
    with make_client(data_dir) as client:
        gan = {"image": png_b64(photo_256()[:32, :32]), "prompt": "a cat"}
        response = client.post("/v1/upscale", json=gan)
        assert response.status_code == 422
        assert response.json()["field"] == "prompt"


def test_an_output_smaller_than_a_tile_is_one_tile_of_its_size(data_dir: Path) -> None:
    small = np.ascontiguousarray(photo_256()[:48, :64])
    with make_client(data_dir) as client:
        plan = client.post(
            "/v1/upscale/plan", json={"width": 64, "height": 48, "scale": 2, "tile": 1024}
        ).json()
        assert [t["box"] for t in plan["tiles"]] == [[0, 0, 128, 96]]
        job = client.post(
            "/v1/upscale",
            json=body(image=png_b64(small), tile=1024, overlap=128, controlnet=None, loras=[]),
            headers=WAIT,
        ).json()
        image = np.asarray(Image.open(io.BytesIO(output(client, job))))
        assert image.shape == (96, 128, 3) and job["progress"]["total"] == 1


def test_units_name_their_tiles_and_the_result_reports_each_tiles_prompt(data_dir: Path) -> None:
    small = np.ascontiguousarray(photo_256()[::2, ::2][:96, :96])
    overrides = {
        "0_0": {"prompt": "a red brick wall"},
        "0_1": {"skip": True},
        "1_0": {"strength": 0.6},
    }
    request = body(
        image=png_b64(small), tile=128, overlap=32, steps=2, controlnet=None, loras=[]
    ) | {"tiles": overrides}
    with make_client(data_dir) as client:
        job = client.post("/v1/upscale", json=request, headers=WAIT).json()
        assert job["status"] == "succeeded", job
        assert job["result"]["tiles"] == [
            {"id": "0_0", "strength": 0.5, "prompt": "a red brick wall"},
            {"id": "0_1", "skip": True},
            {"id": "1_0", "strength": 0.6, "prompt": "an astronaut, oil painting"},
            {"id": "1_1", "strength": 0.5, "prompt": "an astronaut, oil painting"},
        ]
        units = client.get(f"/v1/jobs/{job['id']}/units").json()["data"]
        assert [(u["index"], u["tiles"], u["status"]) for u in units] == [
            (0, ["0_0"], "done"),
            (1, ["0_1"], "done"),
            (2, ["1_0"], "done"),
            (3, ["1_1"], "done"),
        ]
        gan = {"image": png_b64(small[:32, :32]), "model": "realesr-animevideov3-x2"}
        plain = client.post("/v1/upscale", json=gan, headers=WAIT).json()
        (unit,) = client.get(f"/v1/jobs/{plain['id']}/units").json()["data"]
        assert unit == {"index": 0, "status": "done", "attempts": 1}  # gan windows: no tiles
