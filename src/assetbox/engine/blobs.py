"""Job inputs stored once, by content: ``<data_dir>/blobs/<sha256>``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from assetbox.atomic_files import write_atomically
from assetbox.errors import InvalidInput


def put_blob(data_dir: Path, data: bytes) -> str:
    """Store `data` (once per content); returns its reference ``sha256:<hex>``."""
    digest = hashlib.sha256(data).hexdigest()
    path = data_dir / "blobs" / digest
    if not path.is_file():
        write_atomically(path, data)
    return f"sha256:{digest}"


def blob_path(data_dir: Path, ref: str, *, field: str = "image") -> Path:
    """The file of a ``sha256:<hex>`` reference.

    Raises:
        InvalidInput: a malformed reference, or a blob that is not stored.
    """
    prefix, _, digest = ref.partition(":")
    if prefix != "sha256" or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidInput(f"`{field}` must be a 'sha256:<hex>' blob reference", field=field)
    path = data_dir / "blobs" / digest
    if not path.is_file():
        raise InvalidInput(
            f"`{field}` refers to blob {digest[:12]}, which is not stored", field=field
        )
    return path
