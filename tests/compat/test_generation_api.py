"""The generation API's shape with a tiny SD 1.5 and a LoRA: model load, the active LoRAs, the
WebSocket's progress and result, and the JSON log line of each generation."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from assetbox import compat
from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = "sd15-style"
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def sd15_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_models import write

    out = tmp_path_factory.mktemp("generation-api-models")
    write("sd15", out, loras=(LORA,))
    return out


@pytest.fixture
def client(sd15_models: Path, tmp_path: Path):
    store = ModelStore(tmp_path / "models")
    for entry in ("tiny-sd15", f"{LORA}.safetensors"):
        import_model(store, sd15_models / entry)
    # Results reused: a load must run all the same (its point is the worker's cache).
    settings = Settings(
        data_dir=tmp_path, executor="thread", compat="generation_api", reuse_results=True
    )
    app = create_app(settings)
    compat.mount(app, settings)
    with TestClient(app) as test_client:
        yield test_client


def generate(ws, request: dict) -> tuple[list[dict], dict]:
    """Send one request; the progress messages and the final one."""
    ws.send_json(request)
    progress = []
    while True:
        message = ws.receive_json()
        if message["type"] != "progress":
            return progress, message
        progress.append(message)


def test_model_load_and_the_active_loras(client: TestClient) -> None:
    loaded = client.post("/v1/models/load", json={"model_id": "tiny-sd15"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["success"] is True
    assert client.get(f"/v1/jobs/{loaded.json()['job_id']}").json()["kind"] == "load"
    keys = client.app.state.engine.executor.loaded_models()  # the worker's model cache
    assert any(key.startswith("checkpoint:tiny-sd15:") for key in keys), keys
    engine = client.app.state.engine
    for cached in list(keys):
        engine.executor.models.evict(cached)
    again = client.post("/v1/models/load", json={"model_id": "tiny-sd15"}).json()
    assert engine.get(again["job_id"]).reused_from is None
    assert engine.executor.loaded_models() == keys  # loaded again, not a reused result
    missing = client.post("/v1/models/load", json={"model_id": "nope"})
    assert missing.status_code == 404 and missing.json()["field"] == "model_id"

    assert client.get("/v1/loras/list").json() == {"loras": []}
    listed = client.post("/v1/loras/load", json={"name": LORA, "weight": 0.8}).json()
    assert listed == {"loras": [{"name": LORA, "weight": 0.8, "family": "sd15"}]}
    assert client.get("/v1/loras/list").json() == listed
    unknown = client.post("/v1/loras/load", json={"name": "nope"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "name"
    bad_weight = client.post("/v1/loras/load", json={"name": LORA, "weight": 9})
    assert bad_weight.status_code == 422 and bad_weight.json()["field"] == "weight"

    assert client.post("/v1/loras/unload", json={"name": LORA}).json() == {"loras": []}
    assert client.get("/v1/loras/list").json() == {"loras": []}
    again = client.post("/v1/loras/unload", json={"name": LORA})
    assert again.status_code == 404 and again.json()["field"] == "name"
    missing_name = client.post("/v1/loras/load", json={"weight": 1})
    assert missing_name.status_code == 422 and missing_name.json()["field"] == "name"
    paths = client.get("/openapi.json").json()["paths"]
    assert "requestBody" in paths["/v1/models/load"]["post"]
    assert {"/v1/loras/load", "/v1/loras/unload", "/v1/loras/list"} <= set(paths)
    # Our own model routes beside /v1/models/load still answer as before.
    assert [m["id"] for m in client.get("/v1/models?kind=checkpoint").json()["data"]] == [
        "tiny-sd15"
    ]


def test_websocket_progress_then_result_with_the_active_lora_and_a_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/v1/models/load", json={"model_id": "tiny-sd15"}).status_code == 200
    client.post("/v1/loras/load", json={"name": LORA, "weight": 1.5})
    engine = client.app.state.engine
    with caplog.at_level(logging.INFO, logger="assetbox.engine"):
        with client.websocket_connect("/v1/generate/ws") as ws:
            progress, result = generate(ws, {"prompt": "a red cat", **SMALL})
            assert result["type"] == "result", result
            assert progress and progress[0]["type"] == "progress"
            fractions = [p["progress"] for p in progress]
            assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1
            assert {p["step"] for p in progress} <= {0, 1, 2}
            (output,) = result["data"]["outputs"]
            assert output["seed"] == 3
            image = Image.open(io.BytesIO(base64.b64decode(output["b64"])))
            assert image.size == (64, 64)
            job = engine.get(result["data"]["id"])
            assert job.request["model"] == "tiny-sd15"
            assert job.request["loras"] == [{"name": LORA, "weight": 1.5}]

            # Naming `loras` (none) leaves the active set out: another image.
            _, plain = generate(ws, {"prompt": "a red cat", "loras": [], **SMALL})
            assert plain["type"] == "result", plain
            assert plain["data"]["outputs"][0]["b64"] != output["b64"]

            # Refusals come as error messages naming the field as sent; the socket stays open.
            _, refused = generate(ws, {"prompt": "a red cat", **SMALL, "steps": 0})
            assert refused["type"] == "error" and refused["message"].startswith("`steps`:")
            _, refused = generate(ws, {"prompt": "a cat", "model_id": "nope"})
            assert refused["type"] == "error" and refused["message"].startswith("`model_id`:")
            _, refused = generate(ws, {"prompt": "a cat", "references": []})
            assert refused == {
                "type": "error",
                "message": "`references`: `references` takes images: use POST /v1/generate",
            }
        deadline = time.monotonic() + 10  # the scheduler logs just after the job ends
        while len(_finished(caplog)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    record = next(r for r in _finished(caplog) if r.job_id == result["data"]["id"])
    assert record.prompt == "a red cat" and record.seed == 3 and record.model_id == "tiny-sd15"
    assert record.latency_ms > 0
    if torch.cuda.is_available():  # the tiny model runs there too
        assert record.vram_peak_mb > 0
    else:
        assert record.vram_peak_mb is None  # measured on CUDA only
    assert record.nsfw_detected is None  # the check is off


def _finished(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "job finished" and r.kind == "generate"]


def test_a_client_that_leaves_cancels_its_job(client: TestClient) -> None:
    """Over a real server (uvicorn): TestClient's socket never fails a send after close."""
    import asyncio
    import socket
    import threading

    import uvicorn
    from websockets.asyncio.client import connect

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(client.app, port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    engine = client.app.state.engine
    try:
        while not server.started:
            time.sleep(0.02)

        async def leave_after_first_progress() -> None:
            async with connect(f"ws://127.0.0.1:{port}/v1/generate/ws") as ws:
                request = {"prompt": "a cat", "model_id": "tiny-sd15", **SMALL, "steps": 200}
                await ws.send(json.dumps(request))
                while json.loads(await ws.recv())["type"] != "progress":
                    pass

        asyncio.run(leave_after_first_progress())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            (job,) = engine.list(kind="generate")
            if job.status.is_terminal():
                break
            time.sleep(0.05)
        assert job.status == "cancelled"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
