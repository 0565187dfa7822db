"""The toolbox's RunPod worker with a tiny SD 1.5 and a tiny captioner: every action through
`handler({...})` in this process, and through runpod's local API server (`python -m
assetbox.runpod --rp_serve_api`, POST /runsync) in another."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from assetbox.compat import runpod_worker
from assetbox.config import get_settings
from assetbox.engine.jobs import JobStatus
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore

pytestmark = pytest.mark.usefixtures("one_thread")
LORA = "sd15-upload"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from assetbox.testing.tiny_models import write, write_captioner

    out = tmp_path_factory.mktemp("runpod-models")
    write("sd15", out, loras=(LORA,))
    write_captioner("qwen2_5_vl", out / "tiny-qwen2_5_vl")
    return out


def data_dir_with(tiny: Path, data_dir: Path) -> Path:
    store = ModelStore(data_dir / "models")
    import_model(store, tiny / "tiny-sd15")
    import_model(store, tiny / "tiny-qwen2_5_vl")
    return data_dir


def tile_b64(seed: int, size: int = 64) -> str:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def exercise(run: Callable[[dict], dict], fail: Callable[[dict], str], tiny: Path) -> None:
    """Every action as the toolbox sends it; `run` gives an action's output, `fail` its error."""
    tiles = [tile_b64(1), tile_b64(2)]
    caption = {
        "action": "caption",
        "tiles": [
            {"tile_id": "0_0", "image_b64": tiles[0]},
            {"tile_id": "0_1", "image_b64": tiles[1]},
        ],
        "caption_params": {"system_prompt": "Describe the tile.", "max_tokens": 8},
    }
    captions = run(caption)["captions"]
    assert [c["tile_id"] for c in captions] == ["0_0", "0_1"]
    assert all(isinstance(c["caption"], str) and c["caption"].strip() for c in captions)

    upscale = {
        "action": "upscale",
        "model_config": {
            "base_model": "tiny-sd15",
            "model_type": "sd15",
            "loras": [],
            "controlnet": {"enabled": False, "model": None, "conditioning_scale": 1.0},
        },
        "generation_params": {
            "steps": 2,
            "cfg_scale": 5.0,
            "denoising_strength": 0.5,
            "sampler": "euler",
            "seed": 7,
        },
        "global_prompt": "a stone wall",
        "negative_prompt": "blurry",
        "tiles": [
            {"tile_id": "a", "image_b64": tiles[0], "prompt_override": None},
            {"tile_id": "b", "image_b64": tiles[1], "prompt_override": "moss"},
        ],
    }
    out = run(upscale)["tiles"]
    assert [(t["tile_id"], t["seed_used"]) for t in out] == [("a", 7), ("b", 7)]
    for tile, sent in zip(out, tiles, strict=True):
        image = Image.open(io.BytesIO(base64.b64decode(tile["image_b64"])))
        assert image.size == (64, 64)
        assert tile["image_b64"] != sent  # redrawn, not handed back
    drawn = run(upscale | {"generation_params": upscale["generation_params"] | {"seed": -1}})
    seeds = [t["seed_used"] for t in drawn["tiles"]]
    assert all(isinstance(s, int) and s >= 0 for s in seeds)

    # A LoRA in 3 chunks, sent out of order (chunks may land on different workers).
    data = (tiny / f"{LORA}.safetensors").read_bytes()
    size = len(data) // 3 + 1
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert len(chunks) == 3
    upload = {"action": "upload_model", "filename": f"{LORA}.safetensors", "model_type": "lora"}
    upload |= {"base_model": "sd15", "total_chunks": 3}
    answers = [
        run(upload | {"chunk_index": n, "file_b64": base64.b64encode(chunks[n]).decode()})
        for n in (2, 0, 1)
    ]
    assert [a["status"] for a in answers] == ["chunk_received", "chunk_received", "completed"]
    listed = run({"action": "list_models", "model_type": "lora", "base_model_filter": "sd15"})
    (entry,) = listed["models"]
    assert (entry["name"], entry["model_type"], entry["base_model"]) == (LORA, "lora", "sd15")
    assert entry == answers[-1]["model"]
    stored = ModelStore(Path(entry["path"]).parents[1]).path(LORA, "lora")
    assert sum(f.stat().st_size for f in stored.glob("*.safetensors")) == len(data)  # whole
    assert run({"action": "list_models", "base_model_filter": "sdxl"})["models"] == []
    assert {m["name"] for m in run({"action": "list_models"})["models"]} == {
        "tiny-sd15",
        "tiny-qwen2_5_vl",
        LORA,
    }
    # The LoRA it stored is one an upscale can use.
    with_lora = upscale["model_config"] | {"loras": [{"path": entry["path"], "weight": 1.0}]}
    styled = run(upscale | {"model_config": with_lora, "tiles": upscale["tiles"][:1]})
    assert styled["tiles"][0]["image_b64"] != out[0]["image_b64"]
    assert run({"action": "delete_model", "path": entry["path"]})["deleted"] == entry["path"]
    assert run({"action": "list_models", "model_type": "lora"})["models"] == []

    health = run({"action": "health"})
    assert set(health) == {
        "gpu",
        "vram_total_gb",
        "vram_used_gb",
        "loaded_model",
        "network_storage_available_gb",
    }
    assert health["network_storage_available_gb"] > 0
    assert "tiny-sd15" in health["loaded_model"] or "qwen" in health["loaded_model"]

    # Invalid input: the worker's error, naming the toolbox's field.
    assert "`action`" in fail({"action": "paint"})
    assert "`tiles`" in fail({"action": "caption"})
    assert "`tiles.1.image_b64`" in fail(
        caption | {"tiles": [caption["tiles"][0], {"tile_id": "x", "image_b64": "%%"}]}
    )
    too_strong = upscale["generation_params"] | {"denoising_strength": 3}
    assert "`generation_params.denoising_strength`" in fail(
        upscale | {"generation_params": too_strong}
    )
    odd = [*upscale["tiles"][:1], upscale["tiles"][1] | {"image_b64": tile_b64(3, size=60)}]
    assert "`tiles.1.image_b64`" in fail(upscale | {"tiles": odd})  # 60 px: not a multiple of 8
    assert "`model_config.base_model`" in fail(
        upscale | {"model_config": upscale["model_config"] | {"base_model": "nope"}}
    )
    assert "`chunk_index`" in fail(upload | {"chunk_index": 3, "file_b64": "AAAA"})
    assert "`path`" in fail({"action": "delete_model", "path": "/elsewhere/x"})


