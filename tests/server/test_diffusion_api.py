"""generate and edit through the HTTP API with tiny random SD 1.5, SDXL and Flux.1 models."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
WAIT = {"Prefer": "wait=120"}


def make_client(tiny_models: Path, data_dir: Path, entries: list[str], **settings):
    store = ModelStore(data_dir / "models")
    for entry in entries:
        import_model(store, tiny_models / entry)
    return TestClient(create_app(Settings(data_dir=data_dir, **settings)))


def png_of(client: TestClient, job: dict, index: int = 0) -> bytes:
    assert job["status"] == "succeeded", job
    response = client.get(job["outputs"][index]["url"])
    assert response.headers["content-type"] == "image/png"
    return response.content


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux1"])
def test_generate_and_edit_per_family(tiny_models: Path, tmp_path: Path, family: str) -> None:
    entries = [f"tiny-{family}", f"tiny-{family}-controlnet"]
    with make_client(tiny_models, tmp_path / "data", entries) as client:
        body = {
            "model": f"tiny-{family}",
            "prompts": ["a photo of a cat", "a red dog"],
            "num_images_per_prompt": 2,
            "width": 80,
            "height": 64,
            "steps": 2,
            "seed": 7,
        }
        first = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert [o["seed"] for o in first["outputs"]] == [7, 8, 9, 10]
        images = [png_of(client, first, n) for n in range(4)]
        for data in images:
            assert Image.open(io.BytesIO(data)).size == (80, 64)
        again = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert again["id"] != first["id"]
        assert png_of(client, again, 0) == images[0]  # same seed: the same bytes
        assert len(set(images)) == 4  # other seeds and prompts: other images
        other = client.post("/v1/generate", json={**body, "seed": 8}, headers=WAIT).json()
        assert png_of(client, other, 0) == images[1]  # seed 8 is seed 8, wherever it comes

        edit = {
            "model": f"tiny-{family}",
            "image": base64.b64encode(images[0]).decode(),
            "prompts": ["a blue cat"],
            "strength": 0.5,
            "width": 80,
            "height": 64,
            "steps": 4,
            "seed": 3,
        }
        edited = client.post("/v1/edit", json=edit, headers=WAIT).json()
        edited_png = png_of(client, edited)
        assert Image.open(io.BytesIO(edited_png)).size == (80, 64)
        assert png_of(client, client.post("/v1/edit", json=edit, headers=WAIT).json()) == (
            edited_png
        )
        reseeded = client.post("/v1/edit", json={**edit, "seed": 4}, headers=WAIT).json()
        assert png_of(client, reseeded) != edited_png
        controlled = client.post(
            "/v1/edit",
            json={
                **edit,
                "controlnet": {"model": f"tiny-{family}-controlnet", "conditioning_scale": 0.8},
            },
            headers=WAIT,
        ).json()
        controlled_png = png_of(client, controlled)
        assert Image.open(io.BytesIO(controlled_png)).size == (80, 64)
        assert controlled_png != edited_png


def test_loras_change_stack_and_leave_nothing_behind(tiny_models: Path, tmp_path: Path) -> None:
    entries = ["tiny-sdxl", "sdxl-a.safetensors", "sdxl-b.safetensors"]
    with make_client(tiny_models, tmp_path / "data", entries) as client:
        body = {"model": "tiny-sdxl", "prompts": ["a cat"], "width": 64, "height": 64}
        body |= {"steps": 2, "seed": 1}

        def run(loras: list[dict]) -> bytes:
            job = client.post("/v1/generate", json={**body, "loras": loras}, headers=WAIT)
            return png_of(client, job.json())

        before = run([])
        a = run([{"name": "sdxl-a", "weight": 1.0}])
        b = run([{"name": "sdxl-b", "weight": 1.0}])
        both = run([{"name": "sdxl-a", "weight": 0.7}, {"name": "sdxl-b", "weight": 0.4}])
        after = run([])
    assert a != before and b != before and a != b
    assert both not in (a, b, before)
    assert after == before  # no adapter leaks into the next request


def test_cache_evicts_the_least_recently_used_checkpoint(tiny_models: Path, tmp_path: Path) -> None:
    entries = ["tiny-sd15", "tiny-sd15-single.safetensors", "tiny-sdxl"]
    # Room for one tiny SD 1.5 (8.4 MB) beside nothing else.
    with make_client(
        tiny_models, tmp_path / "data", entries, model_cache_bytes=12 * 2**20
    ) as client:

        def generate(model: str) -> None:
            body = {"model": model, "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
            assert client.post("/v1/generate", json=body, headers=WAIT).json()["status"] == (
                "succeeded"
            )

        def stats() -> dict[str, float]:
            text = client.get("/metrics").text
            wanted = ("assetbox_model_loads_total", "assetbox_model_evictions_total")
            return {
                line.split()[0]: float(line.split()[1])
                for line in text.splitlines()
                if line.startswith(wanted)
            }

        generate("tiny-sd15")
        generate("tiny-sd15")  # resident: no second load
        assert stats() == {
            "assetbox_model_loads_total": 1.0,
            "assetbox_model_evictions_total": 0.0,
        }
        generate("tiny-sd15-single")  # does not fit beside it: the older one goes
        assert stats()["assetbox_model_evictions_total"] == 1.0
        loaded = client.get("/health").json()["loaded_models"]
        assert len(loaded) == 1 and "tiny-sd15-single" in loaded[0]
        generate("tiny-sd15")  # evicted before, so loaded again
        assert stats() == {
            "assetbox_model_loads_total": 3.0,
            "assetbox_model_evictions_total": 2.0,
        }


def test_cancel_a_50_step_generation_within_one_step(tiny_models: Path, tmp_path: Path) -> None:
    with make_client(tiny_models, tmp_path / "data", ["tiny-sd15"]) as client:
        body = {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64, "steps": 50}
        job = client.post("/v1/generate", json=body).json()
        deadline = time.monotonic() + 120
        while (client.get(f"/v1/jobs/{job['id']}").json()["progress"].get("step") or 0) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        seen = client.get(f"/v1/jobs/{job['id']}").json()["progress"]["step"]
        cancelled = client.post(
            f"/v1/jobs/{job['id']}/cancel", headers={"Prefer": "wait=30"}
        ).json()
        assert cancelled["status"] == "cancelled"
        # The step that was running when the cancel came finishes; no further one starts.
        assert cancelled["progress"]["step"] <= seen + 2 < 50
        assert cancelled["outputs"] == []


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"width": 60}, 422, "width"),
        ({"height": 1000}, 422, "height"),  # fine for SDXL, not a multiple of 16 for Flux
        ({"sampler": "heun_plus"}, 422, "sampler"),
        ({"loras": [{"name": "sd15-a"}]}, 422, "loras.0.name"),
        ({"loras": [{"name": "missing-lora"}]}, 404, "loras.0.name"),
        ({"model": "missing-model"}, 404, "model"),
        ({"prompts": []}, 422, "prompts"),
        ({"steps": 0}, 422, "steps"),
        ({"seed": 2**32 - 1, "num_images_per_prompt": 2}, 422, "seed"),
        ({"negative_prompt": "blurry"}, 422, "negative_prompt"),
    ],
)
def test_invalid_requests_name_the_field_and_queue_nothing(
    tiny_models: Path, tmp_path: Path, change: dict, status: int, field: str
) -> None:
    entries = ["tiny-flux1", "sd15-a.safetensors"]
    with make_client(tiny_models, tmp_path / "data", entries) as client:
        body = {"model": "tiny-flux1", "prompts": ["a"], "width": 64, "height": 64} | change
        response = client.post("/v1/generate", json=body)
        assert response.status_code == status, response.text
        assert response.json()["field"] == field
        assert client.get("/v1/jobs").json()["data"] == []


def test_a_seedless_request_draws_a_seed_once(tiny_models: Path, tmp_path: Path) -> None:
    with make_client(tiny_models, tmp_path / "data", ["tiny-sd15"]) as client:
        body = {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
        key = {"Idempotency-Key": "once", **WAIT}
        first = client.post("/v1/generate", json=body, headers=key).json()
        again = client.post("/v1/generate", json=body, headers=key).json()
        assert again["id"] == first["id"]  # the same job, though its seed was drawn
        other = client.post("/v1/generate", json=body, headers=WAIT).json()
        seeds = {first["outputs"][0]["seed"], other["outputs"][0]["seed"]}
        assert len(seeds) == 2 and all(isinstance(s, int) for s in seeds)


def test_uploads_and_listing_of_diffusion_models(tiny_models: Path, tmp_path: Path) -> None:
    import hashlib

    data = (tiny_models / "sdxl-a.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with make_client(tiny_models, tmp_path / "data", ["tiny-sdxl", "tiny-sd15"]) as client:
        for kind, status in (("upscaler", 422), ("lora", 201)):
            upload = client.post(
                "/v1/models/uploads",
                json={"name": "style.safetensors", "kind": kind, "size": len(data), "sha256": sha},
            ).json()
            client.put(f"/v1/models/uploads/{upload['id']}", content=data)
            done = client.post(f"/v1/models/uploads/{upload['id']}/complete")
            assert done.status_code == status, done.text
            if status == 422:
                assert done.json()["field"] == "kind"
        listed = client.get("/v1/models", params={"family": "sdxl"}).json()["data"]
        assert sorted((m["id"], m["kind"]) for m in listed) == [
            ("style", "lora"),
            ("tiny-sdxl", "checkpoint"),
        ]
        body = {"model": "tiny-sdxl", "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
        body["loras"] = [{"name": "style", "weight": 0.5}]
        assert client.post("/v1/generate", json=body, headers=WAIT).json()["status"] == (
            "succeeded"
        )


def test_edit_refuses_a_strength_that_leaves_no_step(tiny_models: Path, tmp_path: Path) -> None:
    from tests.utils.images import encode_pil, photo

    image = base64.b64encode(encode_pil(photo("chelsea")[:64, :64].copy())).decode()
    with make_client(tiny_models, tmp_path / "data", ["tiny-sd15"]) as client:
        body = {"model": "tiny-sd15", "image": image, "steps": 1, "strength": 0.5}
        response = client.post("/v1/edit", json=body)
        assert response.status_code == 422 and response.json()["field"] == "strength"
        assert client.get("/v1/jobs").json()["data"] == []


def test_upscale_then_edit_of_the_same_image_on_one_worker(
    tiny_models: Path, tmp_path: Path, builtin_store
) -> None:
    import shutil

    from tests.utils.images import encode_pil, photo

    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    png = base64.b64encode(encode_pil(photo("chelsea")[:64, :64].copy())).decode()
    with make_client(tiny_models, data_dir, ["tiny-sd15"]) as client:
        upscaled = client.post(
            "/v1/upscale", json={"image": png, "model": "realesr-animevideov3-x2"}, headers=WAIT
        ).json()
        assert upscaled["status"] == "succeeded"
        body = {"model": "tiny-sd15", "image": png, "steps": 2, "strength": 0.5}
        edited = client.post("/v1/edit", json=body | {"width": 64, "height": 64}, headers=WAIT)
        assert edited.json()["status"] == "succeeded", edited.json()
        again = client.post(
            "/v1/upscale",
            json={"image": png, "model": "realesr-animevideov3-x2", "scale": 1},
            headers=WAIT,
        ).json()
        assert again["status"] == "succeeded"


def test_reuse_never_hands_out_a_random_draw_twice(tiny_models: Path, tmp_path: Path) -> None:
    entries = ["tiny-sd15"]
    with make_client(tiny_models, tmp_path / "data", entries, reuse_results=True) as client:
        body = {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
        first = client.post("/v1/generate", json=body, headers=WAIT).json()
        second = client.post("/v1/generate", json=body, headers=WAIT).json()
        assert first["outputs"][0]["seed"] != second["outputs"][0]["seed"]
        seeded = body | {"seed": 5}
        one = client.post("/v1/generate", json=seeded, headers=WAIT).json()
        two = client.post("/v1/generate", json=seeded, headers=WAIT).json()
        assert two["outputs"][0]["url"] != one["outputs"][0]["url"]  # its own job
        assert png_of(client, two) == png_of(client, one)  # reused outputs, same bytes


def test_a_deleted_model_leaves_memory(tiny_models: Path, tmp_path: Path) -> None:
    with make_client(tiny_models, tmp_path / "data", ["tiny-sd15"]) as client:
        body = {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64, "steps": 1}
        assert client.post("/v1/generate", json=body, headers=WAIT).json()["status"] == (
            "succeeded"
        )
        assert client.get("/health").json()["loaded_models"]
        assert client.delete("/v1/models/tiny-sd15").status_code == 200
        assert client.get("/health").json()["loaded_models"] == []
        response = client.post("/v1/generate", json=body)
        assert response.status_code == 404 and response.json()["field"] == "model"
