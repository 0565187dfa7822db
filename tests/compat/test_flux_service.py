"""The FLUX.2-klein service's shape (compat/flux_service.py) with a tiny klein: the seed's own
example requests (sizes and steps made tiny), uploads PUT to a local receiver."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from assetbox import compat
from assetbox.compat import flux_service
from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")


def png(width: int, height: int, seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Bucket:
    """A loopback stand-in for presigned storage: GET serves `files`, PUT records the body."""

    def __init__(self, files: dict[str, bytes]) -> None:
        puts = self.puts = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.get(self.path)
                self.send_response(200 if data else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                puts[self.path] = (self.headers["Content-Type"], self.rfile.read(length))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def bucket() -> Iterator[Bucket]:
    bucket = Bucket({"/reference.png": png(64, 64, 1), "/photo.png": png(48, 40, 2)})
    yield bucket
    bucket.server.shutdown()


def service(data_dir: Path) -> FastAPI:
    # Worker threads in this process: no worker process to start for a tiny model.
    # realesr-animevideov3-x4: built in like the default x4plus, but a tenth of its work.
    settings = Settings(
        data_dir=data_dir,
        allow_private_urls=True,
        executor="thread",
        compat_flux_upscaler="realesr-animevideov3-x4",
    )
    app = create_app(settings)
    compat.mount(app, settings.model_copy(update={"compat": "flux"}))
    return app


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from assetbox.testing.tiny_models import write

    models = tmp_path_factory.mktemp("models")
    data_dir = tmp_path_factory.mktemp("data")
    write("flux2_klein", models)
    import_model(ModelStore(data_dir / "models"), models / "tiny-flux2_klein")
    with TestClient(service(data_dir)) as client:
        yield client


def size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_generate_puts_each_image_upscaled_with_seeds_counting_up(
    client: TestClient, bucket: Bucket
) -> None:
    # The seed's README example; 64 px and 2 steps instead of 1024x768 and 4.
    request = {
        "prompts": ["A knight enters a dark castle", "The knight discovers a treasure room"],
        "upload_urls": [
            f"{bucket.url}/scene1.png?X-Amz-Signature=abc",
            f"{bucket.url}/scene2.png",
        ],
        "images": [{"url": f"{bucket.url}/reference.png", "weight": 1.0}],
        "width": 64,
        "height": 64,
        "num_steps": 2,
        "seed": 42,
        "upscale": 2,
        "output_format": "png",
    }
    answer = client.post("/generate", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["timing_total_ms"] > 0
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1]
    assert [r["seed"] for r in results] == [42, 43]
    assert [r["output_url"] for r in results] == [
        f"{bucket.url}/scene1.png",
        f"{bucket.url}/scene2.png",
    ]
    for result in results:
        assert result["success"] is True
        assert (result["width"], result["height"]) == (128, 128)
        for timing in ("timing_inference_ms", "timing_upscale_ms", "timing_upload_ms"):
            assert isinstance(result[timing], int) and result[timing] >= 0, timing
    first = bucket.puts["/scene1.png?X-Amz-Signature=abc"]
    second = bucket.puts["/scene2.png"]
    for media_type, data in (first, second):
        assert media_type == "image/png" and size(data) == (128, 128)
    assert first[1] != second[1]  # two seeds, two images


def test_generate_without_upscale_puts_the_generated_image(
    client: TestClient, bucket: Bucket
) -> None:
    request = {
        "prompts": ["a lighthouse"],
        "upload_urls": [f"{bucket.url}/lighthouse.jpg"],
        "width": 80,
        "height": 64,
        "num_steps": 1,
        "seed": 7,
        "output_format": "jpeg",
    }
    (result,) = client.post("/generate", json=request).json()["results"]
    assert result["success"] is True and result["seed"] == 7
    assert (result["width"], result["height"], result["timing_upscale_ms"]) == (80, 64, None)
    media_type, data = bucket.puts["/lighthouse.jpg"]
    assert media_type == "image/jpeg" and size(data) == (80, 64)


def test_upscale_by_four_reports_both_sizes(client: TestClient, bucket: Bucket) -> None:
    request = {
        "image_url": f"{bucket.url}/photo.png",
        "upload_url": f"{bucket.url}/photo-4x.png?sig=1",
        "scale": 4,
        "output_format": "png",
    }
    body = client.post("/upscale", json=request).json()
    assert body["success"] is True, body
    assert (body["input_width"], body["input_height"]) == (48, 40)
    assert (body["output_width"], body["output_height"]) == (192, 160)
    assert body["scale"] == 4 and body["output_url"] == f"{bucket.url}/photo-4x.png"
    assert size(bucket.puts["/photo-4x.png?sig=1"][1]) == (192, 160)
    assert all(isinstance(body[f"timing_{t}_ms"], int) for t in ("upscale", "upload", "total"))


def test_health_answers_ours_and_the_seeds_fields(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and "queue_depth" in body  # ours
    assert body["flux_loaded"] is True and body["flux_model"] == "tiny-flux2_klein"
    assert {"gpu_available", "gpu_name", "gpu_memory_gb", "gpu_memory_used_gb"} <= body.keys()


@pytest.mark.parametrize(
    ("path", "request_body", "field"),
    [
        ("/generate", {"upload_urls": ["http://x/a.png"]}, "prompts"),
        ("/generate", {"prompts": ["a"], "upload_urls": ["http://x/a"], "upscale": 3}, "upscale"),
        ("/upscale", {"image_url": "http://x/a.png", "upload_url": "u", "scale": 8}, "scale"),
    ],
)
def test_invalid_bodies_get_fastapis_422_naming_the_field(
    client: TestClient, path: str, request_body: dict, field: str
) -> None:
    answer = client.post(path, json=request_body)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", field]


def test_refusals_name_the_seeds_field(client: TestClient) -> None:
    unequal = {"prompts": ["a", "b"], "upload_urls": ["http://x/a.png"]}
    answer = client.post("/generate", json=unequal)
    assert answer.status_code == 422 and "upload_urls" in answer.json()["detail"][0]["msg"]
    steps = {"prompts": ["a"], "upload_urls": ["http://127.0.0.1:9/a"], "num_steps": 0}
    answer = client.post("/generate", json=steps)
    assert answer.status_code == 422 and "`num_steps`" in answer.json()["detail"]
    answer = client.post("/upscale", json={"image_url": "not an image", "upload_url": "ftp://x"})
    assert answer.status_code == 422 and "`upload_url`" in answer.json()["detail"]
    no_image = {"image_url": "aGVsbG8=", "upload_url": "http://127.0.0.1:9/a.png"}
    answer = client.post("/upscale", json=no_image)
    assert answer.status_code == 415 and "`image_url`" in answer.json()["detail"]


def test_without_a_klein_checkpoint_generate_names_the_setting(tmp_path: Path) -> None:
    with TestClient(service(tmp_path / "data")) as client:
        answer = client.post("/generate", json={"prompts": ["a"], "upload_urls": ["http://x/a"]})
        assert answer.status_code == 503
        assert "ASSETBOX_COMPAT_FLUX_MODEL" in answer.json()["detail"]
        assert client.get("/health").json()["flux_loaded"] is False


def test_the_setting_leaves_the_shape_out(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    compat.mount(app, Settings(data_dir=tmp_path, compat=""))
    with TestClient(app) as client:
        assert client.post("/generate", json={}).status_code == 404
        assert "flux_loaded" not in client.get("/health").json()
    assert flux_service.router.routes  # the module itself is importable either way
