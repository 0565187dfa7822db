"""Who may call the API (``ASSETBOX_AUTH``): API keys, kept only as SHA-256 hashes and compared
in constant time (`keys`); Hugging Face tokens, checked with the Hub's whoami (`hf`); or anyone
(`none`). Each is a `Gate` the app's middleware asks before a request reaches a route."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket

from assetbox.config import Settings
from assetbox.errors import InvalidInput
from assetbox.logs import get_logger

log = get_logger("auth")

# The API's documentation needs no key: it shows what exists, not any data, and Swagger UI
# must load before its "Authorize" button can take a key.
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
DOCS_ASSETS = "/docs-assets"
OPEN_PATHS = {"/health", DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL, OPENAPI_URL}
# The web UI (mounted by `assetbox serve` when settings.ui is on): its page and Gradio's routes
# need no key; every call it makes to the API carries the key the user typed into the page.
UI_PATH = "/ui"
SCHEME = "APIKey"  # the name of the security scheme in the OpenAPI


def is_open(path: str) -> bool:
    """Whether `path` is answered without a key (health, the docs and their assets, the UI)."""
    # ".." never names an asset, and a path with it must not pass here and route elsewhere.
    if ".." in path:
        return path in OPEN_PATHS
    return (
        path in OPEN_PATHS
        or path.startswith(DOCS_ASSETS + "/")
        or path == UI_PATH
        or path.startswith(UI_PATH + "/")
    )


# The id of the key the current request carries (the app's middleware sets it): jobs record it
# for the fair share between keys and ASSETBOX_MAX_RUNNING_JOBS_PER_KEY.
CALLER: ContextVar[str | None] = ContextVar("assetbox_caller", default=None)


def key_id(authorization: str | None) -> str | None:
    """A Bearer token's id: 16 hex digits of its SHA-256, so the store never holds the key
    (None without one: such jobs share as one key)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return hashlib.sha256(token.strip().encode()).hexdigest()[:16]


def key_hashes(settings: Settings) -> list[bytes]:
    """Hashes of the configured keys (setting and keys file); empty means auth is off.

    Raises:
        OSError: the keys file cannot be read.
    """
    keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_keys_file is not None:
        lines = settings.api_keys_file.read_text().splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [hashlib.sha256(k.encode()).digest() for k in keys]


