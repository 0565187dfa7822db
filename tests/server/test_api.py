"""The HTTP API in process (FastAPI's TestClient) over a real engine and the built-in models."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from assetbox.config import Settings
from assetbox.server import create_app
from tests.utils.images import encode_pil, photo, png_bomb


@pytest.fixture
def settings(builtin_store, tmp_path: Path) -> Settings:
    data_dir = tmp_path / "data"
    shutil.copytree(builtin_store.root, data_dir / "models")
    return Settings(data_dir=data_dir, max_queued_jobs=50)


@pytest.fixture
def client(settings: Settings):
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def small_png() -> bytes:
    return encode_pil(np.ascontiguousarray(photo("chelsea")[:40, :56]))


def upscale_body(png: bytes, **fields) -> dict:
    return {"image": base64.b64encode(png).decode(), "model": "realesr-animevideov3-x2", **fields}


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["queue_depth"] == 0
    assert response.headers["X-Request-ID"]


def test_upscale_with_prefer_wait_returns_the_finished_job(
    client: TestClient, small_png: bytes
) -> None:
    response = client.post(
        "/v1/upscale", json=upscale_body(small_png), headers={"Prefer": "wait=60"}
    )
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["kind"] == "upscale"
    assert job["progress"]["done"] == job["progress"]["total"] > 0
    (output,) = job["outputs"]
    assert (output["width"], output["height"]) == (112, 80)
    image = client.get(output["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (112, 80)


def test_upscale_b64_response_and_multipart(client: TestClient, small_png: bytes) -> None:
    inline = client.post(
        "/v1/upscale",
        json=upscale_body(small_png, response_format="b64"),
        headers={"Prefer": "wait=60"},
    ).json()
    data = base64.b64decode(inline["outputs"][0]["b64"])
    assert Image.open(io.BytesIO(data)).size == (112, 80)
    form = client.post(
        "/v1/upscale",
        files={"image": ("cat.png", small_png, "image/png")},
        data={"model": "realesr-animevideov3-x2", "scale": "1"},
        headers={"Prefer": "wait=60"},
    )
    assert form.status_code == 200, form.text
    assert form.json()["outputs"][0]["width"] == 56  # scale 1: downsampled back


def test_without_wait_the_job_is_accepted_and_listed(client: TestClient, small_png: bytes) -> None:
    response = client.post("/v1/upscale", json=upscale_body(small_png))
    assert response.status_code == 202
    job_id = response.json()["id"]
    listed = client.get("/v1/jobs", params={"kind": "upscale"}).json()
    assert job_id in [j["id"] for j in listed["data"]]
    assert client.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
    assert client.get(f"/v1/jobs/{job_id}").json()["priority"] == "normal"
    high = client.post("/v1/upscale", json=upscale_body(small_png, priority="high")).json()
    assert high["priority"] == "high"  # a job says the priority it was submitted with
    assert client.get(f"/v1/jobs/{high['id']}").json()["priority"] == "high"


def test_events_stream_to_the_end_and_replay(client: TestClient, small_png: bytes) -> None:
    job_id = client.post("/v1/upscale", json=upscale_body(small_png)).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        text = "".join(stream.iter_text())
    events = [block for block in text.split("\n\n") if block.strip()]
    last = events[-1].splitlines()
    assert last[1] == "event: status" and json.loads(last[2][6:])["status"] == "succeeded"
    first_id = int(events[0].splitlines()[0][4:])
    replay = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(first_id)})
    assert replay.text.count("\n\n") == len(events) - 1


def test_idempotency_key_resubmit_and_conflict(client: TestClient, small_png: bytes) -> None:
    body = upscale_body(small_png)
    first = client.post("/v1/upscale", json=body, headers={"Idempotency-Key": "abc"})
    again = client.post("/v1/upscale", json=body, headers={"Idempotency-Key": "abc"})
    assert first.json()["id"] == again.json()["id"]
    other = client.post(
        "/v1/upscale", json=upscale_body(small_png, scale=1), headers={"Idempotency-Key": "abc"}
    )
    assert other.status_code == 409 and other.json()["error"] == "conflict"


def test_queue_full_is_429_with_retry_after(settings: Settings, small_png: bytes) -> None:
    from assetbox.engine.engine import Engine
    from assetbox.kinds import PLANNERS

    engine = Engine(
        planners=PLANNERS, settings=settings.model_copy(update={"max_queued_jobs": 1}), start=False
    )
    with TestClient(create_app(settings, engine=engine)) as client:
        assert client.post("/v1/upscale", json=upscale_body(small_png)).status_code == 202
        full = client.post("/v1/upscale", json=upscale_body(small_png, scale=1))
        assert full.status_code == 429
        assert int(full.headers["Retry-After"]) >= 1
        assert full.json()["error"] == "queue_full"
    engine.close()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"image": "iVBORw0KGgo"}, 422, "image"),  # bad base64 padding
        ({"image": base64.b64encode(b"hello").decode()}, 415, "image"),
        ({"image": base64.b64encode(png_bomb()).decode()}, 413, "image"),
        ({"image": "aGk=", "scale": 0}, 422, "scale"),
        ({"image": "aGk=", "tile": 8}, 422, "tile"),
        ({"image": "aGk=", "colour": "red"}, 422, "colour"),
        ({"image": "https://example.org/cat.png"}, 422, "image"),
    ],
)
def test_bad_requests_have_one_error_shape(
    client: TestClient, body: dict, status: int, field: str
) -> None:
    response = client.post("/v1/upscale", json=body, headers={"X-Request-ID": "req-1"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["request_id"] == "req-1"
    assert error["error"] and error["message"]
    assert response.headers["X-Request-ID"] == "req-1"


def test_unknown_job_and_output_are_404(client: TestClient) -> None:
    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get("/v1/jobs/nope/events").status_code == 404


def test_cancel_a_job(settings: Settings, small_png: bytes) -> None:
    from assetbox.engine.engine import Engine
    from assetbox.kinds import PLANNERS

    engine = Engine(
        planners=PLANNERS, settings=settings, start=False
    )  # nothing runs: the job stays queued
    with TestClient(create_app(settings, engine=engine)) as client:
        job_id = client.post("/v1/upscale", json=upscale_body(small_png)).json()["id"]
        cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["outputs"] == []
    engine.close()


def test_models_list_and_delete(client: TestClient) -> None:
    models = client.get("/v1/models", params={"architecture": "Compact"}).json()["data"]
    assert {m["id"] for m in models} == {
        "realesr-animevideov3-x2",
        "realesr-animevideov3-x3",
        "realesr-animevideov3-x4",
    }
    assert client.delete("/v1/models/realesr-animevideov3-x3").json()["id"] == (
        "realesr-animevideov3-x3"
    )
    assert client.delete("/v1/models/realesr-animevideov3-x3").status_code == 404
    assert client.delete("/v1/models/..%2Fetc").status_code in (404, 422)


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/upscale", "/v1/jobs", "/v1/jobs/{job_id}/events", "/v1/models", "/health"):
        assert path in paths


def test_websocket_events(client: TestClient, small_png: bytes) -> None:
    job_id = client.post("/v1/upscale", json=upscale_body(small_png)).json()["id"]
    messages = []
    with client.websocket_connect(f"/v1/jobs/{job_id}/ws") as ws:
        while not (messages and messages[-1]["data"].get("status") == "succeeded"):
            messages.append(ws.receive_json())
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    with client.websocket_connect(f"/v1/jobs/{job_id}/ws?since={messages[-2]['seq']}") as ws:
        assert ws.receive_json() == messages[-1]


def test_api_keys(settings: Settings, small_png: bytes, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\nfile-key\n")
    secured = settings.model_copy(update={"api_keys": "k1, k2", "api_keys_file": keys_file})
    with TestClient(create_app(secured)) as client:
        assert client.get("/health").status_code == 200  # always open
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic k1"}):
            denied = client.get("/v1/jobs", headers=headers)
            assert denied.status_code == 401
            assert denied.headers["WWW-Authenticate"].startswith("Bearer")
            assert denied.json()["error"] == "unauthorized"
        for key in ("k1", "k2", "file-key"):
            assert (
                client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code
                == 200
            )
        assert client.get("/metrics").status_code == 401
    with TestClient(create_app(secured.model_copy(update={"metrics_public": True}))) as client:
        assert client.get("/metrics").status_code == 200


def test_metrics_count_jobs(client: TestClient, small_png: bytes) -> None:
    client.post("/v1/upscale", json=upscale_body(small_png), headers={"Prefer": "wait=60"})
    text = client.get("/metrics").text
    assert 'assetbox_jobs{kind="upscale",status="succeeded"} 1.0' in text
    assert "assetbox_queue_depth 0.0" in text
    assert 'assetbox_unit_seconds_count{kind="upscale",outcome="ok"}' in text
    assert (
        'assetbox_http_request_seconds_count{method="POST",route="/v1/upscale",status="200"}'
        in text
    )


def test_metrics_count_model_loads_evictions_and_device_memory(settings: Settings) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    png = encode_pil(np.ascontiguousarray(photo("chelsea")[:24, :24]))
    # A budget that holds one model: switching models evicts the other one.
    tight = settings.model_copy(update={"model_cache_bytes": 2 * 2**20})
    with TestClient(create_app(tight)) as client:
        for model in ("realesr-animevideov3-x2", "realesr-animevideov3-x3", "realesrgan-x4plus"):
            job = client.post(
                "/v1/upscale",
                json={**upscale_body(png), "model": model},
                headers={"Prefer": "wait=60"},
            ).json()
            assert job["status"] == "succeeded", job
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
        }
    # On CPU the engine is ncnn: x2 and x3 hold 1.25 MB each, so x3 evicts x2; x4plus (33 MB)
    # does not fit even alone: it evicts x3 and stays as the only resident model.
    assert samples[("assetbox_model_loads_total", ())] == 3
    assert samples[("assetbox_model_evictions_total", ())] == 2
    assert samples[("assetbox_models_loaded", ())] == 1
    assert samples[("assetbox_model_cache_budget_bytes", ())] == 2 * 2**20
    assert samples[("assetbox_model_cache_bytes", ())] > 2 * 2**20
    used = {labels: v for (name, labels), v in samples.items() if "device_memory_used" in name}
    total = {labels: v for (name, labels), v in samples.items() if "device_memory_total" in name}
    assert used and used.keys() == total.keys()
    assert all(0 < used[d] <= total[d] for d in used)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/cat.png",
        "http://127.0.0.1:9/cat.png",
        "http://localhost/cat.png",
        "http://10.0.0.7/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cat.png",
    ],
)
def test_image_urls_that_could_reach_inside_are_refused(client: TestClient, url: str) -> None:
    response = client.post("/v1/upscale", json={"image": url})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "image"


def test_image_url_from_an_allowed_local_server(settings: Settings, small_png: bytes) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(small_png)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        allowed = settings.model_copy(update={"allow_private_urls": True})
        with TestClient(create_app(allowed)) as client:
            url = f"http://127.0.0.1:{server.server_address[1]}/moved"
            response = client.post(
                "/v1/upscale",
                json={"image": url, "model": "realesr-animevideov3-x2"},
                headers={"Prefer": "wait=60"},
            )
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["width"] == 112
    finally:
        server.shutdown()


def test_request_bodies_past_the_limit_are_413(settings: Settings) -> None:
    limited = settings.model_copy(update={"max_request_bytes": 1000})
    with TestClient(create_app(limited)) as client:
        response = client.post("/v1/upscale", json={"image": "A" * 2000})
        assert response.status_code == 413 and response.json()["error"] == "too_large"


class Receiver:
    """A loopback HTTP server that records webhooks and PUT uploads (PUTs to /fail get 500)."""

    def __init__(self) -> None:
        import http.server
        import threading

        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((self.command, self.path, dict(self.headers), body))
                self.send_response(500 if self.path == "/fail" else 200)
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_is_signed_and_uploads_report_per_output(
    settings: Settings, small_png: bytes
) -> None:
    import hashlib
    import hmac
    import time

    receiver = Receiver()
    allowed = settings.model_copy(update={"allow_private_urls": True, "webhook_secret": "s3cret"})
    try:
        with TestClient(create_app(allowed)) as client:
            body = upscale_body(
                small_png, webhook_url=f"{receiver.url}/hook", upload_urls=[f"{receiver.url}/up"]
            )
            job = client.post("/v1/upscale", json=body, headers={"Prefer": "wait=60"}).json()
            assert job["status"] == "succeeded"
            assert job["outputs"][0]["upload"] == {
                "url": f"{receiver.url}/up",
                "ok": True,
                "status": 200,
            }
            deadline = time.monotonic() + 30
            while not any(r[1] == "/hook" for r in receiver.received):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            _, _, headers, raw = next(r for r in receiver.received if r[1] == "/hook")
            expected = "sha256=" + hmac.new(b"s3cret", raw, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Assetbox-Signature"], expected)
            payload = json.loads(raw)
            assert payload["job_id"] == job["id"] and payload["status"] == "succeeded"
            put = next(r for r in receiver.received if r[0] == "PUT")
            assert put[2]["Content-Type"] == "image/png" and put[3][:4] == b"\x89PNG"
            while client.get(f"/v1/jobs/{job['id']}").json().get("webhook") is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert client.get(f"/v1/jobs/{job['id']}").json()["webhook"]["ok"] is True

            failing = upscale_body(small_png, scale=1, upload_urls=[f"{receiver.url}/fail"])
            job = client.post("/v1/upscale", json=failing, headers={"Prefer": "wait=60"}).json()
            assert job["status"] == "succeeded"  # a failed upload fails nothing else
            upload = job["outputs"][0]["upload"]
            assert upload["ok"] is False and upload["status"] == 500
            assert client.get(job["outputs"][0]["url"]).status_code == 200
    finally:
        receiver.close()


def test_webhook_with_all_events_posts_each_event_in_order_then_the_result(
    settings: Settings, small_png: bytes
) -> None:
    import hashlib
    import hmac
    import time

    receiver = Receiver()
    allowed = settings.model_copy(update={"allow_private_urls": True, "webhook_secret": "k"})
    try:
        with TestClient(create_app(allowed)) as client:
            body = upscale_body(
                small_png, tile=16, webhook_url=f"{receiver.url}/hook", webhook_events="all"
            )
            job = client.post("/v1/upscale", json=body, headers={"Prefer": "wait=60"}).json()
            assert job["status"] == "succeeded"
            deadline = time.monotonic() + 30
            while (client.get(f"/v1/jobs/{job['id']}").json().get("webhook") or {}).get(
                "status"
            ) is None or not any(b"outputs" in r[3] for r in receiver.received):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            outcome = client.get(f"/v1/jobs/{job['id']}").json()["webhook"]
            events = client.get(f"/v1/jobs/{job['id']}/events").text
    finally:
        receiver.close()
    for _, _, headers, raw in receiver.received:
        expected = "sha256=" + hmac.new(b"k", raw, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Assetbox-Signature"], expected)
    payloads = [json.loads(r[3]) for r in receiver.received]
    seqs = [p["event"]["seq"] for p in payloads]
    assert seqs == list(range(1, len(seqs) + 1))  # every event, once, in order
    assert seqs[-1] == events.count("\nid: ") + events.startswith("id: ")
    types = [p["event"]["type"] for p in payloads]
    assert "progress" in types and types[-1] == "status"
    assert payloads[-1]["status"] == "succeeded" and payloads[-1]["outputs"]
    assert outcome["ok"] is True and outcome["last_seq"] == seqs[-1]
    assert outcome["events_failed"] == 0


def test_webhook_to_a_private_address_is_refused(client: TestClient, small_png: bytes) -> None:
    body = upscale_body(small_png, webhook_url="http://10.1.2.3/hook")
    response = client.post("/v1/upscale", json=body)
    assert response.status_code == 422 and response.json()["field"] == "webhook_url"


def upload_in_chunks(
    client: TestClient, data: bytes, name: str, sha: str | None = None, *, announce: bool = True
) -> str:
    """Upload `data` in two chunks with a refused wrong offset between them; announce `sha`
    (default: the data's own) unless `announce` is False."""
    import hashlib

    body: dict = {"name": name, "size": len(data)}
    if announce:
        body["sha256"] = sha or hashlib.sha256(data).hexdigest()
    created = client.post("/v1/models/uploads", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["sha256"] == body.get("sha256")
    upload_id = created.json()["id"]
    half = len(data) // 2
    first = client.put(
        f"/v1/models/uploads/{upload_id}",
        content=data[:half],
        headers={"Content-Range": f"bytes 0-{half - 1}/{len(data)}"},
    )
    assert first.json()["next_offset"] == half
    # A broken connection: the client asks where to go on, and a wrong offset is refused.
    assert client.get(f"/v1/models/uploads/{upload_id}").json()["next_offset"] == half
    wrong = client.put(
        f"/v1/models/uploads/{upload_id}",
        content=data[half + 1 :],
        headers={"Content-Range": f"bytes {half + 1}-{len(data) - 1}/{len(data)}"},
    )
    assert wrong.status_code == 409 and f"send from {half}" in wrong.json()["message"]
    rest = client.put(
        f"/v1/models/uploads/{upload_id}",
        content=data[half:],
        headers={"Content-Range": f"bytes {half}-{len(data) - 1}/{len(data)}"},
    )
    assert rest.json()["next_offset"] == len(data)
    return upload_id


def test_chunked_model_upload_resumes_and_imports(client: TestClient, builtin_store) -> None:
    data = (builtin_store.path("realesr-animevideov3-x2") / "model.safetensors").read_bytes()
    upload_id = upload_in_chunks(client, data, "My Compact.safetensors")
    done = client.post(f"/v1/models/uploads/{upload_id}/complete")
    assert done.status_code == 201, done.text
    assert (done.json()["id"], done.json()["architecture"]) == ("my-compact", "Compact")
    assert done.json()["source"].startswith("upload of My Compact.safetensors (sha256 ")
    assert "my-compact" in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_upload_with_a_wrong_sha256_is_rejected_and_store_unchanged(
    client: TestClient, builtin_store
) -> None:
    data = (builtin_store.path("realesr-animevideov3-x2") / "model.safetensors").read_bytes()
    before = client.get("/v1/models").json()["data"]
    upload_id = upload_in_chunks(client, data, "evil.safetensors", sha="0" * 64)
    done = client.post(f"/v1/models/uploads/{upload_id}/complete")
    assert done.status_code == 422 and done.json()["field"] == "sha256"
    assert client.get("/v1/models").json()["data"] == before
    assert client.get(f"/v1/models/uploads/{upload_id}").status_code == 404  # discarded


def test_upload_without_a_sha256_is_hashed_by_the_server(client: TestClient, builtin_store) -> None:
    import hashlib

    data = (builtin_store.path("realesr-animevideov3-x2") / "model.safetensors").read_bytes()
    upload_id = upload_in_chunks(client, data, "Unhashed.safetensors", announce=False)
    done = client.post(f"/v1/models/uploads/{upload_id}/complete")
    assert done.status_code == 201, done.text
    manifest = done.json()
    # The hash of the bytes that arrived (the stored weights are re-saved, so their own
    # `sha256` is another one).
    assert manifest["source"] == (
        f"upload of Unhashed.safetensors (sha256 {hashlib.sha256(data).hexdigest()})"
    )
    assert (manifest["id"], manifest["architecture"]) == ("unhashed", "Compact")
    assert client.get(f"/v1/models/uploads/{upload_id}").status_code == 404  # finished


def test_an_incomplete_upload_without_a_sha256_is_refused(client: TestClient) -> None:
    created = client.post("/v1/models/uploads", json={"name": "part.safetensors", "size": 10})
    upload_id = created.json()["id"]
    client.put(
        f"/v1/models/uploads/{upload_id}",
        content=b"12345",
        headers={"Content-Range": "bytes 0-4/10"},
    )
    done = client.post(f"/v1/models/uploads/{upload_id}/complete")
    assert done.status_code == 422 and done.json()["field"] == "size"
    assert client.get(f"/v1/models/uploads/{upload_id}").json()["next_offset"] == 5


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("../../etc/passwd.safetensors", "name"),
        ("sub/dir.safetensors", "name"),
        ("model.onnx", "name"),
        ("model.pkl", "name"),
        ("..safetensors", "name"),
    ],
)
def test_upload_names_are_checked(client: TestClient, name: str, field: str) -> None:
    response = client.post(
        "/v1/models/uploads", json={"name": name, "size": 10, "sha256": "0" * 64}
    )
    assert response.status_code == 422 and response.json()["field"] == field


