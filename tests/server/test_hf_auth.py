"""ASSETBOX_AUTH=hf: Bearer Hugging Face tokens checked with huggingface_hub's whoami against a
stand-in of the Hub's /api/whoami-v2 (a tiny HTTP server here; HF_ENDPOINT points at it)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from assetbox import compat
from assetbox.config import Settings
from assetbox.errors import InvalidInput
from assetbox.server import create_app


def _token(role: str, fine: dict | None = None) -> dict:
    token = {"displayName": role, "role": role}
    if fine is not None:
        token["fineGrained"] = fine
    return {"type": "user", "name": "alice", "auth": {"type": "access_token", "accessToken": token}}


# What the Hub's whoami-v2 answers for each token (the shapes of its classic and fine-grained
# tokens); any other token is refused with 401, as the Hub does.
WHOAMI = {
    "hf_read": _token("read"),
    "hf_fine_read": _token(
        "fineGrained",
        {
            "global": ["discussion.write"],
            "scoped": [
                {"entity": {"type": "user", "name": "alice"}, "permissions": ["repo.content.read"]}
            ],
        },
    ),
    "hf_write_only": _token(
        "fineGrained",
        {
            "global": ["discussion.write", "post.write"],
            "scoped": [
                {"entity": {"type": "user", "name": "alice"}, "permissions": ["repo.write"]}
            ],
        },
    ),
}


INVALID = {"error": "Invalid credentials in Authorization header"}


class StandIn(ThreadingHTTPServer):
    asked: Counter[str]


class WhoamiHandler(BaseHTTPRequestHandler):
    server: StandIn

    def do_GET(self) -> None:
        token = self.headers.get("authorization", "").removeprefix("Bearer ")
        if self.path != "/api/whoami-v2":  # huggingface_hub asks the Hub other things too
            status, body = 404, {"error": "not found"}
        else:
            self.server.asked[token] += 1
            status, body = (200, WHOAMI[token]) if token in WHOAMI else (401, INVALID)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """The stand-in Hub, with huggingface_hub pointed at it (HF_ENDPOINT is read when
    huggingface_hub is imported, so its constant is set too) and online."""
    from huggingface_hub import constants

    server = StandIn(("127.0.0.1", 0), WhoamiHandler)
    server.asked = Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield server
    server.shutdown()
    server.server_close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_hf_tokens_pass_by_read_access_and_the_hub_is_asked_once_per_token(
    hub: StandIn, tmp_path: Path
) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth="hf", executor="thread"))
    compat.mount(app, Settings(data_dir=tmp_path, compat="generation_api"))
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=bearer("hf_read")).status_code == 200
            assert client.get("/v1/jobs", headers=bearer("hf_fine_read")).status_code == 200
            bad = client.get("/v1/jobs", headers=bearer("hf_nope"))
            assert bad.status_code == 401, bad.text
            assert bad.json()["error"] == "unauthorized"
            assert bad.headers["www-authenticate"].startswith("Bearer")
            write_only = client.get("/v1/jobs", headers=bearer("hf_write_only"))
            assert write_only.status_code == 403, write_only.text
            assert "read access" in write_only.json()["message"]
        # Within the cache time each token was asked about once, refused ones too.
        assert hub.asked == {"hf_read": 1, "hf_fine_read": 1, "hf_nope": 1, "hf_write_only": 1}

        assert client.get("/v1/jobs").status_code == 401  # no token: the Hub is not asked
        assert client.get("/health").status_code == 200
        assert sum(hub.asked.values()) == 4

        # The generation API's WebSocket asks the same gate before it accepts.
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/v1/generate/ws", headers=bearer("hf_nope")),
        ):
            pass
        assert refused.value.code == 4401
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/v1/generate/ws", headers=bearer("hf_write_only")),
        ):
            pass
        assert refused.value.code == 4403
        with (  # and so does the job events' socket
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/v1/jobs/some-job/ws"),
        ):
            pass
        assert refused.value.code == 4401
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/v1/jobs/some-job/ws", headers=bearer("hf_read")),
        ):
            pass
        assert refused.value.code == 4404  # let in: there is no such job
        with client.websocket_connect("/v1/generate/ws", headers=bearer("hf_read")) as ws:
            ws.send_json({"prompt": "a cat"})  # accepted: the refusal is the request's own
            assert ws.receive_json() == {
                "type": "error",
                "message": "`model_id`: no model loaded: name one (`model_id`) or "
                "POST /v1/models/load first",
            }


def test_without_a_cache_time_the_hub_is_asked_each_time_and_a_lost_hub_is_503(
    hub: StandIn, tmp_path: Path
) -> None:
    app = create_app(Settings(data_dir=tmp_path, auth="hf", auth_cache_s=0, executor="thread"))
    with TestClient(app) as client:
        for _ in range(2):
            assert client.get("/v1/jobs", headers=bearer("hf_read")).status_code == 200
        assert hub.asked["hf_read"] == 2
        hub.shutdown()
        hub.server_close()
        lost = client.get("/v1/jobs", headers=bearer("hf_read"))
        assert lost.status_code == 503
        assert lost.json()["error"] == "auth_unavailable"


def test_auth_settings_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    with pytest.raises(InvalidInput, match="no key is configured") as keys:
        create_app(Settings(data_dir=tmp_path, auth="keys"))
    assert keys.value.field == "ASSETBOX_AUTH"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InvalidInput, match="HF_HUB_OFFLINE") as offline:
        create_app(Settings(data_dir=tmp_path, auth="hf"))
    assert offline.value.field == "ASSETBOX_AUTH"
    # `none` opens the API even with keys configured; the default follows the keys.
    with TestClient(
        create_app(Settings(data_dir=tmp_path, auth="none", api_keys="k", executor="thread"))
    ) as client:
        assert client.get("/v1/jobs").status_code == 200
    with TestClient(
        create_app(Settings(data_dir=tmp_path, api_keys="k", executor="thread"))
    ) as client:
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers=bearer("k")).status_code == 200
