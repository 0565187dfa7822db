"""Resumable chunked uploads of model files, finished by an import into the store.

An upload is announced with its name, size and (optionally) sha256, receives chunks at the offset
it has reached (so a broken connection resumes from `next_offset`), and is completed by checking
size and sha256 and importing the file (spandrel detection; `.pth` through the weights-only
unpickler). A refused completion leaves the store as it was.

The sha256 is optional because a browser cannot hash a multi-GB file without reading it twice
(WebCrypto has no incremental SHA-256). Without one the file is taken as received; either way the
server hashes it at completion and records that hash in the manifest's `source`. It hashes there
rather than chunk by chunk because completion reads the whole file anyway to check an announced
hash, and a hash state kept in memory would not survive a restart between two chunks of a resumed
upload.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from pydantic import BaseModel, Field

from assetbox.errors import Conflict, InvalidInput, NotFound
from assetbox.models.importer import import_model
from assetbox.models.store import (
    ModelKind,
    ModelManifest,
    ModelStore,
    sha256_file,
    validate_model_id,
)

UPLOAD_SUFFIXES = (".safetensors", ".pth")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,127}$")


class UploadCreate(BaseModel):
    name: str = Field(description="file name, e.g. 4x-UltraSharp.safetensors")
    kind: ModelKind = "upscaler"
    size: int = Field(gt=0, le=64 * 1024**3)
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="of the whole file, checked at completion; leave out to have the server "
        "hash it",
    )
    id: str | None = Field(default=None, description="store id; default: from the name")


class UploadState(BaseModel):
    id: str
    name: str
    kind: ModelKind
    size: int
    sha256: str | None = None
    model_id: str
    next_offset: int = 0


class Uploads:
    """Uploads in progress under ``<data_dir>/uploads``."""

    def __init__(self, root: Path, store: ModelStore) -> None:
        self.root = root
        self.store = store

    def create(self, request: UploadCreate) -> UploadState:
        """Raises InvalidInput for an unsafe name or format, Conflict for a taken model id."""
        name = request.name
        if not _NAME.match(name) or ".." in name or "/" in name or "\\" in name:
            raise InvalidInput(
                f"`name` must be a plain file name (letters, digits, '.', '_', '-', ' ') but is "
                f"{name!r}",
                field="name",
            )
        suffix = Path(name).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise InvalidInput(
                f"`name` must end in {' or '.join(UPLOAD_SUFFIXES)} but is {name!r}", field="name"
            )
        model_id = validate_model_id(
            request.id or Path(name).stem.lower().replace(" ", "-"), field="id"
        )
        if self.store.exists(model_id, request.kind):
            raise Conflict(f"a model with id {model_id!r} is already in the store")
        state = UploadState(
            id=uuid.uuid4().hex,
            name=name,
            kind=request.kind,
            size=request.size,
            sha256=request.sha256,
            model_id=model_id,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        self._part(state.id).touch()
        self._save(state)
        return state

    def get(self, upload_id: str) -> UploadState:
        """Raises NotFound."""
        path = self._state_path(upload_id)
        if not path.is_file():
            raise NotFound(f"no upload {upload_id!r}")
        return UploadState.model_validate_json(path.read_text())

    def write(self, upload_id: str, offset: int, data: bytes, total: int | None) -> UploadState:
        """Append a chunk that starts at the upload's current offset.

        Raises:
            NotFound: no such upload.
            Conflict: the chunk does not start at `next_offset` (the error says where to go on).
            InvalidInput: a total that differs from the announced size, or a chunk past it.
        """
        state = self.get(upload_id)
        if total is not None and total != state.size:
            raise InvalidInput(
                f"Content-Range total {total} differs from the announced size {state.size}",
                field="Content-Range",
            )
        if offset != state.next_offset:
            raise Conflict(
                f"the chunk starts at {offset} but the upload is at {state.next_offset}; "
                f"send from {state.next_offset}"
            )
        if offset + len(data) > state.size:
            raise InvalidInput(
                f"the chunk ends at {offset + len(data)}, past the size {state.size}",
                field="Content-Range",
            )
        with self._part(upload_id).open("r+b") as handle:
            handle.seek(offset)
            handle.write(data)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())
        state.next_offset = offset + len(data)
        self._save(state)
        return state

    def complete(self, upload_id: str) -> ModelManifest:
        """Check size and the announced sha256 (if any), import the file, forget the upload.

        Raises:
            InvalidInput: incomplete, or an announced sha256 that does not match (the upload is
                discarded).
            UnsupportedFormat, ModelError: the file is no known upscaler (store unchanged).
        """
        state = self.get(upload_id)
        part = self._part(upload_id)
        if state.next_offset != state.size:
            raise InvalidInput(
                f"the upload has {state.next_offset} of {state.size} bytes", field="size"
            )
        actual = sha256_file(part)
        if state.sha256 is not None and actual != state.sha256:
            self.discard(upload_id)
            raise InvalidInput(
                f"the uploaded bytes have sha256 {actual}, not the announced "
                f"{state.sha256}; the upload is discarded",
                field="sha256",
            )
        named = self.root / f"{upload_id}{Path(state.name).suffix.lower()}"
        os.replace(part, named)
        try:
            return import_model(
                self.store,
                named,
                model_id=state.model_id,
                # The uploaded file's hash, which for a converted `.pth` differs from the
                # manifest's `sha256` (of the stored weights).
                source=f"upload of {state.name} (sha256 {actual})",
                expected_kind=state.kind,
            )
        finally:
            named.unlink(missing_ok=True)
            self._state_path(upload_id).unlink(missing_ok=True)

    def discard(self, upload_id: str) -> None:
        self._part(upload_id).unlink(missing_ok=True)
        self._state_path(upload_id).unlink(missing_ok=True)

    def _part(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.part"

    def _state_path(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
            raise NotFound(f"no upload {upload_id!r}")
        return self.root / f"{upload_id}.json"

    def _save(self, state: UploadState) -> None:
        from assetbox.atomic_files import write_atomically

        write_atomically(self._state_path(state.id), state.model_dump_json().encode())