def test_health_reports_device_memory_and_loaded_models(
    client: TestClient, small_png: bytes
) -> None:
    client.post("/v1/upscale", json=upscale_body(small_png), headers={"Prefer": "wait=60"})
    health = client.get("/health").json()
    assert health["device"] in ("cpu",) or health["device"].startswith("cuda:")
    assert health["memory"]["process_rss_bytes"] > 0
    assert any("realesr-animevideov3-x2" in key for key in health["loaded_models"])
    assert health["free_disk_bytes"] > 0


def test_logs_are_json_lines_with_request_and_job_fields(
    client: TestClient, small_png: bytes
) -> None:
    import logging

    from assetbox.logs import LOGGER, configure_json_logs

    configure_json_logs()
    handler = next(h for h in logging.getLogger(LOGGER).handlers if getattr(h, "_assetbox_json", 0))
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        job = client.post(
            "/v1/upscale",
            json=upscale_body(small_png),
            headers={"Prefer": "wait=60", "X-Request-ID": "log-1"},
        ).json()
        # The scheduler thread logs the job just after the job's status turns final.
        import time

        deadline = time.monotonic() + 10
        while "job finished" not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        handler.setStream(old)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    request = next(r for r in records if r["message"] == "request")
    assert request["request_id"] == "log-1" and request["status"] == 200
    assert request["latency_ms"] > 0 and request["level"] == "INFO"
    done = next(r for r in records if r["message"] == "job finished")
    assert done["job_id"] == job["id"] and done["kind"] == "upscale"
    assert done["model"] == "realesr-animevideov3-x2" and done["peak_rss_mb"] > 0


def test_a_webhook_missed_in_a_crash_goes_out_at_the_next_start(tmp_path: Path) -> None:
    import time

    from assetbox.engine.engine import Engine
    from assetbox.engine.jobs import Delivery, JobStatus
    from assetbox.engine.store import JobStore
    from assetbox.kinds import PLANNERS

    receiver = Receiver()
    settings = Settings(data_dir=tmp_path / "data", allow_private_urls=True)
    try:
        # A job that finished, and then the process died before its webhook was sent.
        store = JobStore(settings.data_dir / "jobs.sqlite3")
        hook = Delivery(webhook_url=f"{receiver.url}/hook")
        job, _ = store.create_job("simulate", {"units": 1}, "h", None, hook)
        store.finish(job.id, JobStatus.SUCCEEDED)
        store.close()
        engine = Engine(planners=PLANNERS, settings=settings)
        try:
            deadline = time.monotonic() + 30
            while engine.get(job.id).webhook is None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert engine.get(job.id).webhook.ok
            assert engine.store.undelivered_webhooks() == []
        finally:
            engine.close()
        (post,) = [r for r in receiver.received if r[1] == "/hook"]
        assert json.loads(post[3])["job_id"] == job.id
    finally:
        receiver.close()
