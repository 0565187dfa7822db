"""A small Python client for the assetbox HTTP API (httpx).

from assetbox.client import Client
with Client("http://127.0.0.1:7000", api_key="...") as api:
    job = api.upscale(Path("photo.png").read_bytes(), wait=300)
    Path("photo-x4.png").write_bytes(api.output(job["id"]))
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx


class ApiError(Exception):
    """An error answer from the service: `status`, `code`, `message`, `field`, `request_id`."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = body.get("error", "http_error")
        self.message = body.get("message", "")
        self.field = body.get("field")
        self.request_id = body.get("request_id")
        where = f" ({self.field})" if self.field else ""
        super().__init__(f"{status} {self.code}{where}: {self.message}")


class Client:
    """The API's routes as methods. Pass `http` to use your own httpx.Client (tests do)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:7000",
        *,
        api_key: str | None = None,
        timeout: float = 330,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._http.headers.update(headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"message": response.text}
            raise ApiError(response.status_code, body)
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._json(self._http.get("/health"))

    def submit(
        self,
        kind: str,
        image: bytes | str | None = None,
        *,
        wait: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Submit a job of `kind` (``POST /v1/<kind>``): `image` as bytes (sent as base64) or an
        http(s) URL, `fields` as the request's other fields. Returns the job."""
        payload = dict(fields)
        if image is not None:
            payload["image"] = image if isinstance(image, str) else base64.b64encode(image).decode()
        headers = {}
        if wait:
            headers["Prefer"] = f"wait={wait:g}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return self._json(self._http.post(f"/v1/{kind}", json=payload, headers=headers))

    def caption(self, images: list[bytes | str], **options: Any) -> dict[str, Any]:
        """Submit a caption job for whole images (bytes or http(s) URLs); `options`: model,
        system_prompt, prompt, max_tokens, batch, ... plus `wait` and `idempotency_key`. The
        captions are in the finished job's ``result``."""
        encoded = [i if isinstance(i, str) else base64.b64encode(i).decode() for i in images]
        return self.submit("caption", images=encoded, **options)

    def caption_tiles(
        self, image: bytes | str, tiles: dict[str, Any], **options: Any
    ) -> dict[str, Any]:
        """Submit a caption job for the tiles of `image`'s upscale plan (`tiles`: scale, tile,
        overlap, pre_upscale); one caption per tile id in the finished job's ``result``."""
        return self.submit("caption", image, tiles=tiles, **options)

    def upscale_plan(self, width: int, height: int, **grid: Any) -> dict[str, Any]:
        """The tile grid of an upscale of a `width` x `height` image (scale, tile, overlap):
        the output's size and each tile's id and box, without a job."""
        body = {"width": width, "height": height, **grid}
        return self._json(self._http.post("/v1/upscale/plan", json=body))

    def upscale(self, image: bytes | str, **options: Any) -> dict[str, Any]:
        """Submit an upscale; `options` are the request's fields (model, scale, tile, overlap,
        format, response_format, webhook_url, ...) plus `wait` and `idempotency_key`."""
        return self.submit("upscale", image, **options)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def jobs(self, **filters: Any) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/jobs", params=filters))["data"]

    def units(self, job_id: str) -> list[dict[str, Any]]:
        """The job's units in order (``index``, ``status``, ``attempts``, ``error``, and
        ``tiles`` for a tiled upscale or tile caption job); empty until the job is planned.
        Raises ApiError (404) for an unknown job."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}/units"))["data"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def output(self, job_id: str, index: int = 0) -> bytes:
        response = self._http.get(f"/v1/jobs/{job_id}/outputs/{index}")
        if response.status_code >= 400:
            self._json(response)
        return response.content

    def events(self, job_id: str, since: int = 0) -> Iterator[dict[str, Any]]:
        """The job's events (server-sent), until its terminal one."""
        with self._http.stream("GET", f"/v1/jobs/{job_id}/events", params={"since": since}) as r:
            if r.status_code >= 400:
                r.read()
                self._json(r)
            event: dict[str, Any] = {}
            for line in r.iter_lines():
                if line.startswith("id: "):
                    event["seq"] = int(line[4:])
                elif line.startswith("event: "):
                    event["type"] = line[7:]
                elif line.startswith("data: "):
                    event["data"] = json.loads(line[6:])
                elif not line and event:
                    yield event
                    event = {}

    def wait(self, job_id: str) -> dict[str, Any]:
        """Follow the job's events to the end; returns the finished job."""
        for _ in self.events(job_id):
            pass
        return self.job(job_id)

    def models(self, **filters: Any) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/models", params=filters))["data"]

    def delete_model(self, model_id: str) -> dict[str, Any]:
        """Delete a model from the store; its manifest. Raises ApiError (404: no such model)."""
        return self._json(self._http.delete(f"/v1/models/{model_id}"))
