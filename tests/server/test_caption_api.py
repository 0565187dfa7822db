"""`POST /v1/caption` and `POST /v1/upscale/plan` with a tiny random Qwen2.5-VL captioner."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
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

WAIT = {"Prefer": "wait=300"}
MODEL = "tiny-qwen2_5_vl"


@pytest.fixture
def captioner_dir(tiny_captioners: dict[str, Path]) -> Path:
    return tiny_captioners["qwen2_5_vl"]


@pytest.fixture
def client(captioner_dir: Path, builtin_store: ModelStore, tmp_path: Path):
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")  # the pre-upscaler, converted
    import_model(ModelStore(data_dir / "models"), captioner_dir)
    # No result reuse: the same request twice must compute its captions twice.
    settings = Settings(data_dir=data_dir, workers=1, reuse_results=False, cancel_grace_s=600)
    with TestClient(create_app(settings)) as client:
        yield client


def png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def photos() -> list[str]:
    """Real photos of different sizes (so a batch needs padding)."""
    return [
        png(photo("astronaut")[:200, :160]),
        png(photo("chelsea")[:120, :220]),
        png(photo("coffee")[:90, :90]),
        png(photo("astronaut")[200:400:2, 100:400:2]),
    ]


def captions(client: TestClient, body: dict) -> list[dict]:
    job = client.post("/v1/caption", json=body, headers=WAIT).json()
    assert job["status"] == "succeeded", job
    found = job["result"]["captions"]
    assert client.get(job["outputs"][0]["url"]).json()["captions"] == found  # captions.json
    return found


def test_images_get_one_caption_each_deterministic_and_batch_independent(client) -> None:
    images = photos()
    three = captions(client, {"model": MODEL, "images": images[:3], "max_tokens": 24})
    assert [c["index"] for c in three] == [0, 1, 2]
    assert all(c["caption"].strip() and "\n" not in c["caption"] for c in three)
    assert all(1 <= c["tokens"] <= 24 for c in three)
    assert captions(client, {"model": MODEL, "images": images[:3], "max_tokens": 24}) == three

    one = captions(client, {"model": MODEL, "images": images, "max_tokens": 24, "batch": 1})
    four = captions(client, {"model": MODEL, "images": images, "max_tokens": 24, "batch": 4})
    assert [c["caption"] for c in four] == [c["caption"] for c in one]  # padding is right
    assert one[:3] == three
    assert len({c["caption"] for c in one}) > 1  # the captions depend on the image


def test_tile_mode_matches_the_upscale_plan(client) -> None:
    # 150x100 -> 600x400 through the built-in GAN (on a CPU the bulk of this test's time).
    small = np.asarray(Image.fromarray(photo("chelsea")).resize((150, 100), Image.LANCZOS))
    grid = {"scale": 4, "tile": 256, "overlap": 64}
    plan = client.post("/v1/upscale/plan", json={"width": 150, "height": 100, **grid})
    assert plan.status_code == 200
    plan = plan.json()
    assert (plan["width"], plan["height"]) == (600, 400)
    assert len(plan["tiles"]) == plan["rows"] * plan["cols"] > 1

    body = {"model": MODEL, "image": png(small), "tiles": grid, "max_tokens": 8}
    job = client.post("/v1/caption", json=body, headers=WAIT).json()  # GAN pre-upscale
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert (result["width"], result["height"]) == (600, 400)
    assert [(c["id"], c["box"]) for c in result["captions"]] == [
        (t["id"], t["box"]) for t in plan["tiles"]
    ]
    assert all(c["caption"] for c in result["captions"])
    assert len({c["caption"] for c in result["captions"]}) > 1  # each tile its own caption


def test_tile_mode_gives_a_preview_of_the_pre_upscaled_tiles_and_units_name_their_tiles(
    client,
) -> None:
    from assetbox.imaging.resize import resize_lanczos

    small = np.asarray(Image.fromarray(photo("coffee")).resize((150, 100), Image.LANCZOS))
    grid = {"scale": 4, "tile": 256, "overlap": 64, "pre_upscale": "lanczos"}
    body = {"model": MODEL, "image": png(small), "tiles": grid, "max_tokens": 4, "batch": 4}
    job = client.post("/v1/caption", json=body, headers=WAIT).json()
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["preview"] == {"output": 1, "scale": 0.75}  # 256 px tiles -> 192 px
    assert all("thumbnail" not in c for c in result["captions"])
    saved = client.get(job["outputs"][0]["url"]).json()
    assert "preview" not in saved and saved["captions"] == result["captions"]
    assert job["outputs"][1]["media_type"] == "image/png"
    preview = np.asarray(Image.open(io.BytesIO(client.get(job["outputs"][1]["url"]).content)))
    assert preview.shape == (300, 450, 3)  # the 600x400 canvas at 0.75

    pre = resize_lanczos(small, (600, 400))  # what the job's "lanczos" pre-upscale gives
    # The last tile is pasted last: its place in the preview is its crop's thumbnail exactly.
    x, y, w, h = result["captions"][-1]["box"]
    last = resize_lanczos(np.ascontiguousarray(pre[y : y + h, x : x + w]), (192, 192))
    assert np.array_equal(preview[-192:, -192:], last)
    # Everywhere else it is the whole canvas scaled down, up to resampling at tile borders.
    whole = resize_lanczos(pre, (450, 300)).astype(int)
    assert np.abs(preview.astype(int) - whole).mean() < 1.5
    for c in result["captions"]:
        x, y, w, h = (round(v * 0.75) for v in c["box"])
        region = np.abs(preview[y : y + h, x : x + w].astype(int) - whole[y : y + h, x : x + w])
        assert region.mean() < 3, c["id"]  # each tile at its own place

    units = client.get(f"/v1/jobs/{job['id']}/units").json()["data"]
    assert [u["index"] for u in units] == list(range(len(units))) and len(units) > 1
    assert all(u["status"] == "done" and u["attempts"] == 1 and "error" not in u for u in units)
    assert [t for u in units for t in u["tiles"]] == [c["id"] for c in result["captions"]]
    assert client.get("/v1/jobs/nope/units").status_code == 404

    # Unit results written before thumbnails existed (a job resumed across the upgrade): the
    # captions are assembled, without a preview.
    from assetbox.kinds import PLANNERS

    engine = client.app.state.engine
    planner = PLANNERS["caption"]
    request = planner.request_model.model_validate(engine.get(job["id"]).request)
    data_dir = engine.data_dir
    old = [
        json.dumps([{"caption": f"tile {i}", "tokens": 2} for i in unit["items"]]).encode()
        for unit in planner.plan(request, data_dir)
    ]
    (only,) = planner.assemble(request, old, data_dir)
    assert "preview" not in only.summary
    assert [c["id"] for c in only.summary["captions"]] == [c["id"] for c in result["captions"]]


def test_cancel_stops_between_tokens(client) -> None:
    # Sixteen images in one batch, captions of up to 1024 tokens: a unit of several seconds.
    body = {"model": MODEL, "images": photos() * 4, "batch": 16, "max_tokens": 1024}
    job = client.post("/v1/caption", json=body).json()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"] < 2:
        assert time.monotonic() < deadline, "no token was generated"
        time.sleep(0.02)
    cancelled_at = time.monotonic()
    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Prefer": "wait=60"})
    ended = client.get(f"/v1/jobs/{job['id']}").json()
    assert ended["status"] == "cancelled", answer.json()
    # cancel_grace_s is 600: only a unit that stopped by itself ends the job this soon.
    assert time.monotonic() - cancelled_at < 60
    assert ended["progress"]["step"] < 1024


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model": "no-such", "images": ["IMG"]}, 404, "model"),
        ({"model": "realesrgan-x4plus", "images": ["IMG"]}, 422, "model"),
        ({"images": ["IMG"]}, 422, "model"),
        ({"model": MODEL, "images": []}, 422, "images"),
        ({"model": MODEL}, 422, "images"),
        ({"model": MODEL, "images": ["IMG"], "max_tokens": 0}, 422, "max_tokens"),
        ({"model": MODEL, "images": ["IMG"], "max_tokens": 5000}, 422, "max_tokens"),
        ({"model": MODEL, "images": ["IMG"], "batch": 0}, 422, "batch"),
        ({"model": MODEL, "images": ["IMG"], "image": "IMG"}, 422, "image"),
        ({"model": MODEL, "image": "IMG", "tiles": {"overlap": 2000}}, 422, "tiles.overlap"),
        ({"model": MODEL, "image": "IMG", "tiles": {"tile": 32}}, 422, "tiles.tile"),
        ({"model": MODEL, "image": "IMG", "tiles": {"scale": 9}}, 422, "tiles.scale"),
        (
            {"model": MODEL, "image": "IMG", "tiles": {"tile": 256, "overlap": 256}},
            422,
            "tiles.overlap",
        ),
        ({"model": MODEL, "image": "IMG", "tiles": {"tile": 5000}}, 422, "tiles.tile"),
        (
            {"model": MODEL, "image": "IMG", "tiles": {"pre_upscale": "nope"}},
            404,
            "tiles.pre_upscale",
        ),
        (
            {"model": MODEL, "image": "IMG", "tiles": {"pre_upscale": MODEL}},
            422,
            "tiles.pre_upscale",
        ),
        ({"model": MODEL, "images": ["bm90IGFuIGltYWdl"]}, 415, "images.0"),
    ],
)
def test_bad_requests_name_the_field_and_queue_nothing(client, body, status, field) -> None:
    image = png(photo("coffee")[:160, :240])
    body = {
        key: (
            image
            if value == "IMG"
            else [image if v == "IMG" else v for v in value]
            if isinstance(value, list)
            else value
        )
        for key, value in body.items()
    }
    response = client.post("/v1/caption", json=body)
    assert response.status_code == status, response.json()
    assert response.json()["field"] == field, response.json()
    assert client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"width": 100, "height": 100, "tile": 256, "overlap": 256}, "overlap"),
        ({"width": 0, "height": 100}, "width"),
        ({"width": 100, "height": 100, "scale": 0.5}, "scale"),
        ({"width": 100_000, "height": 100_000, "scale": 8}, "scale"),
        ({"width": 2000, "height": 2000, "scale": 8, "tile": 64, "overlap": 0}, "tile"),
    ],
)
def test_a_plan_that_does_not_fit_is_refused(client, body, field) -> None:
    response = client.post("/v1/upscale/plan", json=body)
    assert response.status_code == 422, response.json()
    assert response.json()["field"] == field
