"""Job inputs stored once, by content: ``<data_dir>/blobs/<sha256>``."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from assetbox.atomic_files import write_atomically
from assetbox.errors import InvalidInput


def put_blob(data_dir: Path, data: bytes) -> str:
    """Store `data` (once per content); returns its reference ``sha256:<hex>``."""
    digest = hashlib.sha256(data).hexdigest()
    path = data_dir / "blobs" / digest
    if not path.is_file():
        write_atomically(path, data)
    else:
        os.utime(path)  # fresh again: `collect_blobs` leaves young blobs alone
    return f"sha256:{digest}"


def with_images(request: dict, images: dict[str, str]) -> dict:
    """`request` with each image value (a blob ref, or base64 for the API) at its field; a
    dotted field goes into that nested object (``controlnet.image``) or list (``images.2``).
    `request` itself is left as it was."""
    full = dict(request)
    for field, value in images.items():
        *parents, name = field.split(".")
        target: Any = full
        for parent in parents:
            key = int(parent) if isinstance(target, list) else parent
            child = target[key]
            target[key] = list(child) if isinstance(child, list) else dict(child)
            target = target[key]
        target[int(name) if isinstance(target, list) else name] = value
    return full


BLOB_REF = re.compile(r"sha256:([0-9a-f]{64})")


def collect_blobs(data_dir: Path, referenced: Iterable[str], *, older_than_s: float) -> int:
    """Delete blobs no job refers to and nobody stored for `older_than_s` seconds (inputs of
    refused submits); returns how many went. Young blobs may belong to a submit in progress."""
    keep = {match.group(1) for ref in referenced for match in BLOB_REF.finditer(ref)}
    folder = data_dir / "blobs"
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in folder.iterdir():
        try:
            if path.name not in keep and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process collected it
            continue
    return removed


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
