"""Delivering results beyond the store: PUT outputs to upload URLs, POST signed webhooks.

Both only reach URLs that pass the same server-side request forgery check as image URLs. A failed
upload is recorded on its output and fails nothing else; a webhook is retried with backoff and its
outcome recorded on the job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

import httpx

from assetbox.config import Settings
from assetbox.engine.inputs import check_url
from assetbox.engine.jobs import Delivery, JobOutput, UploadOutcome, WebhookOutcome
from assetbox.errors import InvalidInput

SIGNATURE_HEADER = "X-Assetbox-Signature"
WEBHOOK_BACKOFF_S = (0.5, 1.0, 2.0)  # waits between the 4 attempts


def check_delivery(delivery: Delivery, settings: Settings) -> None:
    """Raises InvalidInput naming the first URL that may not be reached."""
    if delivery.webhook_url:
        check_url(delivery.webhook_url, settings, field="webhook_url")
    for n, url in enumerate(delivery.upload_urls):
        check_url(url, settings, field=f"upload_urls.{n}")


def webhook_secret(settings: Settings, data_dir: Path) -> bytes:
    """The signing key: the setting, or one generated once and kept in the data directory."""
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    path = data_dir / "webhook_secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC of the raw body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def upload_outputs(
    outputs: list[JobOutput], files: list[Path], urls: list[str], settings: Settings
) -> list[JobOutput]:
    """PUT each output to its URL; returns the outputs with each upload's outcome."""
    result = []
    with httpx.Client(timeout=settings.url_timeout_s, follow_redirects=False) as client:
        for output, path, url in zip(outputs, files, urls, strict=False):
            try:
                check_url(url, settings, field="upload_urls")
                response = client.put(
                    url, content=path.read_bytes(), headers={"Content-Type": output.media_type}
                )
                outcome = UploadOutcome(
                    url=url,
                    ok=response.is_success,
                    status=response.status_code,
                    error=None if response.is_success else response.text[:200],
                )
            except (httpx.HTTPError, InvalidInput, OSError) as exc:
                outcome = UploadOutcome(url=url, ok=False, error=str(exc)[:200])
            result.append(output.model_copy(update={"upload": outcome}))
    return result + outputs[len(result) :]


def send_webhook(
    url: str,
    payload: dict,
    secret: bytes,
    settings: Settings,
    *,
    retry: bool = True,
    sleep=time.sleep,
) -> WebhookOutcome:
    """POST `payload` as JSON, signed, until a 2xx answer or the attempts run out (one attempt
    without `retry`)."""
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body)}
    status, error = None, None
    attempts = 0
    waits = (*WEBHOOK_BACKOFF_S, None) if retry else (None,)
    with httpx.Client(timeout=settings.url_timeout_s, follow_redirects=False) as client:
        for attempts, wait in enumerate(waits, start=1):
            try:
                check_url(url, settings, field="webhook_url")
                response = client.post(url, content=body, headers=headers)
                status, error = response.status_code, None
                if response.is_success:
                    return WebhookOutcome(url=url, ok=True, attempts=attempts, status=status)
                error = f"answered {status}"
            except (httpx.HTTPError, InvalidInput) as exc:
                error = str(exc)[:200]
            if wait is not None:
                sleep(wait)
    return WebhookOutcome(url=url, ok=False, attempts=attempts, status=status, error=error)