@pytest.fixture
def worker_env(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """The process-wide worker on a fresh data dir, as on RunPod (RUNPOD_ENDPOINT_ID set), with
    runpod's progress_update recorded."""
    import runpod

    data_dir = data_dir_with(tiny, tmp_path / "data")
    monkeypatch.setenv("ASSETBOX_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ASSETBOX_EXECUTOR", "thread")  # no worker process to start
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "test-endpoint")
    reports: list = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, p: reports.append(p))
    get_settings.cache_clear()
    yield reports
    runpod_worker.close_worker()
    get_settings.cache_clear()


def test_every_action_through_the_handler(worker_env: list, tiny: Path) -> None:
    def run(action: dict) -> dict:
        output = runpod_worker.handler({"id": "job-1", "input": action})
        assert "error" not in output, output
        return output

    def fail(action: dict) -> str:
        return runpod_worker.handler({"id": "job-2", "input": action})["error"]

    exercise(run, fail, tiny)
    # The upscale refused at its second tile (60 px) cancelled the first tile's job.
    statuses = [j.status for j in runpod_worker.get_worker().engine.list(kind="edit")]
    assert sum(s in (JobStatus.CANCELLED, JobStatus.CANCELLING) for s in statuses) == 1
    # On RunPod, the tiles done are reported through runpod's progress_update.
    assert {"done": 1, "total": 2} in worker_env
    assert {"done": 2, "total": 2} in worker_env


def test_on_runpod_the_data_dir_is_on_the_network_volume(monkeypatch) -> None:
    monkeypatch.delenv("ASSETBOX_DATA_DIR", raising=False)
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "test-endpoint")
    get_settings.cache_clear()
    try:
        assert runpod_worker.worker_settings().data_dir == Path("/runpod-volume/assetbox")
        monkeypatch.setenv("ASSETBOX_DATA_DIR", "/elsewhere")
        get_settings.cache_clear()
        assert runpod_worker.worker_settings().data_dir == Path("/elsewhere")
        monkeypatch.delenv("RUNPOD_ENDPOINT_ID")
        monkeypatch.delenv("ASSETBOX_DATA_DIR")
        get_settings.cache_clear()
        assert runpod_worker.worker_settings().data_dir == Path("data")
    finally:
        get_settings.cache_clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_action_through_runpods_local_api(tmp_path: Path, tiny: Path) -> None:
    data_dir = data_dir_with(tiny, tmp_path / "data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSETBOX_", "RUNPOD_"))}
    env |= {
        "ASSETBOX_DATA_DIR": str(data_dir),
        "ASSETBOX_EXECUTOR": "thread",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "assetbox.runpod", "--rp_serve_api"]
    command += ["--rp_api_port", str(port), "--rp_api_host", "127.0.0.1"]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                try:
                    client.get("/docs")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the local API did not start"
                    time.sleep(0.3)

            def runsync(action: dict) -> dict:
                response = client.post("/runsync", json={"input": action})
                assert response.status_code == 200, response.text
                return response.json()

            def run(action: dict) -> dict:
                answer = runsync(action)
                assert answer["status"] == "COMPLETED", answer
                return answer["output"]

            def fail(action: dict) -> str:
                answer = runsync(action)
                assert answer["status"] == "FAILED", answer
                return answer["error"]

            exercise(run, fail, tiny)
    finally:
        server.terminate()
        server.wait(timeout=30)
