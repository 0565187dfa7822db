from __future__ import annotations

from pathlib import Path

import pytest

from assetbox.errors import Conflict, InvalidInput, NotFound
from assetbox.models.store import ModelManifest, ModelStore, now, validate_model_id


def manifest(model_id: str) -> ModelManifest:
    return ModelManifest(
        id=model_id,
        kind="upscaler",
        architecture="Compact",
        scale=2,
        network_scale=2,
        context=8,
        engines=["torch"],
        source="test",
        sha256="0" * 64,
        size=1,
        added=now(),
    )


def add(store: ModelStore, model_id: str) -> ModelManifest:
    with store.staging() as staged:
        (staged / "model.safetensors").write_bytes(b"x")
        return store.commit(staged, manifest(model_id))


def test_add_list_get_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.list() == []
    add(store, "b-model")
    add(store, "a-model")
    assert [m.id for m in store.list()] == ["a-model", "b-model"]
    assert store.get("a-model").architecture == "Compact"
    store.remove("a-model")
    assert [m.id for m in store.list()] == ["b-model"]
    assert not store.path("a-model").exists()


def test_missing_models_are_not_found(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    add(store, "there")
    with pytest.raises(NotFound, match="available: there"):
        store.get("gone")
    with pytest.raises(NotFound):
        store.remove("gone")


def test_same_id_twice_is_a_conflict_and_leaves_the_first(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    first = add(store, "dup")
    with pytest.raises(Conflict):
        add(store, "dup")
    assert store.get("dup") == first
    assert not any((tmp_path / "models" / ".staging").iterdir())


@pytest.mark.parametrize("bad", ["../etc", "a/b", "UPPER", "", ".hidden", "x" * 65, "a..b"])
def test_ids_that_could_escape_the_store_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="`id` must be"):
        validate_model_id(bad)


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    with pytest.raises(RuntimeError), store.staging() as staged:
        (staged / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("conversion failed")
    assert store.list() == []
    assert not any((tmp_path / "models" / ".staging").iterdir())
