"""Files for Ray workers that share no disk with the head.

A unit reads its input images (``blobs/<sha256>``) and its models (``models/<kind>s/<id>/``)
from the data directory its `UnitTask` names. On a Ray cluster that directory is the head's, which
other machines cannot see, so the head packs what a unit reads into a `Parcel` of Ray object
references and the worker unpacks it on its own node:

- the head (`Shipper`) puts each input image into the object store once (not once per unit) and
  each model once, in chunks, so the head never holds a whole multi-GB model in memory;
- a worker node (`NodeFiles`) keeps what it fetched under its own ``ASSETBOX_WORKER_DIR``: images
  by sha256, models by kind, id and the manifest's sha256 (a model imported again under the same
  id is a new folder), so a node fetches a model once whatever its workers;
- each worker runs units in a view of a data directory of its own (symlinks into that cache, or
  into ``ASSETBOX_SHARED_MODELS_DIR`` where a shared model volume exists), so the kinds' code reads
  files as it does everywhere else and nothing on a worker touches the head's directory.

Which models a unit needs is read from its request: every string in it that names a model of the
store (``model``, ``loras[].id``, ``controlnet.model``, a pre-upscaler, a captioner ...). The kinds
name every model they load in the request (defaults are filled in at submit), so this needs no
hook per kind; a string that merely looks like an id ships a model the unit does not use, which
costs a copy, never a wrong result.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assetbox.atomic_files import write_atomically
from assetbox.engine.blobs import BLOB_REF
from assetbox.errors import InvalidInput
from assetbox.models.store import KINDS, ModelKind, ModelManifest, ModelStore, validate_model_id

CHUNK_BYTES = 64 << 20  # one object per 64 MiB of a model file
BLOB_CACHE_BYTES = 1 << 30  # input images the head keeps in the object store


@dataclass(frozen=True)
class ModelParcel:
    kind: ModelKind
    id: str
    sha256: str
    files: tuple[tuple[str, tuple[Any, ...]], ...]  # (path in the folder, its chunks' refs)

    @property
    def key(self) -> str:
        return f"{self.kind}s/{self.id}/{self.sha256}"


@dataclass(frozen=True)
class Parcel:
    """What one unit reads, as object references (resolved only where a node lacks them)."""

    blobs: dict[str, Any] = field(default_factory=dict)  # sha256 hex -> ref of the bytes
    models: tuple[ModelParcel, ...] = ()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


class Shipper:
    """The head's side: parcels for units, each file put into the object store once."""

    def __init__(self, ray: Any, data_dir: Path, *, blob_budget: int = BLOB_CACHE_BYTES) -> None:
        self._ray = ray
        self.data_dir = data_dir
        self.store = ModelStore(data_dir / "models")
        self._blob_budget = blob_budget
        self._blobs: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # least recent first
        self._models: dict[str, ModelParcel] = {}
        self._lock = threading.Lock()

    def parcel(self, request: dict[str, Any], payload: dict[str, Any]) -> Parcel:
        text = json.dumps([request, payload])
        digests = sorted({m.group(1) for m in BLOB_REF.finditer(text)})
        blobs = {d: ref for d in digests if (ref := self._blob(d)) is not None}
        models = tuple(self._model(m) for m in self.models_named(request))
        return Parcel(blobs=blobs, models=models)

    def models_named(self, request: dict[str, Any]) -> list[ModelManifest]:
        """The store's models whose ids appear in `request` (any kind with that id)."""
        found: dict[tuple[str, str], ModelManifest] = {}
        for text in _strings(request):
            try:
                validate_model_id(text)
            except InvalidInput:
                continue
            for kind in KINDS:
                if (kind, text) not in found and self.store.exists(text, kind):
                    found[(kind, text)] = self.store.get(text, kind)
        return list(found.values())

    def _blob(self, digest: str) -> Any | None:
        with self._lock:
            if digest in self._blobs:
                self._blobs.move_to_end(digest)
                return self._blobs[digest][0]
        path = self.data_dir / "blobs" / digest
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a unit that names a blob it does not read; it says so
            return None
        ref = self._ray.put(data)
        with self._lock:
            self._blobs[digest] = (ref, len(data))
            total = sum(size for _, size in self._blobs.values())
            while total > self._blob_budget and len(self._blobs) > 1:
                _, (_, size) = self._blobs.popitem(last=False)  # Ray frees it when unused
                total -= size
        return ref

    def _model(self, manifest: ModelManifest) -> ModelParcel:
        key = f"{manifest.kind}s/{manifest.id}/{manifest.sha256}"
        with self._lock:
            if key in self._models:
                return self._models[key]
        folder = self.store.path(manifest.id, manifest.kind)
        files = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            refs = []
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    refs.append(self._ray.put(chunk))
            files.append((path.relative_to(folder).as_posix(), tuple(refs)))
        parcel = ModelParcel(manifest.kind, manifest.id, manifest.sha256, tuple(files))
        with self._lock:
            self._models[key] = parcel
        return parcel

    def forget(self, model_id: str) -> None:
        """Drop a deleted model's chunks from the object store (once no unit holds them)."""
        with self._lock:
            for key in [k for k, p in self._models.items() if p.id == model_id]:
                del self._models[key]


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class NodeFiles:
    """A worker's side: the node's cache under `root` and this worker's view of a data dir."""

    def __init__(self, ray: Any, root: Path, shared_models: Path | None = None) -> None:
        self._ray = ray
        self.root = root
        self.shared_models = shared_models
        views = root / "views" / socket.gethostname()  # the pids below are this host's
        if views.is_dir():  # views of workers that are gone (a view is symlinks only)
            for old in views.iterdir():
                if not _alive(int(old.name.partition("-")[0] or 0)):
                    shutil.rmtree(old, ignore_errors=True)
        self.view = views / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        (self.view / "models").mkdir(parents=True)
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        os.symlink(root / "blobs", self.view / "blobs")
        self.fetched = 0  # models this worker fetched (not found on the node)

    def unpack(self, parcel: Parcel) -> Path:
        """The view, holding every file of `parcel` (fetched where the node lacks it)."""
        for digest, ref in parcel.blobs.items():
            path = self.root / "blobs" / digest
            if not path.is_file():
                write_atomically(path, self._ray.get(ref))
        for model in parcel.models:
            self._link(self.view / "models" / f"{model.kind}s" / model.id, self._folder(model))
        return self.view

    def _folder(self, model: ModelParcel) -> Path:
        if self.shared_models is not None:
            shared = ModelStore(self.shared_models).path(model.id, model.kind)
            manifest = shared / "manifest.json"
            if (
                manifest.is_file()
                and ModelManifest.model_validate_json(manifest.read_text()).sha256 == model.sha256
            ):
                return shared
        folder = self.root / "models" / model.key
        if (folder / "manifest.json").is_file():
            return folder
        # One fetch per node: the node's other workers wait for it rather than fetch it too.
        locks = self.root / "models" / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with (locks / f"{model.sha256}.lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not (folder / "manifest.json").is_file():
                self._fetch(model, folder)
        return folder

    def _fetch(self, model: ModelParcel, folder: Path) -> None:
        staging = self.root / "models" / ".staging" / uuid.uuid4().hex
        try:
            for name, refs in model.files:
                path = staging / name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as handle:
                    for ref in refs:
                        handle.write(self._ray.get(ref))
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, folder)
            self.fetched += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _link(link: Path, target: Path) -> None:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
        os.symlink(target, temporary)
        os.replace(temporary, link)  # atomic: the next unit sees the old or the new model
