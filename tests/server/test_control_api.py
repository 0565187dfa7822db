"""Watching and stopping jobs over HTTP: step events on SSE and WebSocket, cancel answers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from assetbox.config import Settings
from assetbox.models.importer import import_model
from assetbox.models.store import ModelStore
from assetbox.server import create_app


def test_an_8_step_generation_streams_every_step_on_sse_and_websocket(
    tiny_models: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    import_model(ModelStore(data_dir / "models"), tiny_models / "tiny-sd15")
    # Tiny models run a step in milliseconds; a real one takes long enough for the default
    # rate (a few events a second) to send each.
    settings = Settings(data_dir=data_dir, progress_events_per_s=1000, worker_threads=1)
    with TestClient(create_app(settings)) as client:
        body = {"model": "tiny-sd15", "prompts": ["a"], "width": 64, "height": 64, "steps": 8}
        job = client.post("/v1/generate", json=body).json()
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            lines = list(stream.iter_lines())
        events = []
        for kind, data in zip(lines[1::4], lines[2::4], strict=False):
            events.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
        sse_steps = [d["step"] for k, d in events if k == "progress" and d.get("steps") == 8]
        assert set(sse_steps) == set(range(1, 9)) and len(sse_steps) >= 8
        assert events[-1] == ("status", {"status": "succeeded"})

        with client.websocket_connect(f"/v1/jobs/{job['id']}/ws") as ws:
            messages = []
            while not messages or messages[-1]["data"].get("status") != "succeeded":
                messages.append(ws.receive_json())
        ws_steps = [
            m["data"]["step"]
            for m in messages
            if m["type"] == "progress" and m["data"].get("steps") == 8
        ]
        assert ws_steps == sse_steps  # the same events, replayed


def test_cancel_answers_cancelling_at_once_and_cancelled_when_asked_to_wait(
    builtin_data_dir: Path,
) -> None:
    from tests.utils.images import encode_pil, photo

    settings = Settings(data_dir=builtin_data_dir)
    png = encode_pil(photo("coffee")[:160, :200].copy())
    with TestClient(create_app(settings)) as client:
        files = {"image": ("in.png", png, "image/png")}
        fields = {"model": "realesr-animevideov3-x2", "tile": "16"}
        job = client.post("/v1/upscale", files=files, data=fields).json()
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        answer = client.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert answer["status"] in ("cancelling", "cancelled")  # never `running`
        ended = client.post(f"/v1/jobs/{job['id']}/cancel", headers={"Prefer": "wait=30"})
        assert ended.json()["status"] == "cancelled"
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_a_stuck_unit_is_cancelled_over_http_and_the_server_goes_on(
    builtin_data_dir: Path,
) -> None:
    from tests.utils.images import encode_pil, photo

    settings = Settings(data_dir=builtin_data_dir, cancel_grace_s=1)
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        # A unit that never reaches a step (as a forward pass that hangs); `simulate` has no
        # route of its own, so it goes in through the engine.
        stuck = engine.submit("simulate", {"units": 1, "stuck_units": [0]})
        deadline = time.monotonic() + 60
        while engine.store.units(stuck.id)[:1] == [] or engine.get(stuck.id).status != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.5)  # inside its unit by now
        asked = time.monotonic()
        answer = client.post(f"/v1/jobs/{stuck.id}/cancel").json()
        assert answer["status"] == "cancelling"
        ended = client.post(f"/v1/jobs/{stuck.id}/cancel", headers={"Prefer": "wait=15"}).json()
        assert ended["status"] == "cancelled" and time.monotonic() - asked < 15
        # The same server, no restart: the worker came back.
        png = encode_pil(photo("chelsea")[:40, :56].copy())
        files = {"image": ("in.png", png, "image/png")}
        done = client.post(
            "/v1/upscale",
            files=files,
            data={"model": "realesr-animevideov3-x2"},
            headers={"Prefer": "wait=120"},
        ).json()
        assert done["status"] == "succeeded"
