"""API keys: kept only as SHA-256 hashes, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from assetbox.config import Settings

OPEN_PATHS = {"/health"}


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
