"""API keys: kept only as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from assetbox.config import Settings

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
