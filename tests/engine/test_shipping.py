"""Parcels (engine/shipping.py) without Ray: a stand-in object store that counts what is put."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from assetbox.engine import shipping
from assetbox.engine.blobs import put_blob
from assetbox.engine.shipping import NodeFiles, Shipper
from assetbox.models.store import ModelManifest, ModelStore


class FakeRay:
    """`put` hands out a reference; `get` resolves it and counts the bytes fetched."""

    def __init__(self) -> None:
        self.objects: dict[int, bytes] = {}
        self.fetched = 0
        self._lock = threading.Lock()

    def put(self, data: bytes) -> int:
        with self._lock:
            ref = len(self.objects)
            self.objects[ref] = bytes(data)
            return ref

    def get(self, ref: int) -> bytes:
        time.sleep(0.01)  # a transfer takes a while: concurrent fetches would overlap
        with self._lock:
            self.fetched += len(self.objects[ref])
        return self.objects[ref]


def add_model(store: ModelStore, model_id: str, weights: bytes, kind: str = "lora") -> None:
    with store.staging() as folder:
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "config").mkdir()
        (folder / "config" / "extra.json").write_text('{"a": 1}')
        manifest = ModelManifest(
            id=model_id,
            kind=kind,
            architecture="lora",
            source="test",
            sha256=hashlib.sha256(weights).hexdigest(),
            size=len(weights),
            added=datetime.now(UTC),
        )
        store.commit(folder, manifest)


@pytest.fixture
def head(tmp_path: Path) -> Path:
    data_dir = tmp_path / "head"
    store = ModelStore(data_dir / "models")
    add_model(store, "style-a", os.urandom(5000))
    add_model(store, "style-b", os.urandom(300))
    return data_dir


def test_a_parcel_holds_the_requests_images_and_models_each_put_once(
    head: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "CHUNK_BYTES", 1024)
    ray = FakeRay()
    image = put_blob(head, b"an image")
    shipper = Shipper(ray, head)
    request = {"image": image, "model": "style-a", "prompts": ["style-b is a word here"]}
    first = shipper.parcel(request, {"index": 0})
    second = shipper.parcel(request, {"index": 1})
    assert first == second  # the same references: nothing put twice for the job's next unit
    assert list(first.blobs) == [image.removeprefix("sha256:")]
    assert [m.id for m in first.models] == ["style-a"]  # "style-b is a word" names no model
    (model,) = first.models
    files = dict(model.files)
    assert set(files) == {"manifest.json", "model.safetensors", "config/extra.json"}
    assert len(files["model.safetensors"]) == 5  # 5000 bytes in chunks of 1024
    puts = len(ray.objects)
    shipper.parcel({"model": "style-b", "image": image}, {})
    assert len(ray.objects) == puts + 3  # style-b's three files; the image is not put again


def test_a_node_fetches_a_model_once_for_all_its_workers(head: Path, tmp_path: Path) -> None:
    ray = FakeRay()
    parcel = Shipper(ray, head).parcel({"model": "style-a"}, {})
    node = tmp_path / "node"
    workers = [NodeFiles(ray, node) for _ in range(4)]
    views: list[Path] = []
    threads = [threading.Thread(target=lambda w=w: views.append(w.unpack(parcel))) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(w.fetched for w in workers) == 1
    folder = head / "models" / "loras" / "style-a"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert ray.fetched == size  # its bytes crossed once
    assert len(set(views)) == 4  # each worker has a view of its own
    for view in views:
        store = ModelStore(view / "models")
        assert store.get("style-a", "lora").id == "style-a"
        got = (store.path("style-a", "lora") / "model.safetensors").read_bytes()
        assert got == (head / "models" / "loras" / "style-a" / "model.safetensors").read_bytes()


def test_a_model_imported_again_under_its_id_is_fetched_again(head: Path, tmp_path: Path) -> None:
    ray = FakeRay()
    worker = NodeFiles(ray, tmp_path / "node")
    view = worker.unpack(Shipper(ray, head).parcel({"model": "style-b"}, {}))
    before = (view / "models" / "loras" / "style-b" / "model.safetensors").read_bytes()
    store = ModelStore(head / "models")
    store.remove("style-b")
    add_model(store, "style-b", b"new weights")
    worker.unpack(Shipper(ray, head).parcel({"model": "style-b"}, {}))
    after = (view / "models" / "loras" / "style-b" / "model.safetensors").read_bytes()
    assert (before != after, after, worker.fetched) == (True, b"new weights", 2)


def test_a_shared_model_volume_with_the_same_weights_is_read_not_fetched(
    head: Path, tmp_path: Path
) -> None:
    import shutil

    shared = tmp_path / "shared-models"
    shutil.copytree(head / "models", shared)
    ModelStore(shared).remove("style-b")
    add_model(ModelStore(shared), "style-b", b"other weights than the head's")
    ray = FakeRay()
    worker = NodeFiles(ray, tmp_path / "node", shared)
    view = worker.unpack(Shipper(ray, head).parcel({"model": "style-a", "loras": ["style-b"]}, {}))
    assert (view / "models" / "loras" / "style-a").resolve() == shared / "loras" / "style-a"
    assert worker.fetched == 1  # style-b: the volume's differs from the head's, so it came
    assert (view / "models" / "loras" / "style-b" / "model.safetensors").read_bytes() == (
        head / "models" / "loras" / "style-b" / "model.safetensors"
    ).read_bytes()