def is_allowed(hashes: list[bytes], authorization: str | None) -> bool:
    """Whether an `Authorization` header carries one of the keys (Bearer scheme)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    offered = hashlib.sha256(token.strip().encode()).digest()
    # Compare against every key, so the time taken does not tell which one nearly matched.
    matches = [hmac.compare_digest(offered, known) for known in hashes]
    return any(matches)


@dataclass(frozen=True)
class Refusal:
    """Why a request may not pass: its HTTP status, error code and message."""

    status: int
    code: str
    message: str


class Gate(Protocol):
    required: bool  # whether requests need a credential (the OpenAPI says so)
    blocking: bool  # whether `check` may wait on the network (run it off the event loop)

    def check(self, authorization: str | None) -> Refusal | None:
        """None when the `Authorization` header lets the request pass."""
        ...


class OpenGate:
    required = False
    blocking = False

    def check(self, authorization: str | None) -> Refusal | None:
        return None


class KeyGate:
    required = True
    blocking = False

    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes = hashes

    def check(self, authorization: str | None) -> Refusal | None:
        if is_allowed(self.hashes, authorization):
            return None
        return Refusal(401, "unauthorized", "a valid API key is required")


# Fine-grained tokens: the permission that reads model repositories (a classic token's `read`
# and `write` roles both include it).
HF_READ_PERMISSION = "repo.content.read"


def hf_read_access(whoami: dict[str, Any]) -> bool:
    """Whether the token whoami describes may read: a classic token's role `read` or `write`,
    or a fine-grained token with `repo.content.read`, globally or on any entity."""
    token = (whoami.get("auth") or {}).get("accessToken") or {}
    role = token.get("role")
    if role in ("read", "write"):
        return True
    if role != "fineGrained":
        return False
    grants = token.get("fineGrained") or {}
    permissions = list(grants.get("global") or [])
    for scope in grants.get("scoped") or []:
        permissions += scope.get("permissions") or []
    return HF_READ_PERMISSION in permissions


class HubTokenGate:
    """Bearer Hugging Face tokens, checked with `huggingface_hub.HfApi.whoami` against
    ``HF_ENDPOINT`` (huggingface_hub reads it). Each token's answer is kept `cache_s` seconds,
    a refusal a tenth of that, so the Hub (whose whoami is strictly rate-limited) is asked once
    per token in that time; the cache is keyed by the token's SHA-256, not the token. A Hub
    that cannot be reached answers 503, and that is not kept."""

    required = True
    blocking = True

    def __init__(self, cache_s: float) -> None:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise InvalidInput(
                "ASSETBOX_AUTH=hf checks tokens with the Hugging Face Hub, but HF_HUB_OFFLINE "
                "is set: unset it (or point HF_ENDPOINT at a reachable Hub)",
                field="ASSETBOX_AUTH",
            )
        self.cache_s = cache_s
        self._answers: dict[bytes, tuple[float, Refusal | None]] = {}
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> Refusal | None:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Refusal(401, "unauthorized", "a Hugging Face token is required (Bearer)")
        key = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        with self._lock:
            expires, answer = self._answers.get(key, (0.0, None))
            if expires > now:
                return answer
        answer, keep = self._ask(token)
        if keep:
            ttl = self.cache_s if answer is None else self.cache_s / 10
            with self._lock:
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
                self._answers[key] = (time.monotonic() + ttl, answer)
        return answer

    def _ask(self, token: str) -> tuple[Refusal | None, bool]:
        """The Hub's verdict on `token`, and whether to keep it."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            whoami = HfApi().whoami(token)
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 401:
                return Refusal(401, "unauthorized", "the Hugging Face token is not valid"), True
            log.warning("whoami failed", extra={"status": status, "error": str(exc)[:200]})
            return Refusal(503, "auth_unavailable", "cannot check the token with the Hub"), False
        except Exception as exc:  # the Hub unreachable (connection, timeout): ask again later
            log.warning("whoami failed", extra={"error": f"{type(exc).__name__}: {exc}"[:200]})
            return Refusal(503, "auth_unavailable", "cannot check the token with the Hub"), False
        if not hf_read_access(whoami):
            return Refusal(403, "forbidden", "the Hugging Face token has no read access"), True
        return None, True


def make_gate(settings: Settings) -> Gate:
    """The gate ``ASSETBOX_AUTH`` asks for (default: keys when any is configured, else none).

    Raises:
        InvalidInput: `keys` without any key configured; `hf` with the Hub set offline
            (naming ``ASSETBOX_AUTH``).
        OSError: the keys file cannot be read.
    """
    mode = settings.auth
    if mode == "hf":
        return HubTokenGate(settings.auth_cache_s)
    hashes = key_hashes(settings) if mode in ("keys", None) else []
    if mode == "keys" and not hashes:
        raise InvalidInput(
            "ASSETBOX_AUTH=keys but no key is configured (ASSETBOX_API_KEYS or "
            "ASSETBOX_API_KEYS_FILE)",
            field="ASSETBOX_AUTH",
        )
    return KeyGate(hashes) if hashes else OpenGate()


async def refuse_websocket(websocket: WebSocket) -> bool:
    """Ask the app's gate about a WebSocket's `Authorization` header (the HTTP middleware never
    sees WebSockets); when it refuses, close the socket before accepting it, with code 4000 +
    the HTTP status (4401, 4403, 4503) and the reason, and return True."""
    gate: Gate = websocket.app.state.auth_gate
    authorization = websocket.headers.get("authorization")
    refusal = (
        await run_in_threadpool(gate.check, authorization)
        if gate.blocking
        else gate.check(authorization)
    )
    if refusal is None:
        return False
    await websocket.close(code=4000 + refusal.status, reason=refusal.message)
    return True
